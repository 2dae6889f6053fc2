"""Optional lossless compression of payload bytes (lz4 frames or zstd frames).

Quantized codes, varint indices and float vectors are dense already: lossless compression pays
off mostly where values repeat (constant buckets, zero runs, small integer codes). lz4 is the
cheap choice (GB/s both ways, modest ratios); zstd compresses better at a few times the CPU.
Both frames carry a content checksum, so corrupted bytes are caught, not decoded into garbage.

Decompression reads bytes from a peer and must not let it decide how much memory we use: a
few kilobytes can claim (or really expand to) gigabytes. ``decompress`` takes the largest
output the caller can accept and raises RemoteProtocolError before the output can exceed it:

- zstd: a frame that declares its content size (ours always do) is refused up front if the
  size exceeds ``max_size``, else decoded into exactly that many bytes; one that does not is
  decoded into a buffer of ``max_size`` bytes and refused if it does not fit. The decoder's
  window (its own working memory) is limited to max_size rounded up to a power of two (at
  least 1 KiB): a frame that asks for more is refused. Frames from ``compress`` always fit,
  since their window never exceeds their content.
- lz4: a frame that declares a content size above ``max_size`` is refused up front; the
  others are decoded in pieces of at most 256 KiB and refused as soon as the output passes
  ``max_size``. The declared block size (lz4's scratch buffers) may not exceed
  max(max_size, 64 KiB).

Trailing bytes after the frame, truncated frames and corrupt ones are all RemoteProtocolError.
"""

from __future__ import annotations

from typing import Literal

import lz4.frame
import numpy as np
import zstandard

from dlactor.wire.errors import RemoteProtocolError

__all__ = ["BytesLike", "Codec", "compress", "decompress"]

Codec = Literal["lz4", "zstd"]
BytesLike = bytes | bytearray | memoryview | np.ndarray

#: lz4's smallest block size; every frame may use blocks this large, whatever ``max_size``.
_LZ4_MIN_BLOCK = 64 * 1024
#: lz4 output is produced in pieces of at most this many bytes.
_LZ4_CHUNK = 256 * 1024
#: The range of window sizes a zstd decoder may be limited to (window logs 10..31).
_ZSTD_MIN_WINDOW, _ZSTD_MAX_WINDOW = 1 << 10, 1 << 31


def _bytes_view(data: BytesLike) -> memoryview:
    """``data``'s bytes as a flat memoryview, without copying contiguous data."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def compress(data: BytesLike, codec: Codec, level: int | None = None) -> bytes:
    """``data`` (bytes, or any contiguous buffer or array: its raw bytes) as one compressed
    frame with its content size and a content checksum. ``level`` None is the codec's default
    (lz4 0: fast; zstd 3); lz4 takes 0..16, zstd -7..22 (negative: faster)."""
    view = _bytes_view(data)
    if codec == "lz4":
        return lz4.frame.compress(
            view, compression_level=level or 0, content_checksum=True, store_size=True
        )
    if codec == "zstd":
        compressor = zstandard.ZstdCompressor(
            level=3 if level is None else level, write_checksum=True, write_content_size=True
        )
        return compressor.compress(view)
    raise ValueError(f"unknown codec {codec!r}")


def decompress(data: BytesLike, codec: Codec, max_size: int) -> bytes:
    """The bytes that ``compress`` compressed into ``data``, at most ``max_size`` of them.

    ``data`` comes from a peer: RemoteProtocolError if it is not exactly one valid frame of
    ``codec`` (corrupt, truncated, or followed by other bytes) or would decompress to more than
    ``max_size`` bytes, raised before allocating more than that (see the module docstring).
    ``codec`` and ``max_size`` are ours: ValueError if unknown or negative.
    """
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    view = _bytes_view(data)
    if codec == "lz4":
        return _lz4_decompress(view, max_size)
    if codec == "zstd":
        return _zstd_decompress(view, max_size)
    raise ValueError(f"unknown codec {codec!r}")


def _too_large(size: int, max_size: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"compressed payload expands to {size} bytes, more than {max_size}")


def _lz4_decompress(view: memoryview, max_size: int) -> bytes:
    try:
        info = lz4.frame.get_frame_info(view)
        if info["skippable"]:
            raise RemoteProtocolError("lz4 payload is a skippable frame")
        if info["content_size"] > max_size:  # 0 when the frame does not say
            raise _too_large(info["content_size"], max_size)
        if info["block_size"] > max(max_size, _LZ4_MIN_BLOCK):
            raise RemoteProtocolError(f"lz4 frame declares {info['block_size']}-byte blocks")
        # In pieces of at most _LZ4_CHUNK bytes (lz4 copies each piece once more into bytes),
        # reading the input through memoryview slices, never copies of it.
        context = lz4.frame.create_decompression_context()
        pieces: list[bytes] = []
        produced = consumed = 0
        while True:
            want = min(_LZ4_CHUNK, max_size - produced + 1)  # one byte past max_size: refuse
            piece, read, end = lz4.frame.decompress_chunk(context, view[consumed:], max_length=want)
            pieces.append(piece)
            produced += len(piece)
            consumed += read
            if produced > max_size:
                raise _too_large(produced, max_size)
            if end:
                break
            if len(piece) < want and consumed == len(view):
                raise RemoteProtocolError("lz4 payload is truncated")
            if not piece and not read:
                raise RemoteProtocolError("lz4 payload makes no progress")
    except RuntimeError as e:  # what lz4 raises for every malformed frame
        raise RemoteProtocolError(f"corrupt lz4 payload: {e}") from None
    if consumed != len(view):
        raise RemoteProtocolError(f"{len(view) - consumed} bytes after the lz4 frame")
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _zstd_decompress(view: memoryview, max_size: int) -> bytes:
    try:
        declared = zstandard.get_frame_parameters(view).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > max_size:
            raise _too_large(declared, max_size)
        window = min(max(max_size, _ZSTD_MIN_WINDOW), _ZSTD_MAX_WINDOW)
        decompressor = zstandard.ZstdDecompressor(max_window_size=window)
        if declared == 0:
            # ``decompress`` would return b"" from the header alone; decode to check the frame.
            stream = decompressor.decompressobj(write_size=1)
            out = stream.decompress(view)
            if out or not stream.eof or stream.unused_data:
                raise RemoteProtocolError("zstd frame declares no content but is not empty")
            return b""
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            # Decoded into a buffer of max_size bytes (1 for 0): failing to fit is an error.
            out = decompressor.decompress(
                view, max_output_size=max(max_size, 1), allow_extra_data=False
            )
            if len(out) > max_size:
                raise _too_large(len(out), max_size)
            return out
        return decompressor.decompress(view, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise RemoteProtocolError(f"corrupt or oversized zstd payload: {e}") from None
