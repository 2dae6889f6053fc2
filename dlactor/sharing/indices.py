"""Compact encodings of a sparse index set: which coordinates a top-k or random-k payload holds.

Sending a set of ``count`` indices into a vector of ``n`` as int64 costs 8 bytes per index.
Two encodings do better, and ``encode_indices`` picks whichever is smaller (ties: bitmask):

- ``"bitmask"``: the length-``n`` membership mask, 8 positions per byte (``np.packbits``, bit
  order little). Always ceil(n / 8) bytes, whatever the count.
- ``"varint"``: the first index, then each gap to the next, as LEB128 varints (7 bits per
  byte, high bit set on all but a value's last byte). A gap below 128 takes 1 byte, below
  16384 2 bytes, below 2**21 3 bytes: about 1-3 bytes per index depending on the gaps. A
  uniform random set of density d has gaps averaging 1/d: at 10% density nearly every gap is
  below 128, so ~1 byte per index against n/8 = 1.25 bytes per index for the bitmask; at 1%
  density ~1.3 bytes per index against 12.5. The bitmask wins from about 12% density on.

Encoding and decoding are whole-array numpy operations, without a Python loop per index:
each value's byte count comes from comparing it with 2**7, 2**14, ...; the varint bytes are
laid out with ``np.repeat`` and shifts; decoding finds each value's last byte (high bit clear)
and adds its shifted 7-bit groups with ``np.add.reduceat``. Decoding checks everything a peer
could get wrong (RemoteProtocolError); encoding checks the caller's indices (ValueError).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dlactor.wire.errors import RemoteProtocolError

__all__ = [
    "BITMASK",
    "VARINT",
    "IndexKind",
    "decode_indices",
    "encode_indices",
    "encoded_index_size",
]

IndexKind = Literal["varint", "bitmask"]
VARINT: IndexKind = "varint"
BITMASK: IndexKind = "bitmask"

#: A value needs one more varint byte for each of these it reaches (int64 values: 1-9 bytes).
_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, 9)], dtype=np.int64)
#: The most bytes a varint of a value below 2**63 takes.
_MAX_VARINT = 9


def _check_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """``idx`` as int64 after checking it is a strictly increasing 1-D index set into [0, n)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(idx, np.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError("indices must be a 1-D integer numpy array")
    if idx.dtype == np.uint64 and idx.size and int(idx.max()) >= 1 << 63:
        raise ValueError("indices must be < 2**63")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError(f"indices must lie in [0, {n}), got {idx[0]}..{idx[-1]}")
    if idx.size > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError("indices must be strictly increasing")
    return idx


def _deltas(idx: np.ndarray) -> np.ndarray:
    """The first index, then the gaps: the values the varint encoding writes."""
    return np.diff(idx, prepend=np.int64(0))


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's LEB128 varint (values >= 0)."""
    return np.searchsorted(_THRESHOLDS, values, side="right") + 1


def _bitmask_size(n: int) -> int:
    return (n + 7) // 8


def encoded_index_size(idx: np.ndarray, n: int) -> int:
    """Bytes of ``encode_indices(idx, n)``'s data, computed without encoding (one pass)."""
    idx = _check_indices(idx, n)
    varint = int(_varint_lengths(_deltas(idx)).sum())
    return min(varint, _bitmask_size(n))


def encode_indices(idx: np.ndarray, n: int) -> tuple[IndexKind, np.ndarray]:
    """(kind, uint8 data) for the strictly increasing indices ``idx`` into [0, n): the varint
    encoding if it is strictly smaller than the bitmask, else the bitmask. Only the chosen
    encoding is built. ValueError if ``idx`` is not such an index set."""
    idx = _check_indices(idx, n)
    values = _deltas(idx)
    lengths = _varint_lengths(values)
    total = int(lengths.sum())
    if total >= _bitmask_size(n):
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        return BITMASK, np.packbits(mask, bitorder="little")
    if total == len(values):  # every value fits in one byte: the bytes are the values
        return VARINT, values.astype(np.uint8)
    ends = np.cumsum(lengths)
    owner = np.repeat(values, lengths)
    position = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    data = ((owner >> (7 * position)) & 0x7F).astype(np.uint8) | np.uint8(0x80)
    data[ends - 1] &= np.uint8(0x7F)
    return VARINT, data


def decode_indices(kind: str, data: np.ndarray, n: int, count: int) -> np.ndarray:
    """The int64 strictly increasing indices that ``encode_indices`` encoded as (kind, data).

    ``kind`` and ``data`` come from a peer; ``n`` and ``count`` are what this side expects
    (ValueError if negative). RemoteProtocolError for an unknown kind, data that is not 1-D
    uint8, a count other than ``count``, or an index outside [0, n); for a bitmask, a length
    other than ceil(n / 8) or bits set past position n; for varints, a truncated last varint,
    one longer than needed (more than 9 bytes, or a multi-byte one ending in a zero byte), or
    a gap of 0 (a repeated index).
    """
    if n < 0 or count < 0:
        raise ValueError(f"n and count must be >= 0, got n={n}, count={count}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise RemoteProtocolError("encoded indices must be a 1-D uint8 array")
    if kind == BITMASK:
        return _decode_bitmask(data, n, count)
    if kind == VARINT:
        return _decode_varint(data, n, count)
    raise RemoteProtocolError(f"unknown index encoding {kind!r}")


def _decode_bitmask(data: np.ndarray, n: int, count: int) -> np.ndarray:
    if data.size != _bitmask_size(n):
        raise RemoteProtocolError(
            f"a bitmask of {n} positions takes {_bitmask_size(n)} bytes, got {data.size}"
        )
    if n % 8 and int(data[-1]) >> (n % 8):
        raise RemoteProtocolError(f"bitmask has bits set past position {n}")
    idx = np.flatnonzero(np.unpackbits(data, count=n, bitorder="little")).astype(np.int64)
    if idx.size != count:
        raise RemoteProtocolError(f"bitmask holds {idx.size} indices, expected {count}")
    return idx


def _decode_varint(data: np.ndarray, n: int, count: int) -> np.ndarray:
    if count > n:  # no valid payload: count distinct indices cannot fit in [0, n)
        raise RemoteProtocolError(f"{count} distinct indices cannot lie in [0, {n})")
    if not count <= data.size <= _MAX_VARINT * count:
        raise RemoteProtocolError(f"{data.size} bytes cannot hold {count} varints")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if data[-1] & 0x80:
        raise RemoteProtocolError("the last varint is truncated")
    ends = np.flatnonzero(data < 0x80)  # each value's last byte
    if ends.size != count:
        raise RemoteProtocolError(f"varint data holds {ends.size} indices, expected {count}")
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends + 1 - starts
    if int(lengths.max()) > _MAX_VARINT:
        raise RemoteProtocolError(f"a varint is longer than {_MAX_VARINT} bytes")
    if bool(((lengths > 1) & (data[ends] == 0)).any()):
        raise RemoteProtocolError("a varint is longer than needed (its last byte is zero)")
    position = np.arange(data.size, dtype=np.int64) - np.repeat(starts, lengths)
    groups = (data & 0x7F).astype(np.int64) << (7 * position)  # at most 9 * 7 = 63 bits
    values = np.add.reduceat(groups, starts)
    if bool((values[1:] == 0).any()):
        raise RemoteProtocolError("indices repeat (a gap of 0)")
    if int(values.max()) >= n or _sum_reaches(values, n):
        raise RemoteProtocolError(f"an index is >= {n}")
    return np.cumsum(values)


def _sum_reaches(values: np.ndarray, n: int) -> bool:
    """Whether sum(values) >= n, exactly, for values in [0, n): the last index is that sum, and
    it must be checked before ``np.cumsum`` could wrap around int64."""
    if values.size * (n - 1) < 1 << 63:  # the sum cannot overflow: let numpy add
        return int(values.sum()) >= n
    high = int((values >> 32).sum())  # < 2**31 each: exact below 2**32 values
    low = int((values & 0xFFFFFFFF).sum(dtype=np.uint64))
    return (high << 32) + low >= n
