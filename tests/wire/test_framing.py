"""FrameDecoder and frame_prefix: bytes in, frame bodies out."""

from __future__ import annotations

import array
import resource
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.messages import Challenge, Hello, Message, Proof
from dlactor.wire.codec import MAX_RUN_ID, NONCE_LEN, SIGNATURE_LEN, encode, encoded_size
from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError
from dlactor.wire.framing import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    HANDSHAKE_SCRATCH,
    PREFIX_LEN,
    FrameDecoder,
    frame_prefix,
)


def frame(body: bytes) -> bytes:
    return frame_prefix(len(body)) + body


def address(buf: bytearray | memoryview) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def drain(decoder: FrameDecoder) -> list[bytes]:
    bodies = []
    while (body := decoder.next_frame()) is not None:
        bodies.append(bytes(body))
    return bodies


def feed_in_chunks(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[bytes]:
    """Feed ``data`` in chunks of the given sizes (cycled), draining after every chunk."""
    bodies: list[bytes] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        decoder.receive_data(data[pos : pos + size])
        bodies += drain(decoder)
        pos, i = pos + size, i + 1
    return bodies


BODIES = [b"a", b"hello world", bytes(range(256)) * 3, b"\x00" * 70_000, b"z" * 12]
STREAM = b"".join(frame(body) for body in BODIES)


def test_frame_prefix_is_four_byte_big_endian_length() -> None:
    assert frame_prefix(1) == b"\x00\x00\x00\x01"
    assert frame_prefix(0x01020304) == b"\x01\x02\x03\x04"
    assert frame_prefix(2**32 - 1) == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("body_len", [0, -1, 2**32])
def test_frame_prefix_rejects_lengths_outside_u32_or_zero(body_len: int) -> None:
    with pytest.raises(LocalProtocolError):
        frame_prefix(body_len)


def test_default_max_frame_is_one_gibibyte() -> None:
    assert DEFAULT_MAX_FRAME == 1 << 30


def test_whole_stream_in_one_chunk_yields_every_body_in_order() -> None:
    decoder = FrameDecoder()

    decoder.receive_data(STREAM)

    assert drain(decoder) == BODIES


def test_frame_split_one_byte_at_a_time_decodes_identically() -> None:
    decoder = FrameDecoder(scratch_size=64)

    bodies = feed_in_chunks(decoder, STREAM, [1])

    assert bodies == BODIES


def test_prefix_split_across_receives_is_reassembled() -> None:
    decoder = FrameDecoder()
    data = frame(b"payload")

    decoder.receive_data(data[:2])
    assert decoder.next_frame() is None
    decoder.receive_data(data[2:3])
    assert decoder.next_frame() is None
    decoder.receive_data(data[3:])

    assert drain(decoder) == [b"payload"]


@pytest.mark.parametrize("scratch_size", [16, 64, 1 << 16])
def test_trailing_partial_frame_is_held_until_it_completes(scratch_size: int) -> None:
    decoder = FrameDecoder(scratch_size=scratch_size)
    last = frame(b"x" * 500)

    decoder.receive_data(frame(b"one") + frame(b"two") + last[:-1])
    assert drain(decoder) == [b"one", b"two"]
    assert decoder.next_frame() is None
    decoder.receive_data(last[-1:])

    assert drain(decoder) == [b"x" * 500]


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=10),
    scratch_size=st.sampled_from([16, 17, 40, 1 << 16]),
)
def test_random_chunk_splits_decode_identically(
    bodies: list[bytes], sizes: list[int], scratch_size: int
) -> None:
    decoder = FrameDecoder(scratch_size=scratch_size)
    data = b"".join(frame(body) for body in bodies)

    assert feed_in_chunks(decoder, data, sizes) == bodies
    assert decoder.bytes_received == len(data)


@pytest.mark.parametrize("scratch_size", [16, 64])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_frames_at_the_scratch_size_boundary_decode_one_byte_at_a_time(
    scratch_size: int, delta: int
) -> None:
    body = bytes(range(scratch_size - 4 + delta))
    decoder = FrameDecoder(scratch_size=scratch_size)

    bodies = feed_in_chunks(decoder, frame(body) * 3, [1])

    assert bodies == [body] * 3


def test_large_frame_is_received_straight_into_its_own_body() -> None:
    body_len = 8 << 20
    payload = np.random.default_rng(0).integers(0, 256, body_len, dtype=np.uint8).tobytes()
    data = frame(payload)
    decoder = FrameDecoder(scratch_size=1 << 16)
    decoder.receive_data(data[:100])
    assert decoder.next_frame() is None  # reads the length: the body is allocated

    view = decoder.get_buffer()
    assert len(view) == body_len - 96
    view[:] = data[100:]
    decoder.buffer_updated(len(view))
    body = decoder.next_frame()

    assert body is not None
    assert address(body) + 96 == address(view)
    assert body == payload


def test_receive_data_copies_the_rest_of_a_large_frame_into_its_body_in_one_step() -> None:
    decoder = FrameDecoder(scratch_size=1 << 16)
    data = frame(b"\x07" * (4 << 20)) + frame(b"next")

    decoder.receive_data(data)

    assert drain(decoder) == [b"\x07" * (4 << 20), b"next"]


def is_writable_bytes(body: object) -> bool:
    return (
        isinstance(body, memoryview)
        and not body.readonly
        and body.format == "B"
        and body.ndim == 1
        and body.c_contiguous
    )


def test_each_frame_is_a_fresh_writable_buffer_unaffected_by_later_receives() -> None:
    decoder = FrameDecoder(scratch_size=32)
    decoder.receive_data(frame(b"first"))
    first = decoder.next_frame()

    decoder.receive_data(frame(b"XXXXX") * 10)
    later = [decoder.next_frame() for _ in range(10)]

    assert is_writable_bytes(first)
    assert first == b"first"
    assert all(is_writable_bytes(body) and body == b"XXXXX" for body in later)
    assert len({address(body) for body in later}) == 10  # type: ignore[arg-type]


def test_a_large_frame_body_is_writable_and_shares_memory_with_nothing_else() -> None:
    decoder = FrameDecoder(scratch_size=1 << 16)
    decoder.receive_data(frame(b"\x01" * (1 << 20)) + frame(b"\x02" * (1 << 20)))
    first, second = decoder.next_frame(), decoder.next_frame()

    assert is_writable_bytes(first) and is_writable_bytes(second)
    assert first is not None and second is not None
    first[0] = 9
    assert bytes(first[:2]) == b"\x09\x01" and bytes(second[:1]) == b"\x02"


def test_a_large_frame_body_is_not_written_before_its_bytes_arrive() -> None:
    """Zero-filling a body the kernel is about to overwrite cost half a memcpy per frame
    (and faulted in every page up front): announcing a 64 MiB frame must touch almost none
    of its 16,384 pages."""
    decoder = FrameDecoder(scratch_size=1 << 16)
    decoder.receive_data(frame_prefix(64 << 20) + b"x" * 100)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    assert decoder.next_frame() is None  # reads the length: the body is allocated

    touched = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    assert touched < 1000, f"allocating the body touched {touched} pages"
    assert len(decoder.get_buffer()) == (64 << 20) - 100


def test_get_buffer_is_writable_and_never_empty_when_drained_between_receives() -> None:
    decoder = FrameDecoder(scratch_size=16)
    bodies: list[bytes] = []
    for chunk in [b"\x00\x00", b"\x00\x0c", b"abcdefgh", b"ijkl", b"\x00\x00\x00"]:
        buf = decoder.get_buffer()
        assert len(buf) >= 1
        assert not buf.readonly
        buf[: len(chunk)] = chunk
        decoder.buffer_updated(len(chunk))
        bodies += drain(decoder)
    assert bodies == [b"abcdefghijkl"]


def test_get_buffer_before_draining_a_full_scratch_is_a_local_protocol_error() -> None:
    decoder = FrameDecoder(scratch_size=16)
    buf = decoder.get_buffer()
    buf[:] = frame(b"x" * 12)
    decoder.buffer_updated(16)

    with pytest.raises(LocalProtocolError, match="drain"):
        decoder.get_buffer()
    assert drain(decoder) == [b"x" * 12]
    assert len(decoder.get_buffer()) == 16


def test_get_buffer_while_receive_data_bytes_are_queued_is_a_local_protocol_error() -> None:
    decoder = FrameDecoder(max_frame=16, scratch_size=16)
    decoder.receive_data(frame_prefix(100) + b"x" * 100)  # over the limit: left to next_frame

    with pytest.raises(LocalProtocolError, match="queued"):
        decoder.get_buffer()
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()


def test_receive_data_copies_a_large_frame_once_when_its_length_is_within_the_limit() -> None:
    data = bytearray(frame(b"\x07" * (8 << 20)) + frame(b"next"))
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 12 << 20  # the 8 MiB body, not a queued copy as well
    assert drain(decoder) == [b"\x07" * (8 << 20), b"next"]


def test_bytes_received_counts_prefixes_and_partial_frames() -> None:
    decoder = FrameDecoder()

    decoder.receive_data(frame(b"abc") + b"\x00\x00")

    assert decoder.bytes_received == 9


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_receive_data_accepts_bytes_like_input(kind: type) -> None:
    decoder = FrameDecoder()

    decoder.receive_data(kind(frame(b"abc")))

    assert drain(decoder) == [b"abc"]


def test_receive_data_accepts_a_memoryview_with_wider_items() -> None:
    decoder = FrameDecoder()
    words = array.array("I", [0, 0])
    data = frame(words.tobytes())

    decoder.receive_data(memoryview(array.array("B", data)).cast("I"))

    assert drain(decoder) == [words.tobytes()]


def test_zero_length_frame_is_a_remote_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x00")

    with pytest.raises(RemoteProtocolError, match="length 0"):
        decoder.next_frame()


def test_oversize_frame_is_refused_as_soon_as_its_prefix_is_pulled() -> None:
    decoder = FrameDecoder(max_frame=1000)
    decoder.receive_data(frame(b"y" * 1000))
    assert decoder.next_frame() == b"y" * 1000
    decoder.receive_data(frame_prefix(1001))

    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()


def test_decoder_is_dead_after_a_remote_protocol_error() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.receive_data(frame(b"ok") + frame_prefix(11))
    assert decoder.next_frame() == b"ok"
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()

    for call in [
        decoder.get_buffer,
        decoder.next_frame,
        lambda: decoder.buffer_updated(0),
        lambda: decoder.receive_data(frame(b"ok")),
    ]:
        with pytest.raises(RemoteProtocolError, match="failed earlier"):
            call()
    assert decoder.bytes_received == 10


def test_a_lowered_limit_refuses_a_huge_length_without_allocating_its_body() -> None:
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME)
    tracemalloc.start()
    try:
        buf = decoder.get_buffer()
        buf[:4] = frame_prefix(64 << 20)  # claims 64 MiB before any hello
        decoder.buffer_updated(4)
        with pytest.raises(RemoteProtocolError, match=f"exceeds the limit {HANDSHAKE_MAX_FRAME}"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


HELLO, BIG = b"h" * 100, b"B" * (HANDSHAKE_MAX_FRAME + 1)


@pytest.mark.parametrize("scratch_size", [64, 1 << 16])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_raising_the_limit_applies_to_a_frame_already_fed_but_not_pulled(
    scratch_size: int, kind: type
) -> None:
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME, scratch_size=scratch_size)
    decoder.receive_data(kind(frame(HELLO) + frame(BIG)))

    assert decoder.next_frame() == HELLO
    decoder.set_max_frame(DEFAULT_MAX_FRAME)

    assert decoder.next_frame() == BIG


def test_raising_the_limit_applies_to_a_frame_already_in_the_receive_buffer() -> None:
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME)
    data = frame(HELLO) + frame(BIG)
    buf = decoder.get_buffer()
    buf[: len(data)] = data
    decoder.buffer_updated(len(data))

    assert decoder.next_frame() == HELLO
    decoder.set_max_frame(DEFAULT_MAX_FRAME)

    assert decoder.next_frame() == BIG


def test_a_frame_over_the_handshake_limit_right_after_the_hello_is_refused_if_not_raised() -> None:
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME)
    decoder.receive_data(frame(b"h" * 100) + frame(b"B" * (HANDSHAKE_MAX_FRAME + 1)))
    assert decoder.next_frame() == b"h" * 100

    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()


LARGEST_HANDSHAKE = [  # the longest run id, the largest ids
    pytest.param(Hello("r" * MAX_RUN_ID, 2**64 - 1, 2**64 - 1, b"\xff" * NONCE_LEN), id="hello"),
    pytest.param(
        Hello("\U0010ffff" * MAX_RUN_ID, 2**64 - 1, 2**64 - 1, b"\xff" * NONCE_LEN),
        id="hello-non-ascii-run-id",
    ),
    pytest.param(
        Challenge(2**64 - 1, b"\xff" * NONCE_LEN, b"\xff" * SIGNATURE_LEN), id="challenge"
    ),
    pytest.param(Proof(b"\xff" * SIGNATURE_LEN), id="proof"),
]


@pytest.mark.parametrize("msg", LARGEST_HANDSHAKE)
def test_every_handshake_frame_fits_the_handshake_limit_and_scratch(msg: Message) -> None:
    """What a stranger may send: any hello, challenge or proof we could encode is accepted
    whole before the handshake is done."""
    size = encoded_size(encode(msg))
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME, scratch_size=HANDSHAKE_SCRATCH)
    if size - PREFIX_LEN > HANDSHAKE_MAX_FRAME:
        pytest.fail(f"a {type(msg).__name__} of {size} bytes is over the handshake limit")
    decoder.receive_data(b"".join(encode(msg)))
    assert decoder.next_frame() is not None


def test_grow_scratch_keeps_the_bytes_not_parsed_yet() -> None:
    decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME, scratch_size=HANDSHAKE_SCRATCH)
    data = frame(HELLO) + frame(b"p" * 60) + frame(b"x" * 3000)
    decoder.receive_data(data[: len(frame(HELLO)) + 30])  # the hello, half the proof
    assert decoder.next_frame() == HELLO
    decoder.grow_scratch(1 << 16)
    decoder.set_max_frame(DEFAULT_MAX_FRAME)

    decoder.receive_data(data[len(frame(HELLO)) + 30 :])

    assert drain(decoder) == [b"p" * 60, b"x" * 3000]
    assert decoder.buffered_bytes == 0


def test_grow_scratch_never_shrinks_and_waits_while_a_large_frame_is_received() -> None:
    decoder = FrameDecoder(scratch_size=64)
    decoder.grow_scratch(16)
    assert len(decoder.get_buffer()) == 64  # not shrunk
    big = frame(b"B" * 1000)
    decoder.receive_data(big[:100])  # a large frame: received in its own buffer
    assert decoder.next_frame() is None

    decoder.grow_scratch(1 << 16)  # later: the large frame is not in the scratch buffer
    decoder.receive_data(big[100:] + frame(b"after"))

    assert drain(decoder) == [b"B" * 1000, b"after"]


@pytest.mark.parametrize("max_frame", [0, 2**32])
def test_set_max_frame_rejects_unusable_limits(max_frame: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder().set_max_frame(max_frame)


def test_buffer_updated_beyond_the_offered_buffer_is_a_local_protocol_error() -> None:
    decoder = FrameDecoder(scratch_size=16)
    buf = decoder.get_buffer()

    with pytest.raises(LocalProtocolError):
        decoder.buffer_updated(len(buf) + 1)


def test_buffer_updated_without_a_new_get_buffer_is_a_local_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.get_buffer()
    decoder.buffer_updated(1)

    with pytest.raises(LocalProtocolError):
        decoder.buffer_updated(1)


@pytest.mark.parametrize("kwargs", [{"max_frame": 0}, {"max_frame": 2**32}, {"scratch_size": 15}])
def test_constructor_rejects_unusable_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(**kwargs)
