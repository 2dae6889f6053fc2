"""Whatever bytes a peer sends, the wire layer raises RemoteProtocolError or nothing."""

from __future__ import annotations

from typing import Any

import msgpack
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlactor.messages import (
    PROTOCOL_VERSION,
    Challenge,
    Done,
    Failed,
    Hello,
    Message,
    Overlay,
    Payload,
    Progress,
    Proof,
    Register,
    Share,
    Start,
    Stop,
)
from dlactor.wire.codec import ALIGN, DTYPES, KEY_LEN, NONCE_LEN, SIGNATURE_LEN, decode, encode
from dlactor.wire.errors import RemoteProtocolError
from dlactor.wire.framing import FrameDecoder

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_MESSAGES: list[Message] = [
    Hello(run_id="run", sender=3, target=1, nonce=bytes(range(NONCE_LEN))),
    Challenge(sender=1, nonce=b"\x07" * NONCE_LEN, signature=bytes(range(SIGNATURE_LEN))),
    Proof(signature=b"\xa5" * SIGNATURE_LEN),
    Register(sender=1, host="localhost", port=9000),
    Start(addresses={0: ("a", 1), 1: ("b", 2)}, t0=12.5),
    Start(addresses={0: ("a", 1), 1: ("b", 2)}, t0=12.5, keys={1: b"\x01" * KEY_LEN}),
    Progress(sender=1, round=4),
    Done(sender=0),
    Failed(sender=2, traceback="boom"),
    Stop(reason="ctrl-c"),
    Overlay(sender=2, round=7, op="shuffle", nodes=[1, 5, 9], values=[0, 3, 2]),
    Share(
        sender=4,
        round=9,
        payload=Payload(
            tensors={
                "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                "mask": torch.tensor([True, False]),
                "idx": torch.tensor([1, 5, 7], dtype=torch.int64),
                "none": torch.empty(0, dtype=torch.bfloat16),
                "s": torch.tensor(3, dtype=torch.int8),
            },
            meta={"n": 3, "names": ["a", "b"], "blob": b"\x01"},
        ),
    ),
]
VALID_BODIES = [b"".join(encode(msg))[4:] for msg in VALID_MESSAGES]


def decode_or_reject(body: bytearray) -> Message | None:
    """Decode; a RemoteProtocolError is an accepted outcome. Anything we accept we can send."""
    try:
        msg = decode(body)
    except RemoteProtocolError:
        return None
    encode(msg)
    return msg


def feed_and_decode(data: bytes, *, max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame, scratch_size=64)
    decoder.receive_data(data)
    try:
        while (body := decoder.next_frame()) is not None:
            decode_or_reject(body)
    except RemoteProtocolError:
        return


@FUZZ
@given(data=st.binary(max_size=2000), max_frame=st.sampled_from([1, 100, 1 << 20]))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes, max_frame: int) -> None:
    feed_and_decode(data, max_frame=max_frame)


@FUZZ
@given(body=st.binary(min_size=1, max_size=2000))
def test_arbitrary_bodies_decode_or_raise_remote_protocol_error(body: bytes) -> None:
    decode_or_reject(bytearray(body))


def mutated(body: bytes, data: st.DataObject) -> bytes:
    """One of: flip bytes, truncate, extend, overwrite a range."""
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
    if how == "truncate":
        return body[: data.draw(st.integers(0, len(body) - 1))]
    if how == "extend":
        return body + data.draw(st.binary(min_size=1, max_size=64))
    out = bytearray(body)
    if how == "flip":
        for index in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=4)):
            out[index] ^= data.draw(st.integers(1, 255))
        return bytes(out)
    start = data.draw(st.integers(0, len(body) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=16))
    out[start : start + len(patch)] = patch
    return bytes(out)


@FUZZ
@given(body=st.sampled_from(VALID_BODIES), data=st.data())
def test_mutated_valid_bodies_raise_only_remote_protocol_error(
    body: bytes, data: st.DataObject
) -> None:
    decode_or_reject(bytearray(mutated(body, data)))


@FUZZ
@given(body=st.sampled_from(VALID_BODIES), data=st.data())
def test_mutated_valid_frames_in_a_stream_raise_only_remote_protocol_error(
    body: bytes, data: st.DataObject
) -> None:
    frame = len(body).to_bytes(4, "big") + body
    stream = VALID_BODIES[0]
    stream = len(stream).to_bytes(4, "big") + stream + mutated(frame, data)

    feed_and_decode(stream, max_frame=1 << 16)


# ---------------------------------------------------------------- structured headers

INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = (
    st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
DIMS = st.integers(0, 4) | st.sampled_from([-1, 2**31, 2**32, 2**63]) | VALUES
DTYPE_NAMES = st.sampled_from([*DTYPES, "c64", "F32", ""]) | VALUES
TEXT = st.text(max_size=8) | VALUES


def fixed_bin(length: int) -> st.SearchStrategy[Any]:
    """Bin of about ``length`` bytes (exactly that, often), or anything else."""
    return (
        st.binary(min_size=length, max_size=length)
        | st.binary(min_size=length - 2, max_size=length + 2)
        | st.text(min_size=length, max_size=length)
        | VALUES
    )


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "s": st.integers(0, 9) | DIMS,
    "to": st.integers(0, 9) | DIMS,
    "r": st.integers(0, 9) | DIMS,
    "run": TEXT,
    "n": fixed_bin(NONCE_LEN),
    "sig": fixed_bin(SIGNATURE_LEN),
    "tb": TEXT,
    "why": TEXT,
    "host": TEXT,
    "port": st.integers(0, 70_000) | VALUES,
    "t0": st.floats() | VALUES,
    "addr": st.lists(
        st.tuples(DIMS, TEXT, DIMS, st.just(b"") | fixed_bin(KEY_LEN)).map(list)
        | st.tuples(DIMS, TEXT, DIMS).map(list)
        | VALUES,
        max_size=3,
    )
    | VALUES,
    "m": st.dictionaries(
        st.text(max_size=8) | st.binary(max_size=3) | INTS,
        SCALARS | st.lists(SCALARS | VALUES, max_size=3),
        max_size=3,
    )
    | VALUES,
}
KIND_KEYS = {
    "hello": ["run", "s", "to", "n"],
    "challenge": ["s", "n", "sig"],
    "proof": ["sig"],
    "share": ["s", "r", "t", "m"],
    "register": ["s", "host", "port"],
    "start": ["addr", "t0"],
    "progress": ["s", "r"],
    "done": ["s"],
    "failed": ["s", "tb"],
    "stop": ["why"],
}


@st.composite
def tensor_entries(draw: st.DrawFn) -> Any:
    shape = draw(st.lists(DIMS, max_size=9) | VALUES)
    nbytes = draw(st.integers(0, 64) | st.sampled_from([-1, 2**40, 2**64 - 1]) | VALUES)
    entry = [draw(TEXT), draw(DTYPE_NAMES), shape, nbytes]
    return draw(st.just(entry) | st.lists(VALUES, max_size=5))


FIELDS["t"] = st.lists(tensor_entries(), max_size=4) | VALUES


@st.composite
def headers(draw: st.DrawFn) -> dict[Any, Any]:
    """The right version, kind and keys; field values anywhere from valid to absurd."""
    kind = draw(st.sampled_from(sorted(KIND_KEYS)))
    header: dict[Any, Any] = {"v": PROTOCOL_VERSION, "k": kind}
    for key in KIND_KEYS[kind]:
        header[key] = draw(FIELDS[key])
    return header


@st.composite
def broken_headers(draw: st.DrawFn) -> dict[Any, Any]:
    """A header with a bad version or kind, a key missing or a key too many."""
    header = draw(headers())
    how = draw(st.sampled_from(["v", "k", "drop", "extra"]))
    if how in ("v", "k"):
        bad = [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, True, "share", "gossip"]
        header[how] = draw(st.sampled_from(bad) | VALUES)
    elif how == "drop":
        del header[draw(st.sampled_from(sorted(header)))]
    else:
        header[draw(st.text(max_size=3) | st.binary(max_size=3) | INTS)] = draw(VALUES)
    return header


@FUZZ
@given(header=headers() | broken_headers(), tail=st.binary(max_size=200))
def test_hostile_headers_raise_only_remote_protocol_error(
    header: dict[Any, Any], tail: bytes
) -> None:
    packed = msgpack.packb(header, use_bin_type=True)

    decode_or_reject(bytearray(len(packed).to_bytes(4, "big") + packed + tail))


@st.composite
def plausible_share_bodies(draw: st.DrawFn) -> bytearray:
    """Headers with well-formed tensor lists, and exactly as many tensor bytes as they claim."""
    entries: list[list[Any]] = []
    for index in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * DTYPES[dtype].itemsize + draw(st.sampled_from([0, 0, 0, 1, -1]))
        entries.append([draw(st.sampled_from([f"t{index}", "t0"])), dtype, shape, nbytes])
    meta = draw(st.just({}) | VALUES)
    header = {"v": PROTOCOL_VERSION, "k": "share", "s": 0, "r": 0, "t": entries, "m": meta}
    packed = msgpack.packb(header, use_bin_type=True)
    body = bytearray(len(packed).to_bytes(4, "big") + packed)
    for entry in entries:
        body += bytes(-len(body) % ALIGN) + draw(
            st.binary(min_size=max(entry[3], 0), max_size=max(entry[3], 0))
        )
    return body + draw(st.sampled_from([b"", b"", b"\0"]))


@FUZZ
@given(body=plausible_share_bodies())
def test_plausible_share_bodies_decode_or_raise_remote_protocol_error(body: bytearray) -> None:
    msg = decode_or_reject(body)

    if msg is not None:
        assert isinstance(msg, Share)
        assert all(
            t.data_ptr() % ALIGN == 0 or t.numel() == 0 for t in msg.payload.tensors.values()
        )
