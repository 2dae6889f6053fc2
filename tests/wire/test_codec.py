"""The message codec: every kind round-trips; tensors are never copied; bad input is typed."""

from __future__ import annotations

import array
import gc
import math
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

import dlactor.wire as wire
from dlactor.messages import (
    PROTOCOL_VERSION,
    Challenge,
    Done,
    Failed,
    Hello,
    Message,
    Payload,
    Progress,
    Proof,
    Register,
    Share,
    Start,
    Stop,
)
from dlactor.security.identity import LAUNCHER
from dlactor.wire.codec import (
    DTYPES,
    KEY_LEN,
    MAX_HEADER,
    MAX_RUN_ID,
    MAX_TENSORS,
    NONCE_LEN,
    SIGNATURE_LEN,
    decode,
    encode,
    encoded_size,
)
from dlactor.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from dlactor.wire.framing import FrameDecoder


def to_wire(msg: Message, **kwargs: Any) -> bytes:
    return b"".join(encode(msg, **kwargs))


def body_of(msg: Message) -> bytearray:
    return bytearray(to_wire(msg)[4:])


def round_trip(msg: Message) -> Message:
    decoder = FrameDecoder()
    decoder.receive_data(to_wire(msg))
    body = decoder.next_frame()
    assert body is not None
    assert decoder.next_frame() is None
    return decode(body)


def address(buf: bytearray | memoryview) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def share(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Share:
    return Share(sender=1, round=2, payload=Payload(tensors=tensors, meta=meta or {}))


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor.detach()), name


def raw_body(header: dict[Any, Any], tail: bytes = b"") -> bytearray:
    """A frame body with this header map (packed as given) and these bytes after it."""
    packed = msgpack.packb(header, use_bin_type=True)
    return bytearray(len(packed).to_bytes(4, "big") + packed + tail)


def share_header(**overrides: Any) -> dict[str, Any]:
    header = {"v": PROTOCOL_VERSION, "k": "share", "s": 1, "r": 2, "t": [], "m": {}}
    return header | overrides


def raw_share(*entries: list[Any]) -> bytearray:
    """A share body with these tensor entries and exactly the padded bytes their nbytes claim."""
    body = raw_body(share_header(t=list(entries)))
    for entry in entries:
        nbytes = entry[3] if len(entry) == 4 and isinstance(entry[3], int) and entry[3] >= 0 else 0
        body += bytes(-len(body) % 8 + nbytes)
    return body


# ---------------------------------------------------------------- round trips

NONCE = bytes(range(NONCE_LEN))
SIGNATURE = bytes(range(100, 100 + SIGNATURE_LEN))
KEY = bytes(range(200, 200 + KEY_LEN))

CONTROL_MESSAGES = [
    Hello(run_id="run-20240101", sender=0, target=3, nonce=NONCE),
    Hello(run_id="r" * MAX_RUN_ID, sender=2**32 - 2, target=LAUNCHER, nonce=bytes(NONCE_LEN)),
    Challenge(sender=3, nonce=NONCE, signature=SIGNATURE),
    Challenge(sender=LAUNCHER, nonce=b"\xff" * NONCE_LEN, signature=bytes(SIGNATURE_LEN)),
    Proof(signature=SIGNATURE),
    Register(sender=7, host="10.0.0.3", port=40123),
    Start(addresses={0: ("127.0.0.1", 5000), 3: ("node-3.local", 65535)}, t0=1712345678.25),
    Start(
        addresses={0: ("127.0.0.1", 5000), 3: ("node-3.local", 65535)},
        t0=1.5,
        keys={0: KEY, 3: bytes(KEY_LEN)},
    ),
    Start(addresses={0: ("h", 1), 1: ("h", 2)}, t0=1.5, keys={1: KEY}),  # node 0: no key
    Start(addresses={}, t0=0.0),
    Progress(sender=5, round=0),
    Done(sender=2**40),
    Failed(sender=3, traceback='Traceback (most recent call last):\n  File "x.py"\nÜnïcødé'),
    Stop(reason=""),
]


@pytest.mark.parametrize("msg", CONTROL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_control_message_round_trips_equal(msg: Message) -> None:
    assert round_trip(msg) == msg


def test_a_handshake_frame_is_the_same_size_whatever_its_nonce_and_signature() -> None:
    """Nonces and signatures are fixed-length bin: a handshake's size depends on the ids
    and the run id only (what the transports' byte accounting relies on)."""
    sizes = {
        (
            len(to_wire(Hello("run", 1, 2, nonce))),
            len(to_wire(Challenge(2, nonce, sig))),
            len(to_wire(Proof(sig))),
        )
        for nonce, sig in [
            (bytes(NONCE_LEN), bytes(SIGNATURE_LEN)),
            (NONCE, SIGNATURE),
            (b"\xff" * NONCE_LEN, b"\xff" * SIGNATURE_LEN),
        ]
    }
    assert len(sizes) == 1


def test_start_with_an_int_t0_decodes_with_a_float_t0() -> None:
    decoded = round_trip(Start(addresses={1: ("h", 1)}, t0=5))

    assert isinstance(decoded, Start)
    assert decoded.t0 == 5.0
    assert isinstance(decoded.t0, float)


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.arange(math.prod(shape)).reshape(shape) % 3 == 0
    if dtype.is_floating_point:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=dtype)


@pytest.mark.parametrize("wire_name", list(DTYPES))
def test_share_round_trips_every_dtype(wire_name: str) -> None:
    dtype = DTYPES[wire_name]
    tensors = {"vec": sample(dtype, (13,)), "mat": sample(dtype, (3, 5)), "one": sample(dtype, ())}

    decoded = round_trip(share(tensors))

    assert isinstance(decoded, Share)
    assert_same_tensors(dict(decoded.payload.tensors), tensors)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 1, 1, 1, 1, 1, 1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.int16])
def test_share_round_trips_zero_dim_empty_and_many_dim_tensors(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    tensors = {"a": sample(dtype, shape), "b": sample(torch.uint8, (3,))}

    decoded = round_trip(share(tensors))

    assert isinstance(decoded, Share)
    assert_same_tensors(dict(decoded.payload.tensors), tensors)


def test_share_round_trips_non_contiguous_and_offset_tensors() -> None:
    base = torch.arange(60, dtype=torch.float64).reshape(6, 10)
    tensors = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "offset": base[2:4],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
    }
    assert not tensors["transposed"].is_contiguous()

    decoded = round_trip(share(tensors))

    assert isinstance(decoded, Share)
    assert_same_tensors(dict(decoded.payload.tensors), tensors)


def test_share_round_trips_parameters_that_require_grad() -> None:
    weight = torch.nn.Parameter(torch.randn(4, 3))

    decoded = round_trip(share({"w": weight}))

    assert isinstance(decoded, Share)
    assert not decoded.payload.tensors["w"].requires_grad
    assert torch.equal(decoded.payload.tensors["w"], weight.detach())


def test_share_round_trips_every_meta_value_type() -> None:
    meta = {
        "int": -(2**63),
        "uint": 2**64 - 1,
        "float": 0.1,
        "inf": float("-inf"),
        "str": "naïve",
        "bytes": b"\x00\xff",
        "true": True,
        "none": None,
        "list": [1, 2.5, "x", b"y", False, None],
        "empty": [],
    }

    decoded = round_trip(share({}, meta))

    assert isinstance(decoded, Share)
    assert decoded.payload.meta == meta
    assert [type(v) for v in decoded.payload.meta.values()] == [type(v) for v in meta.values()]


def test_share_without_tensors_or_meta_round_trips() -> None:
    decoded = round_trip(Share(sender=0, round=0, payload=Payload()))

    assert decoded == Share(sender=0, round=0, payload=Payload(tensors={}, meta={}))


def test_share_preserves_tensor_order_and_names() -> None:
    tensors = {name: torch.full((2,), float(i)) for i, name in enumerate("zyxab")}
    tensors["layer.0.weight/ü"] = torch.ones(1)

    decoded = round_trip(share(tensors))

    assert isinstance(decoded, Share)
    assert list(decoded.payload.tensors) == list(tensors)


# ---------------------------------------------------------------- layout and zero copy


def test_progress_encodes_to_the_documented_bytes() -> None:
    expected = "000000190000001584a17602a16ba870726f6772657373a17301a17202"

    assert to_wire(Progress(sender=1, round=2)).hex() == expected


def test_hello_encodes_to_the_documented_bytes() -> None:
    expected = (
        "00000044"  # body length 68
        "00000040"  # header length 64
        "86a17602a16ba568656c6c6f a372756ea465787031 a17302 a2746f05 a16ec420"
    ).replace(" ", "") + bytes(range(32)).hex()

    assert to_wire(Hello(run_id="exp1", sender=2, target=5, nonce=bytes(range(32)))).hex() == (
        expected
    )


def test_start_encodes_to_the_documented_bytes() -> None:
    expected = (
        "00000052"  # body length 82
        "0000004e"  # header length 78
        "84a17602a16ba57374617274"
        "a461646472 91 94 00 a831302e302e302e31 cd1b58 c420"  # "addr": [[0, "10.0.0.1", 7000,
        + "00" * 32  # its key: 32 zero bytes
        + "a27430 cb3ff8000000000000"  # "t0": 1.5
    ).replace(" ", "")

    msg = Start(addresses={0: ("10.0.0.1", 7000)}, t0=1.5, keys={0: bytes(32)})
    assert to_wire(msg).hex() == expected


def test_share_encodes_to_the_documented_bytes() -> None:
    msg = Share(
        sender=1,
        round=2,
        payload=Payload(tensors={"w": torch.tensor([1.0, -2.0], dtype=torch.float32)}, meta={}),
    )
    expected = (
        "00000030"  # body length 48
        "00000022"  # header length 34
        "86a17602a16ba57368617265a17301a17202a17491 94a177a3663332 9102 08a16d80"
        "0000"  # pad: tensor 0 starts at body offset 40
        "0000803f000000c0"  # [1.0, -2.0] as little-endian f32
    ).replace(" ", "")

    assert to_wire(msg).hex() == expected


def test_encoded_buffers_add_up_to_the_length_prefix() -> None:
    msg = share({"a": torch.ones(3, dtype=torch.int8), "b": torch.ones(5, dtype=torch.float64)})

    buffers = encode(msg)

    wire_bytes = b"".join(buffers)
    assert encoded_size(buffers) == len(wire_bytes)
    assert int.from_bytes(wire_bytes[:4], "big") == len(wire_bytes) - 4


def test_every_tensor_starts_at_a_body_offset_multiple_of_eight_after_zero_padding() -> None:
    tensors = {"a": torch.ones(3, dtype=torch.int8), "b": torch.ones(1, dtype=torch.float64)}
    body = body_of(share(tensors))

    decoded = decode(body)

    assert isinstance(decoded, Share)
    offsets = [t.data_ptr() - address(body) for t in decoded.payload.tensors.values()]
    assert [offset % 8 for offset in offsets] == [0, 0]
    assert all(t.data_ptr() % 8 == 0 for t in decoded.payload.tensors.values())
    assert body[offsets[0] + 3 : offsets[1]] == bytes(offsets[1] - offsets[0] - 3)
    assert len(body) == offsets[1] + 8


def test_encode_hands_out_the_tensor_storage_without_copying() -> None:
    base = torch.arange(1000, dtype=torch.float32)
    tensors = {"a": base, "b": base[100:200], "c": torch.ones(4, 4, dtype=torch.bfloat16)}

    views = [buf for buf in encode(share(tensors)) if isinstance(buf, memoryview)]

    assert [address(view) for view in views] == [t.data_ptr() for t in tensors.values()]
    assert [view.nbytes for view in views] == [4000, 400, 32]


def test_encode_views_see_later_writes_to_the_tensor() -> None:
    tensor = torch.zeros(4, dtype=torch.int32)
    view = next(buf for buf in encode(share({"t": tensor})) if isinstance(buf, memoryview))

    tensor[0] = 0x01020304

    assert bytes(view[:4]) == b"\x04\x03\x02\x01"


def test_decoded_tensors_alias_the_frame_body() -> None:
    body = body_of(share({"t": torch.zeros(4, dtype=torch.uint8)}))
    decoded = decode(body)
    assert isinstance(decoded, Share)
    tensor = decoded.payload.tensors["t"]

    body[-1] = 9

    assert tensor.tolist() == [0, 0, 0, 9]
    assert address(body) <= tensor.data_ptr() < address(body) + len(body)


def test_large_share_is_decoded_in_place_from_the_frame_decoders_body() -> None:
    weights = torch.randn(2 << 20)  # 8 MiB of float32
    data = to_wire(share({"w": weights}))
    decoder = FrameDecoder()
    decoder.receive_data(data[:1000])
    assert decoder.next_frame() is None  # reads the length: the body is allocated

    view = decoder.get_buffer()
    view[:] = data[1000:]
    decoder.buffer_updated(len(view))
    body = decoder.next_frame()
    assert body is not None
    decoded = decode(body)

    assert isinstance(decoded, Share)
    tensor = decoded.payload.tensors["w"]
    start = address(body)
    assert start <= address(view) and address(view) + len(view) == start + len(body)
    assert start <= tensor.data_ptr() and tensor.data_ptr() + (8 << 20) <= start + len(body)
    assert torch.equal(tensor, weights)


# ---------------------------------------------------------------- our faults


@pytest.mark.parametrize(
    "tensor",
    [
        torch.ones(2, dtype=torch.complex64),
        torch.ones(2, dtype=torch.uint16),
        torch.ones(2).to_sparse(),
        [1.0, 2.0],
        torch.ones([1] * 9),
    ],
    ids=["complex64", "uint16", "sparse", "list", "nine-dims"],
)
def test_encoding_an_unsupported_tensor_is_a_local_protocol_error(tensor: Any) -> None:
    with pytest.raises(LocalProtocolError, match="tensor 'x'"):
        encode(share({"x": tensor}))


def test_encoding_a_frame_over_max_frame_is_a_local_protocol_error() -> None:
    msg = share({"x": torch.zeros(1000, dtype=torch.uint8)})
    size = len(to_wire(msg)) - 4

    encode(msg, max_frame=size)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode(msg, max_frame=size - 1)


@pytest.mark.parametrize(
    "meta",
    [
        {"k": (1, 2)},
        {"k": {"nested": 1}},
        {"k": [[1]]},
        {"k": np.int64(3)},
        {"k": bytearray(b"x")},
        {1: "int key"},
        {"k" * 257: 1},
        {"k": 2**64},
        {"k": "\ud800"},
    ],
    ids=repr,
)
def test_encoding_bad_meta_is_a_local_protocol_error(meta: dict[Any, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        encode(share({}, meta))


@pytest.mark.parametrize(
    "msg",
    [
        Progress(sender=-1, round=0),
        Progress(sender=True, round=0),
        Progress(sender=0, round=1.0),  # type: ignore[arg-type]
        Done(sender=2**64),
        Hello(run_id="r" * (MAX_RUN_ID + 1), sender=0, target=1, nonce=NONCE),
        Hello(run_id="r", sender=-1, target=1, nonce=NONCE),
        Hello(run_id="r", sender=0, target=2**64, nonce=NONCE),
        Hello(run_id="r", sender=0, target=1, nonce=NONCE[:-1]),
        Hello(run_id="r", sender=0, target=1, nonce=NONCE + b"\0"),
        Hello(run_id="r", sender=0, target=1, nonce=NONCE.hex()),  # type: ignore[arg-type]
        Hello(run_id="r", sender=0, target=1, nonce=bytearray(NONCE)),  # type: ignore[arg-type]
        Hello(run_id="r", sender=0, target=1, nonce=None),  # type: ignore[arg-type]
        Challenge(sender=1, nonce=NONCE, signature=SIGNATURE[:-1]),
        Challenge(sender=1, nonce=b"", signature=SIGNATURE),
        Challenge(sender=True, nonce=NONCE, signature=SIGNATURE),
        Proof(signature=SIGNATURE + b"\0"),
        Proof(signature=b""),
        Proof(signature=None),  # type: ignore[arg-type]
        Register(sender=0, host="", port=80),
        Register(sender=0, host="h", port=0),
        Register(sender=0, host="h", port=65536),
        Start(addresses={-1: ("h", 1)}, t0=0.0),
        Start(addresses={1: ("h",)}, t0=0.0),  # type: ignore[dict-item]
        Start(addresses={1: ("h", 1)}, t0=float("nan")),
        Start(addresses={1: ("h", 1)}, t0=0.0, keys={1: KEY[:-1]}),
        Start(addresses={1: ("h", 1)}, t0=0.0, keys={1: KEY.hex()}),  # type: ignore[dict-item]
        Stop(reason=b"bytes"),  # type: ignore[arg-type]
        Share(sender=0, round=0, payload={}),  # type: ignore[arg-type]
        Share(sender=0, round=0, payload=Payload(tensors={3: torch.ones(1)})),  # type: ignore[dict-item]
        Share(sender=0, round=0, payload=Payload(tensors={"n" * 257: torch.ones(1)})),
    ],
    ids=repr,
)
def test_encoding_an_invalid_field_is_a_local_protocol_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


def test_encoding_more_than_the_tensor_limit_is_a_local_protocol_error() -> None:
    tensors = {f"t{i}": torch.ones(1) for i in range(MAX_TENSORS + 1)}

    with pytest.raises(LocalProtocolError, match="tensors"):
        encode(share(tensors))


def test_encoding_a_header_over_the_limit_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="header"):
        encode(Failed(sender=0, traceback="x" * MAX_HEADER))


def test_encoding_something_that_is_not_a_message_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="not a dlactor message"):
        encode(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- their faults


def valid_share_body(tensors: dict[str, torch.Tensor]) -> bytearray:
    return body_of(share(tensors))


def control(kind: str, **fields: Any) -> dict[str, Any]:
    """A header of this kind, at this protocol's version, with exactly these fields."""
    return {"v": PROTOCOL_VERSION, "k": kind, **fields}


def hello(**overrides: Any) -> dict[str, Any]:
    return control("hello", run="r", s=0, to=1, n=NONCE) | overrides


def challenge(**overrides: Any) -> dict[str, Any]:
    return control("challenge", s=1, n=NONCE, sig=SIGNATURE) | overrides


def spec(name: Any, dtype: Any, shape: Any, nbytes: Any) -> list[Any]:
    return [name, dtype, shape, nbytes]


BAD_BODIES = {
    "too short for a header length": bytearray(b"\x00\x00\x01"),
    "header length 0": bytearray(b"\x00\x00\x00\x00\x80"),
    "header length past the body": bytearray(b"\x00\x00\x00\x05\x80"),
    "header length over the limit": bytearray((MAX_HEADER + 1).to_bytes(4, "big")),
    "header not msgpack": bytearray(b"\x00\x00\x00\x01\xc1"),
    "header truncated msgpack": bytearray(b"\x00\x00\x00\x02\x82\xa1"),
    "two objects in the header": bytearray(b"\x00\x00\x00\x02\x80\x80"),
    "header not a map": raw_body([1, 2]),  # type: ignore[arg-type]
    "header with int keys": raw_body({1: 1}),
    "version 1 (the previous protocol)": raw_body(share_header(v=1)),
    "version 3": raw_body(share_header(v=PROTOCOL_VERSION + 1)),
    "version True": raw_body(share_header(v=True)),
    "version missing": raw_body({k: v for k, v in share_header().items() if k != "v"}),
    "unknown kind": raw_body(share_header(k="gossip")),
    "kind not a str": raw_body(share_header(k=1)),
    "missing key": raw_body({k: v for k, v in share_header().items() if k != "m"}),
    "extra key": raw_body(share_header(x=1)),
    "sender bool": raw_body(share_header(s=False)),
    "sender negative": raw_body(share_header(s=-1)),
    "round float": raw_body(share_header(r=1.0)),
    "tensors not a list": raw_body(share_header(t={})),
    "tensor entry too short": raw_share(["a", "u8", [1]]),
    "unknown dtype": raw_share(spec("a", "c64", [1], 8)),
    "dtype not a str": raw_share(spec("a", ["u8"], [1], 1)),
    "name not a str": raw_share(spec(b"a", "u8", [1], 1)),
    "shape not a list": raw_share(spec("a", "u8", 1, 1)),
    "negative dimension": raw_share(spec("a", "u8", [-1], 1)),
    "nine dimensions": raw_share(spec("a", "u8", [1] * 9, 1)),
    "huge empty shape": raw_share(spec("a", "u8", [0, 2**32 - 1] * 2, 0)),
    "dimension over u32": raw_share(spec("a", "u8", [0, 2**32], 0)),
    "shape and nbytes disagree": raw_share(spec("a", "f32", [2], 4)),
    "huge claimed nbytes": raw_body(
        share_header(t=[spec("a", "f64", [2**24] * 2, 8 * 2**48)]), bytes(8)
    ),
    "duplicate names": raw_share(spec("a", "u8", [1], 1), spec("a", "u8", [1], 1)),
    "meta not a map": raw_body(share_header(m=[])),
    "meta bytes key": raw_body(share_header(m={b"k": 1})),
    "meta nested list": raw_body(share_header(m={"k": [[1]]})),
    "meta map value": raw_body(share_header(m={"k": {}})),
    "hello of protocol 1 (with a secret)": raw_body(
        control("hello", run="r", sec="s" * 32, s=0) | {"v": 1}
    ),
    "hello with a secret": raw_body(control("hello", run="r", sec="s" * 32, s=0)),
    "hello without a target": raw_body(control("hello", run="r", s=0, n=NONCE)),
    "hello target negative": raw_body(hello(to=-1)),
    "hello target bool": raw_body(hello(to=True)),
    "hello run id too long": raw_body(hello(run="r" * 257)),
    "hello nonce a str": raw_body(hello(n="x" * NONCE_LEN)),
    "hello nonce short": raw_body(hello(n=NONCE[:-1])),
    "hello nonce long": raw_body(hello(n=NONCE + b"\0")),
    "hello nonce empty": raw_body(hello(n=b"")),
    "hello nonce an int": raw_body(hello(n=0)),
    "hello nonce a list": raw_body(hello(n=list(NONCE))),
    "challenge signature short": raw_body(challenge(sig=SIGNATURE[:-1])),
    "challenge signature long": raw_body(challenge(sig=SIGNATURE + b"\0")),
    "challenge signature a str": raw_body(challenge(sig="x" * SIGNATURE_LEN)),
    "challenge nonce short": raw_body(challenge(n=NONCE[:-1])),
    "challenge nonce nil": raw_body(challenge(n=None)),
    "challenge sender negative": raw_body(challenge(s=-1)),
    "challenge without a nonce": raw_body(control("challenge", s=1, sig=SIGNATURE)),
    "proof signature short": raw_body(control("proof", sig=SIGNATURE[:-1])),
    "proof signature a str": raw_body(control("proof", sig="x" * SIGNATURE_LEN)),
    "proof with a sender": raw_body(control("proof", sig=SIGNATURE, s=0)),
    "proof empty": raw_body(control("proof")),
    "bytes after a proof": raw_body(control("proof", sig=SIGNATURE), b"\0"),
    "register port 0": raw_body(control("register", s=0, host="h", port=0)),
    "start duplicate node": raw_body(
        control("start", addr=[[1, "h", 1, b""], [1, "g", 2, b""]], t0=0.0)
    ),
    "start address pair": raw_body(control("start", addr=[[1, "h"]], t0=0.0)),
    "start address of protocol 1": raw_body(control("start", addr=[[1, "h", 1]], t0=0.0)),
    "start address with 5 fields": raw_body(control("start", addr=[[1, "h", 1, KEY, b""]], t0=0.0)),
    "start key short": raw_body(control("start", addr=[[1, "h", 1, KEY[:-1]]], t0=0.0)),
    "start key long": raw_body(control("start", addr=[[1, "h", 1, KEY + b"\0"]], t0=0.0)),
    "start key a str": raw_body(control("start", addr=[[1, "h", 1, "k" * KEY_LEN]], t0=0.0)),
    "start key empty str": raw_body(control("start", addr=[[1, "h", 1, ""]], t0=0.0)),
    "start key nil": raw_body(control("start", addr=[[1, "h", 1, None]], t0=0.0)),
    "start as map": raw_body(control("start", addr={"1": ["h", 1, b""]}, t0=0.0)),
    "start int t0": raw_body(control("start", addr=[], t0=0)),
    "start infinite t0": raw_body(control("start", addr=[], t0=float("inf"))),
    "stop reason bytes": raw_body(control("stop", why=b"x")),
    "ext type value": raw_body(control("stop", why=msgpack.ExtType(1, b"x"))),
    "bytes after a control message": raw_body(control("done", s=0), b"\0"),
}


def test_hand_built_control_bodies_decode_when_nothing_is_wrong() -> None:
    """The helpers the bad bodies above are built with make valid bodies as they are: each
    bad body is bad for the one reason its name says."""
    assert decode(raw_body(hello())) == Hello("r", 0, 1, NONCE)
    assert decode(raw_body(challenge())) == Challenge(1, NONCE, SIGNATURE)
    assert decode(raw_body(control("proof", sig=SIGNATURE))) == Proof(SIGNATURE)
    assert decode(raw_body(control("start", addr=[[1, "h", 1, KEY], [2, "g", 2, b""]], t0=0.0)))
    assert decode(raw_body(control("done", s=0))) == Done(0)


def test_a_float32_t0_from_another_implementation_is_accepted() -> None:
    header = {"v": PROTOCOL_VERSION, "k": "start", "addr": [[0, "h", 1, b""]], "t0": 1.5}
    packed = msgpack.packb(header, use_single_float=True)
    assert b"\xca" in packed  # msgpack float 32

    decoded = decode(bytearray(len(packed).to_bytes(4, "big") + packed))

    assert decoded == Start(addresses={0: ("h", 1)}, t0=1.5)


def test_hand_built_share_bodies_decode_when_nothing_is_wrong() -> None:
    body = raw_share(spec("a", "u8", [3], 3), spec("b", "f32", [2, 0], 0), spec("c", "i64", [], 8))

    decoded = decode(body)

    assert isinstance(decoded, Share)
    assert [tuple(t.shape) for t in decoded.payload.tensors.values()] == [(3,), (2, 0), ()]


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_body_is_a_remote_protocol_error(body: bytearray) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(body)


def test_missing_tensor_bytes_are_a_remote_protocol_error() -> None:
    body = valid_share_body({"a": torch.ones(3)})

    with pytest.raises(RemoteProtocolError, match="describes"):
        decode(body[:-1])


def test_trailing_bytes_after_the_last_tensor_are_a_remote_protocol_error() -> None:
    body = valid_share_body({"a": torch.ones(3)})

    with pytest.raises(RemoteProtocolError, match="describes"):
        decode(body + b"\0")


def test_nonzero_padding_is_a_remote_protocol_error() -> None:
    body = valid_share_body({"a": torch.ones(3, dtype=torch.uint8), "b": torch.ones(1)})
    decode(bytearray(body))
    padding_index = len(body) - 4 - 1  # the byte just before tensor "b"

    body[padding_index] = 1

    with pytest.raises(RemoteProtocolError, match="padding"):
        decode(body)


def test_bool_tensor_bytes_other_than_zero_or_one_are_a_remote_protocol_error() -> None:
    body = valid_share_body({"mask": torch.tensor([True, False, True])})
    body[-1] = 2

    with pytest.raises(RemoteProtocolError, match="bool"):
        decode(body)


def test_decoding_bytes_instead_of_a_bytearray_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        decode(bytes(body_of(Done(sender=1))))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "view",
    [
        memoryview(bytes(body_of(Done(sender=1)))),  # read-only
        memoryview(body_of(Done(sender=1))).cast("B", (1, len(body_of(Done(sender=1))))),
        memoryview(array.array("i", [0, 0])),  # not bytes
        memoryview(body_of(Done(sender=1)))[::2],  # not contiguous
    ],
    ids=["read-only", "two-dimensional", "int elements", "strided"],
)
def test_decoding_a_view_that_is_not_writable_contiguous_bytes_is_a_type_error(
    view: memoryview,
) -> None:
    with pytest.raises(TypeError, match="writable, contiguous byte memoryview"):
        decode(view)


def test_a_writable_memoryview_over_numpy_memory_decodes_to_tensors_that_keep_it_alive() -> None:
    weights = torch.randn(1000)
    wire_bytes = to_wire(share({"w": weights}))
    body = np.empty(len(wire_bytes) - 4, dtype=np.uint8)  # how FrameDecoder holds big bodies
    body[:] = np.frombuffer(wire_bytes, dtype=np.uint8)[4:]

    decoded = decode(memoryview(body))
    del body
    gc.collect()

    assert isinstance(decoded, Share)
    assert torch.equal(decoded.payload.tensors["w"], weights)
    decoded.payload.tensors["w"][0] = 7.0  # writable, no warning


def test_protocol_errors_name_whose_fault_it_is() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


def test_wire_package_exports_the_documented_api() -> None:
    assert sorted(wire.__all__) == sorted(
        [
            "DEFAULT_MAX_FRAME",
            "FrameDecoder",
            "HANDSHAKE_MAX_FRAME",
            "LocalProtocolError",
            "ProtocolError",
            "RemoteProtocolError",
            "decode",
            "encode",
            "encoded_size",
            "frame_prefix",
        ]
    )
    assert all(hasattr(wire, name) for name in wire.__all__)
