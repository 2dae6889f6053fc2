"""Payload compression: round trips, and a peer's bombs and corrupt frames refused cheaply."""

from __future__ import annotations

import tracemalloc

import lz4.frame
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.sharing.lossless_frames import Codec, compress, decompress
from dlactor.wire.errors import RemoteProtocolError

CODECS: list[Codec] = ["lz4", "zstd"]
MiB = 1 << 20


def _data(size: int, seed: int = 0) -> bytes:
    """Half random, half zeros: compressible, but not trivially."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size // 2, dtype=np.uint8).tobytes() + bytes(size - size // 2)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1000, 70_000, 300_000])
def test_round_trip_up_to_exactly_max_size(codec: Codec, size: int) -> None:
    data = _data(size, seed=size)
    packed = compress(data, codec)
    assert isinstance(packed, bytes)
    assert decompress(packed, codec, max_size=size) == data
    assert decompress(packed, codec, max_size=size + 100) == data
    if size:
        with pytest.raises(RemoteProtocolError, match="more than"):
            decompress(packed, codec, max_size=size - 1)


@pytest.mark.parametrize("codec", CODECS)
def test_compression_compresses(codec: Codec) -> None:
    data = bytes(100_000)
    assert len(compress(data, codec)) < 1000


@pytest.mark.parametrize(("codec", "levels"), [("lz4", [0, 3, 16]), ("zstd", [-5, 1, 19])])
def test_levels(codec: Codec, levels: list[int]) -> None:
    data = _data(50_000)
    for level in levels:
        assert decompress(compress(data, codec, level), codec, len(data)) == data


@pytest.mark.parametrize("codec", CODECS)
def test_arrays_and_memoryviews_compress_their_raw_bytes(codec: Codec) -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    raw = array.tobytes()
    for data in (array, array.T, array.data, memoryview(raw), bytearray(raw)):  # .data: 2-D "f"
        expected = np.ascontiguousarray(data).tobytes() if isinstance(data, np.ndarray) else raw
        out = decompress(compress(data, codec), codec, len(raw))
        assert out == expected
    packed = compress(raw, codec)
    assert decompress(np.frombuffer(packed, dtype=np.uint8), codec, len(raw)) == raw
    assert decompress(memoryview(packed), codec, len(raw)) == raw


def test_unknown_codec_and_negative_max_size_are_the_callers_bug() -> None:
    with pytest.raises(ValueError, match="codec"):
        compress(b"x", "gzip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="codec"):
        decompress(b"x", "gzip", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        decompress(compress(b"x", "lz4"), "lz4", -1)


# --- bombs --------------------------------------------------------------------------------------


def _lz4_without_size(data: bytes) -> bytes:
    return lz4.frame.compress(data, store_size=False, content_checksum=True)


def _zstd_without_size(data: bytes, window_log: int = 16) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=window_log, write_checksum=True
    )
    compressor = zstandard.ZstdCompressor(compression_params=params)
    stream = compressor.compressobj()
    return stream.compress(data) + stream.flush()


BOMBS = {
    "lz4": lambda data: compress(data, "lz4"),
    "lz4-unsized": _lz4_without_size,
    "zstd": lambda data: compress(data, "zstd"),
    "zstd-unsized": _zstd_without_size,
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_bomb_is_refused_without_allocating_its_output(kind: str) -> None:
    codec: Codec = "lz4" if kind.startswith("lz4") else "zstd"
    bomb = BOMBS[kind](bytes(64 * MiB))  # 64 MiB of zeros in a few hundred KiB at most
    assert len(bomb) < 300_000
    max_size = 4 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match=r"more than|full frame"):
            decompress(bomb, codec, max_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_size + MiB  # not 64 MiB, nor two buffers of max_size


@pytest.mark.parametrize("kind", list(BOMBS))
def test_frames_without_a_size_still_decode_within_max_size(kind: str) -> None:
    codec: Codec = "lz4" if kind.startswith("lz4") else "zstd"
    data = _data(200_000)
    frame = BOMBS[kind](data)
    assert decompress(frame, codec, MiB) == data
    with pytest.raises(RemoteProtocolError):
        decompress(frame, codec, len(data) - 1)


def test_a_zstd_header_claiming_a_huge_size_is_refused_before_decoding() -> None:
    frame = bytearray(compress(bytes(MiB), "zstd"))
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == MiB
    frame[5:9] = (0xFFFFFFFF).to_bytes(4, "little")  # the 4-byte content size: 4 GiB
    with pytest.raises(RemoteProtocolError, match="4294967295 bytes"):
        decompress(bytes(frame), "zstd", 2 * MiB)


def test_a_zstd_header_claiming_no_content_is_decoded_and_refused() -> None:
    # A frame whose header says 0 bytes would be answered b"" by zstandard from the header
    # alone; decompress decodes it and finds the content that is there.
    frame = bytearray(compress(b"abc" * 10, "zstd"))
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == 30
    frame[5] = 0  # the 1-byte content size
    with pytest.raises(RemoteProtocolError):
        decompress(bytes(frame), "zstd", 100)
    assert decompress(compress(b"", "zstd"), "zstd", 0) == b""


def test_a_zstd_window_larger_than_max_size_is_refused() -> None:
    frame = _zstd_without_size(b"hello", window_log=20)  # declares a 1 MiB window
    assert zstandard.get_frame_parameters(frame).window_size == MiB
    with pytest.raises(RemoteProtocolError, match="memory"):
        decompress(frame, "zstd", MiB // 2)
    assert decompress(frame, "zstd", MiB) == b"hello"


def test_lz4_blocks_larger_than_max_size_are_refused() -> None:
    data = _data(2 * MiB)  # large enough for lz4 to keep 4 MiB blocks
    frame = lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX4MB, store_size=False)
    assert lz4.frame.get_frame_info(frame)["block_size"] == 4 * MiB
    with pytest.raises(RemoteProtocolError, match="blocks"):
        decompress(frame, "lz4", 3 * MiB)
    assert decompress(frame, "lz4", 4 * MiB) == data


# --- corrupt frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_frames_are_refused(codec: Codec) -> None:
    data = _data(20_000)
    frame = compress(data, codec)
    cases = {
        "empty": b"",
        "garbage": b"not a compressed frame at all",
        "truncated": frame[:-1],
        "half": frame[: len(frame) // 2],
        "header only": frame[:8],
        "trailing byte": frame + b"\0",
        "two frames": frame + frame,
    }
    for position in (len(frame) // 3, len(frame) // 2, len(frame) - 2):
        flipped = bytearray(frame)
        flipped[position] ^= 0x10
        cases[f"flip at {position}"] = bytes(flipped)
    for name, bad in cases.items():
        with pytest.raises(RemoteProtocolError):
            decompress(bad, codec, MiB)
            pytest.fail(f"{name} was accepted")


@pytest.mark.parametrize("codec", CODECS)
def test_the_other_codecs_frames_are_refused(codec: Codec) -> None:
    other: Codec = "zstd" if codec == "lz4" else "lz4"
    with pytest.raises(RemoteProtocolError):
        decompress(compress(b"payload" * 10, other), codec, MiB)


@settings(max_examples=200, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
    cut=st.integers(0, 10_000),
    tail=st.binary(max_size=4),
)
def test_mangled_frames_decode_within_bounds_or_are_refused(
    codec: Codec, edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    frame = bytearray(compress(_data(3000), codec))
    for position, mask in edits:
        frame[position % len(frame)] ^= mask
    mangled = bytes(frame[: max(cut, len(frame) // 2)]) + tail
    try:
        out = decompress(mangled, codec, 4000)
    except RemoteProtocolError:
        return
    assert len(out) <= 4000
