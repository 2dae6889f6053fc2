"""Pack small unsigned codes (1 to 8 bits each) densely into bytes, and back.

Quantized sharing sends b-bit codes; one byte per code would waste 8 - b bits of every byte
on the wire. The packed form is the little-endian bit stream of the codes: bit ``j`` of code
``i`` is stream bit ``i * bits + j``, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``.
The last byte's unused high bits are zero, so every (codes, bits) has exactly one packed form.

Eight codes of b bits fill exactly b bytes, so both directions work on groups of eight: the
group's codes are or-ed (shifted) into one little-endian 64-bit word whose low b bytes are the
group's bytes. That is eight whole-array numpy operations, one per position in a group, and
no Python loop per element (1-2 ms per million codes each way).
Packing checks the caller's codes (ValueError: a bug on this side); unpacking checks bytes
that came from a peer (RemoteProtocolError).
"""

from __future__ import annotations

import numpy as np

from dlactor.wire.errors import RemoteProtocolError

__all__ = ["pack_bits", "packed_size", "unpack_bits"]

#: A group of 8 codes as one integer, whatever the machine's byte order.
_WORD = np.dtype("<u8")


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take packed: ceil(count * bits / 8)."""
    _check_bits(bits)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """The 1-D uint8 ``values`` (each < 2**bits) packed into exactly ceil(len * bits / 8) bytes.

    A new array; ``values`` is not modified. ValueError if ``bits`` is not in 1..8, or
    ``values`` is not a 1-D uint8 array of codes below 2**bits.
    """
    _check_bits(bits)
    if not isinstance(values, np.ndarray) or values.dtype != np.uint8 or values.ndim != 1:
        raise ValueError("values must be a 1-D uint8 numpy array")
    if bits == 8:
        return values.copy()
    if values.size and int(values.max()) >> bits:
        raise ValueError(f"a value is >= 2**{bits}: {int(values.max())}")
    count = values.size
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, np.uint8)
    padded[:count] = values
    columns = padded.reshape(groups, 8)
    words = columns[:, 0].astype(_WORD)
    for j in range(1, 8):  # the 8 positions in a group, each a whole-array operation
        words |= columns[:, j].astype(_WORD) << np.uint64(j * bits)
    group_bytes = words.view(np.uint8).reshape(groups, 8)[:, :bits]
    return group_bytes.reshape(-1)[: packed_size(count, bits)]  # reshape copied: not a view


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes of ``bits`` bits that ``pack_bits`` packed into ``packed``.

    ``packed`` comes from a peer: RemoteProtocolError unless it is a 1-D uint8 array of exactly
    ceil(count * bits / 8) bytes whose padding bits (past bit count * bits) are all zero.
    ``bits`` and ``count`` are ours: ValueError if they are out of range.
    """
    size = packed_size(count, bits)
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        raise RemoteProtocolError("packed codes must be a 1-D uint8 array")
    if packed.size != size:
        raise RemoteProtocolError(
            f"{count} codes of {bits} bits pack into {size} bytes, got {packed.size}"
        )
    if bits == 8:
        return packed.copy()
    used = (count * bits) % 8
    if used and int(packed[-1]) >> used:
        raise RemoteProtocolError("padding bits past the last packed code are not zero")
    groups = -(-count // 8)
    buffer = np.zeros((groups, 8), np.uint8)
    group_bytes = np.zeros(groups * bits, np.uint8)
    group_bytes[:size] = packed
    buffer[:, :bits] = group_bytes.reshape(groups, bits)
    words = buffer.view(_WORD).reshape(groups)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), np.uint8)
    for j in range(8):
        out[:, j] = (words >> np.uint64(j * bits)) & mask
    return out.reshape(-1)[:count]
