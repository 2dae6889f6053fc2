"""The message codec, sans I/O: messages to frame buffers, frame bodies to messages.

A frame body is ``u32 header_len | msgpack header | pad | tensor 0 | pad | tensor 1 | ...``
with every tensor starting at a body offset that is a multiple of 8 (see docs/wire.md).
``encode`` never copies tensor data: it returns memoryviews over the tensors' own storage.
``decode`` never copies it either: tensors are ``torch.frombuffer`` views of the body.

Every rule is checked on both sides by the same functions: ``encode`` validates its header
with the decoder's readers (a failure there is a ``LocalProtocolError``), so whatever we send,
a peer running this code accepts, and whatever we accept, we could have sent.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, NoReturn

import msgpack
import torch

from dlactor.messages import (
    PROTOCOL_VERSION,
    Done,
    Failed,
    Hello,
    Message,
    MetaValue,
    Payload,
    Progress,
    Register,
    Share,
    Start,
    Stop,
)
from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME, frame_prefix

__all__ = [
    "ALIGN",
    "DTYPES",
    "MAX_DIM",
    "MAX_HEADER",
    "MAX_NAME",
    "MAX_NDIM",
    "MAX_SHORT",
    "MAX_SPAN",
    "MAX_TENSORS",
    "decode",
    "encode",
    "encoded_size",
]

if sys.byteorder != "little":  # pragma: no cover - tensor bytes go on the wire as they are
    raise ImportError("dlactor.wire.codec supports little-endian hosts only")

#: Largest msgpack header, in bytes.
MAX_HEADER = 1 << 20
#: Most tensors in one Share.
MAX_TENSORS = 4096
#: Most dimensions of one tensor.
MAX_NDIM = 8
#: Largest single dimension.
MAX_DIM = (1 << 32) - 1
#: Largest product of ``max(dim, 1)`` over a shape (bounds the shapes of empty tensors).
MAX_SPAN = 1 << 48
#: Longest tensor name or meta key, in characters.
MAX_NAME = 256
#: Longest run id, secret or host name, in characters.
MAX_SHORT = 256
#: Every tensor starts at a body offset that is a multiple of this.
ALIGN = 8

#: The closed set of tensor dtypes, by wire name.
DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f64": torch.float64,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "u8": torch.uint8,
    "i8": torch.int8,
    "i16": torch.int16,
    "i32": torch.int32,
    "i64": torch.int64,
    "bool": torch.bool,
}
_WIRE_NAME = {dtype: name for name, dtype in DTYPES.items()}
_ZEROS = bytes(ALIGN)
_LEN_BYTES = 4

Buffer = bytes | memoryview
Header = dict[Any, Any]

#: Header keys of each kind, ``v`` and ``k`` included.
_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset({"v", "k", *fields})
    for kind, fields in {
        "hello": ("run", "sec", "s"),
        "share": ("s", "r", "t", "m"),
        "register": ("s", "host", "port"),
        "start": ("addr", "t0"),
        "progress": ("s", "r"),
        "done": ("s",),
        "failed": ("s", "tb"),
        "stop": ("why",),
    }.items()
}
_KIND_OF: dict[type, str] = {
    Hello: "hello",
    Share: "share",
    Register: "register",
    Start: "start",
    Progress: "progress",
    Done: "done",
    Failed: "failed",
    Stop: "stop",
}


class _Spec(NamedTuple):
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


# ---------------------------------------------------------------- encode


def encode(msg: Message, *, max_frame: int = DEFAULT_MAX_FRAME) -> list[bytes | memoryview]:
    """The buffers of one whole frame, length prefix included, in wire order.

    Tensor bytes are memoryviews over the tensors' storage (non-contiguous tensors are made
    contiguous first): do not modify the tensors until the buffers have been written.
    Raises ``LocalProtocolError`` if the message cannot be put on the wire.
    """
    header, views = _to_header(msg)
    _check_outgoing(header)
    packed = _pack(header)
    starts, body_len = _layout(len(packed), [view.nbytes for view in views])
    if body_len > max_frame:
        raise LocalProtocolError(
            f"cannot encode {header['k']}: frame body of {body_len} bytes exceeds {max_frame}"
        )
    return _assemble(body_len, packed, views, starts)


def encoded_size(buffers: Iterable[bytes | memoryview]) -> int:
    """Bytes on the wire for these buffers."""
    return sum(buf.nbytes if isinstance(buf, memoryview) else len(buf) for buf in buffers)


def _to_header(msg: Message) -> tuple[Header, list[memoryview]]:
    kind = _KIND_OF.get(type(msg))
    if kind is None:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: not a dlactor message")
    views: list[memoryview] = []
    if isinstance(msg, Share):
        fields, views = _share_fields(msg)
    else:
        fields = _WRITERS[kind](msg)
    return {"v": PROTOCOL_VERSION, "k": kind, **fields}, views


def _share_fields(msg: Share) -> tuple[Header, list[memoryview]]:
    payload = msg.payload
    if not isinstance(payload, Payload):
        raise LocalProtocolError(f"cannot encode share: payload is a {type(payload).__name__}")
    if not isinstance(payload.tensors, Mapping):
        raise LocalProtocolError("cannot encode share: payload.tensors is not a mapping")
    if len(payload.tensors) > MAX_TENSORS:
        raise LocalProtocolError(f"cannot encode share: more than {MAX_TENSORS} tensors")
    specs, views = [], []
    for name, tensor in payload.tensors.items():
        spec, view = _tensor_to_wire(name, tensor)
        specs.append(spec)
        views.append(view)
    meta = dict(payload.meta) if isinstance(payload.meta, Mapping) else payload.meta
    return {"s": msg.sender, "r": msg.round, "t": specs, "m": meta}, views


def _tensor_to_wire(name: object, tensor: object) -> tuple[list[Any], memoryview]:
    """The header entry of one tensor and a byte view of its storage (no copy if contiguous)."""
    if not isinstance(tensor, torch.Tensor):
        raise LocalProtocolError(f"cannot encode tensor {name!r}: got {type(tensor).__name__}")
    wire = _WIRE_NAME.get(tensor.dtype)
    if wire is None:
        supported = ", ".join(str(dtype) for dtype in DTYPES.values())
        raise LocalProtocolError(
            f"cannot encode tensor {name!r}: dtype {tensor.dtype} is not one of {supported}"
        )
    if tensor.layout != torch.strided:
        raise LocalProtocolError(f"cannot encode tensor {name!r}: layout {tensor.layout}")
    try:
        flat = tensor.detach().resolve_neg().cpu().contiguous().reshape(-1).view(torch.uint8)
        view = flat.numpy().data if flat.numel() else memoryview(b"")
    except (RuntimeError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode tensor {name!r}: {exc}") from exc
    return [name, wire, list(tensor.shape), view.nbytes], view


def _hello_fields(msg: Hello) -> Header:
    return {"run": msg.run_id, "sec": msg.secret, "s": msg.sender}


def _register_fields(msg: Register) -> Header:
    return {"s": msg.sender, "host": msg.host, "port": msg.port}


def _start_fields(msg: Start) -> Header:
    if not isinstance(msg.addresses, Mapping):
        raise LocalProtocolError("cannot encode start: addresses is not a mapping")
    triples = []
    for node, where in msg.addresses.items():
        if not isinstance(where, tuple | list) or len(where) != 2:
            raise LocalProtocolError(
                f"cannot encode start: address of {node!r} is not (host, port)"
            )
        triples.append([node, where[0], where[1]])
    t0 = msg.t0
    if isinstance(t0, int) and not isinstance(t0, bool):
        t0 = float(t0)
    return {"addr": triples, "t0": t0}


def _progress_fields(msg: Progress) -> Header:
    return {"s": msg.sender, "r": msg.round}


def _done_fields(msg: Done) -> Header:
    return {"s": msg.sender}


def _failed_fields(msg: Failed) -> Header:
    return {"s": msg.sender, "tb": msg.traceback}


def _stop_fields(msg: Stop) -> Header:
    return {"why": msg.reason}


_WRITERS: dict[str, Callable[[Any], Header]] = {
    "hello": _hello_fields,
    "register": _register_fields,
    "start": _start_fields,
    "progress": _progress_fields,
    "done": _done_fields,
    "failed": _failed_fields,
    "stop": _stop_fields,
}


def _check_outgoing(header: Header) -> None:
    """Validate an outgoing header with the decoder's own rules."""
    try:
        kind = _read_kind(header)
        if kind == "share":
            _read_share_header(header)
        else:
            _READERS[kind](header)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"cannot encode {header['k']}: {exc}") from None


def _pack(header: Header) -> bytes:
    try:
        packed: bytes = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {header['k']}: {exc}") from exc
    if len(packed) > MAX_HEADER:
        raise LocalProtocolError(
            f"cannot encode {header['k']}: header of {len(packed)} bytes exceeds {MAX_HEADER}"
        )
    return packed


def _layout(header_len: int, sizes: Iterable[int]) -> tuple[list[int], int]:
    """The body offset of each tensor, and the body length."""
    end = _LEN_BYTES + header_len
    starts = []
    for size in sizes:
        start = -(-end // ALIGN) * ALIGN
        starts.append(start)
        end = start + size
    return starts, end


def _assemble(
    body_len: int, packed: bytes, views: list[memoryview], starts: list[int]
) -> list[Buffer]:
    """Small bytes (prefixes, header, padding) joined; tensor views passed through."""
    pending = bytearray(frame_prefix(body_len))
    pending += len(packed).to_bytes(_LEN_BYTES, "big")
    pending += packed
    pos = _LEN_BYTES + len(packed)
    buffers: list[Buffer] = []
    for view, start in zip(views, starts, strict=True):
        pending += _ZEROS[: start - pos]
        if view.nbytes:
            if pending:
                buffers.append(bytes(pending))
                pending.clear()
            buffers.append(view)
        pos = start + view.nbytes
    if pending:
        buffers.append(bytes(pending))
    return buffers


# ---------------------------------------------------------------- decode


def decode(body: bytearray) -> Message:
    """The message in one frame body (as returned by ``FrameDecoder.next_frame``).

    Tensors are views of ``body`` (no copy). Any malformed input raises
    ``RemoteProtocolError``.
    """
    if not isinstance(body, bytearray):
        raise TypeError(f"decode() needs the bytearray of a frame body, got {type(body).__name__}")
    header, header_end = _read_header(body)
    kind = _read_kind(header)
    if kind == "share":
        sender, round_, specs, meta = _read_share_header(header)
        tensors = _read_tensors(body, header_end, specs)
        return Share(sender=sender, round=round_, payload=Payload(tensors=tensors, meta=meta))
    if len(body) != header_end:
        _bad(f"{len(body) - header_end} bytes after the header of a {kind} message")
    return _READERS[kind](header)


def _read_header(body: bytearray) -> tuple[Header, int]:
    """The unpacked header map and the body offset where it ends."""
    if len(body) < _LEN_BYTES:
        _bad(f"frame body of {len(body)} bytes has no header length")
    header_len = int.from_bytes(body[:_LEN_BYTES], "big")
    if not 0 < header_len <= MAX_HEADER:
        _bad(f"header length {header_len} is not in 1..{MAX_HEADER}")
    header_end = _LEN_BYTES + header_len
    if header_end > len(body):
        _bad(f"header length {header_len} overruns the {len(body)}-byte body")
    header = _unpack(memoryview(body)[_LEN_BYTES:header_end])
    if not isinstance(header, dict):
        _bad(f"header is a msgpack {type(header).__name__}, not a map")
    return header, header_end


def _unpack(data: memoryview) -> object:
    limit = len(data)  # no string, array or map can claim more entries than there are bytes
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except Exception as exc:  # hostile bytes: whatever the parser raises is the peer's fault
        raise RemoteProtocolError(f"malformed msgpack header: {exc!r}") from exc


def _read_kind(header: Header) -> str:
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        _bad(f"protocol version {_show(version)}, expected {PROTOCOL_VERSION}")
    kind = header.get("k")
    if not isinstance(kind, str) or kind not in _KEYS:
        _bad(f"unknown message kind {_show(kind)}")
    keys, expected = set(header), _KEYS[kind]
    if keys - expected:
        unexpected = sorted(repr(key)[:20] for key in keys - expected)
        _bad(f"{kind} header: unexpected keys {', '.join(unexpected[:5])}")
    if expected - keys:
        _bad(f"{kind} header: missing keys {sorted(expected - keys)}")
    return kind


def _read_share_header(header: Header) -> tuple[int, int, list[_Spec], dict[str, MetaValue]]:
    sender = _uint(header["s"], "sender")
    round_ = _uint(header["r"], "round")
    return sender, round_, _read_specs(header["t"]), _read_meta(header["m"])


def _read_specs(raw: object) -> list[_Spec]:
    if not isinstance(raw, list):
        _bad(f"tensor list is a {type(raw).__name__}")
    if len(raw) > MAX_TENSORS:
        _bad(f"{len(raw)} tensors, more than {MAX_TENSORS}")
    specs = [_read_spec(index, entry) for index, entry in enumerate(raw)]
    if len({spec.name for spec in specs}) != len(specs):
        _bad("duplicate tensor names")
    return specs


def _read_spec(index: int, entry: object) -> _Spec:
    if not isinstance(entry, list) or len(entry) != 4:
        _bad(f"tensor {index} is not [name, dtype, shape, nbytes]")
    name = _text(entry[0], f"tensor {index} name", MAX_NAME)
    dtype = DTYPES.get(entry[1]) if isinstance(entry[1], str) else None
    if dtype is None:
        _bad(f"tensor {name!r}: unknown dtype {_show(entry[1])}")
    shape = _read_shape(name, entry[2])
    nbytes = _uint(entry[3], f"tensor {name!r} nbytes")
    if math.prod(shape) * dtype.itemsize != nbytes:
        _bad(f"tensor {name!r}: shape {list(shape)} of {entry[1]} is not {nbytes} bytes")
    return _Spec(name, dtype, shape, nbytes)


def _read_shape(name: str, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_NDIM:
        _bad(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} ints")
    shape = tuple(_uint(dim, f"tensor {name!r} dimension") for dim in raw)
    if any(dim > MAX_DIM for dim in shape) or math.prod(max(d, 1) for d in shape) > MAX_SPAN:
        _bad(f"tensor {name!r}: shape {list(shape)} is too large")
    return shape


def _read_meta(raw: object) -> dict[str, MetaValue]:
    if not isinstance(raw, dict):
        _bad(f"meta is a {type(raw).__name__}, not a map")
    for key, value in raw.items():
        _text(key, "meta key", MAX_NAME)
        if isinstance(value, list):
            if not all(_is_scalar(item) for item in value):
                _bad(f"meta[{key!r}] must be a flat list of scalars")
        elif not _is_scalar(value):
            _bad(f"meta[{key!r}] is a {type(value).__name__}")
    return raw


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, int | float | str | bytes)


def _read_tensors(body: bytearray, header_end: int, specs: list[_Spec]) -> dict[str, torch.Tensor]:
    starts, end = _layout(header_end - _LEN_BYTES, [spec.nbytes for spec in specs])
    if end != len(body):
        _bad(f"body is {len(body)} bytes but its header describes {end}")
    pos = header_end
    for spec, start in zip(specs, starts, strict=True):
        if any(body[pos:start]):
            _bad(f"nonzero padding before tensor {spec.name!r}")
        pos = start + spec.nbytes
    return {
        spec.name: _tensor_at(body, spec, start) for spec, start in zip(specs, starts, strict=True)
    }


def _tensor_at(body: bytearray, spec: _Spec, start: int) -> torch.Tensor:
    """A tensor over ``body[start:start + spec.nbytes]`` (no copy)."""
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    if spec.dtype == torch.bool:
        raw = torch.frombuffer(body, dtype=torch.uint8, count=spec.nbytes, offset=start)
        if int(raw.max()) > 1:
            _bad(f"tensor {spec.name!r}: bool bytes must be 0 or 1")
        return raw.view(torch.bool).reshape(spec.shape)
    count = spec.nbytes // spec.dtype.itemsize
    return torch.frombuffer(body, dtype=spec.dtype, count=count, offset=start).reshape(spec.shape)


def _read_hello(header: Header) -> Hello:
    return Hello(
        run_id=_text(header["run"], "run_id", MAX_SHORT),
        secret=_text(header["sec"], "secret", MAX_SHORT),
        sender=_uint(header["s"], "sender"),
    )


def _read_register(header: Header) -> Register:
    return Register(
        sender=_uint(header["s"], "sender"),
        host=_text(header["host"], "host", MAX_SHORT, min_len=1),
        port=_port(header["port"]),
    )


def _read_start(header: Header) -> Start:
    raw = header["addr"]
    if not isinstance(raw, list):
        _bad(f"addresses is a {type(raw).__name__}, not a list")
    addresses: dict[int, tuple[str, int]] = {}
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 3:
            _bad("an address is not [node, host, port]")
        node = _uint(entry[0], "node id")
        if node in addresses:
            _bad(f"node {node} has two addresses")
        addresses[node] = (_text(entry[1], "host", MAX_SHORT, min_len=1), _port(entry[2]))
    t0 = header["t0"]
    if not isinstance(t0, float) or not math.isfinite(t0):
        _bad(f"t0 must be a finite float, got {_show(t0)}")
    return Start(addresses=addresses, t0=t0)


def _read_progress(header: Header) -> Progress:
    return Progress(sender=_uint(header["s"], "sender"), round=_uint(header["r"], "round"))


def _read_done(header: Header) -> Done:
    return Done(sender=_uint(header["s"], "sender"))


def _read_failed(header: Header) -> Failed:
    return Failed(
        sender=_uint(header["s"], "sender"),
        traceback=_text(header["tb"], "traceback", MAX_HEADER),
    )


def _read_stop(header: Header) -> Stop:
    return Stop(reason=_text(header["why"], "reason", MAX_HEADER))


_READERS: dict[str, Callable[[Header], Message]] = {
    "hello": _read_hello,
    "register": _read_register,
    "start": _read_start,
    "progress": _read_progress,
    "done": _read_done,
    "failed": _read_failed,
    "stop": _read_stop,
}


def _uint(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _bad(f"{what} must be an int >= 0, got {_show(value)}")
    return value


def _port(value: object) -> int:
    port = _uint(value, "port")
    if not 0 < port < 1 << 16:
        _bad(f"port {port} is not in 1..65535")
    return port


def _text(value: object, what: str, max_len: int, *, min_len: int = 0) -> str:
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        _bad(f"{what} must be a str of {min_len}..{max_len} characters, got {_show(value)}")
    return value


def _show(value: object) -> str:
    """A short description of a received value for an error message (never a deep repr)."""
    if isinstance(value, list | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(reason: str) -> NoReturn:
    raise RemoteProtocolError(reason)
