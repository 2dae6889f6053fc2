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
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, NoReturn

import msgpack
import numpy as np
import torch

from dlactor.messages import (
    PROTOCOL_VERSION,
    Challenge,
    Done,
    Failed,
    Hello,
    Lost,
    Message,
    MetaValue,
    Overlay,
    Payload,
    Progress,
    Proof,
    Register,
    Share,
    Start,
    Stop,
)
from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME, PREFIX_LEN, frame_prefix

__all__ = [
    "ALIGN",
    "DTYPES",
    "KEY_LEN",
    "MAX_DIM",
    "MAX_HEADER",
    "MAX_NAME",
    "MAX_NDIM",
    "MAX_OP",
    "MAX_OVERLAY",
    "MAX_RUN_ID",
    "MAX_SHORT",
    "MAX_SPAN",
    "MAX_TENSORS",
    "NONCE_LEN",
    "SIGNATURE_LEN",
    "WIRE_NAMES",
    "decode",
    "encode",
    "encoded_size",
    "restamp",
]

if sys.byteorder != "little":  # pragma: no cover - tensor bytes go on the wire as they are
    raise ImportError("dlactor.wire.codec supports little-endian hosts only")

#: Largest msgpack header, in bytes: room for the address book of 65,536 processes (about
#: 51 bytes each: id, host, port and a 32-byte public key).
MAX_HEADER = 4 << 20
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
#: Most node ids (and most values) in one overlay message.
MAX_OVERLAY = 1 << 16
#: Longest overlay operation name, in characters.
MAX_OP = 32
#: Largest overlay value (they are degrees, ages and counts).
MAX_OVERLAY_VALUE = (1 << 63) - 1
#: Longest host name, traceback line or other short text, in characters.
MAX_SHORT = 256
#: Longest run id in a hello, in characters: 64 of them, even 4 bytes each in UTF-8, keep
#: a hello within the handshake's 512-byte frame limit.
MAX_RUN_ID = 64
#: Every tensor starts at a body offset that is a multiple of this.
ALIGN = 8
#: Bytes of a handshake nonce, of an Ed25519 signature and of an Ed25519 public key.
NONCE_LEN, SIGNATURE_LEN, KEY_LEN = 32, 64, 32

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
#: The reverse of DTYPES: each supported torch dtype's name on the wire.
WIRE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
#: The numpy dtype a received tensor is first viewed as: the same one where numpy has it,
#: else one of the same size (bfloat16 as int16; bool as uint8, checked, then viewed).
_NUMPY_OF: dict[torch.dtype, np.dtype[Any]] = {
    torch.float32: np.dtype("<f4"),
    torch.float64: np.dtype("<f8"),
    torch.float16: np.dtype("<f2"),
    torch.bfloat16: np.dtype("<i2"),
    torch.uint8: np.dtype("u1"),
    torch.int8: np.dtype("i1"),
    torch.int16: np.dtype("<i2"),
    torch.int32: np.dtype("<i4"),
    torch.int64: np.dtype("<i8"),
    torch.bool: np.dtype("u1"),
}
_ZEROS = bytes(ALIGN)
_LEN_BYTES = 4

Buffer = bytes | memoryview
#: A received frame body: writable, so that the tensors viewing it are writable too.
Body = bytearray | memoryview
Header = dict[Any, Any]

#: Header keys of each kind, ``v`` and ``k`` included.
_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset({"v", "k", *fields})
    for kind, fields in {
        "hello": ("run", "s", "to", "n"),
        "challenge": ("s", "n", "sig"),
        "proof": ("sig",),
        "share": ("s", "r", "t", "m"),
        "overlay": ("s", "r", "op", "n", "x"),
        "register": ("s", "host", "port"),
        "start": ("addr", "t0"),
        "progress": ("s", "r"),
        "done": ("s",),
        "failed": ("s", "tb"),
        "stop": ("why",),
        "lost": ("s", "r", "why"),
    }.items()
}
#: Header keys a kind may carry or not: ``c``, a message's times on an emulated network's
#: clock (``[t_first, t_last]``, seconds), only in a run with a ``[network]`` table; ``ak``,
#: a node's X25519 public key for secure aggregation, only when its sharing masks.
_OPTIONAL: dict[str, frozenset[str]] = {
    "share": frozenset({"c"}),
    "overlay": frozenset({"c"}),
    "register": frozenset({"ak"}),
}
#: The latest time on an emulated network's clock a message may carry (about 31.7 years).
MAX_CLOCK = 1e9
_KIND_OF: dict[type, str] = {
    Hello: "hello",
    Challenge: "challenge",
    Proof: "proof",
    Share: "share",
    Overlay: "overlay",
    Register: "register",
    Start: "start",
    Progress: "progress",
    Done: "done",
    Failed: "failed",
    Stop: "stop",
    Lost: "lost",
}


#: dtypes whose tensors ``Tensor.numpy()`` can view as they are.
_VIA_NUMPY = frozenset(DTYPES.values()) - {torch.bfloat16}


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


#: A stamp's tail in a packed header: ``"c"`` is the last key, its value an array of two
#: msgpack float64s (0xcb and 8 big-endian bytes each).
_STAMP_TAIL = 18
_FLOAT64 = 0xCB


def restamp(buffers: list[Buffer], clock: tuple[float, float]) -> list[Buffer]:
    """The frame ``buffers`` (``encode`` of a Share or Overlay that has a ``clock``) with
    ``clock`` instead: the header's stamp rewritten in a copy of the first buffer, the tensor
    buffers shared. A send to k peers encodes its message once, not k times."""
    t_first, t_last = clock
    if not (math.isfinite(t_first) and math.isfinite(t_last) and 0 <= t_first <= t_last):
        raise LocalProtocolError(f"cannot stamp a message with {clock}")
    if t_last > MAX_CLOCK:
        raise LocalProtocolError(f"cannot stamp a message with {clock}")
    head = bytearray(buffers[0])
    end = (
        PREFIX_LEN + _LEN_BYTES + int.from_bytes(head[PREFIX_LEN : PREFIX_LEN + _LEN_BYTES], "big")
    )
    start = end - _STAMP_TAIL
    if head[start] != _FLOAT64 or head[start + 9] != _FLOAT64:
        raise LocalProtocolError("cannot restamp a frame whose header does not end in a stamp")
    head[start:end] = struct.pack(">BdBd", _FLOAT64, t_first, _FLOAT64, t_last)
    return [bytes(head), *buffers[1:]]


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
    if type(payload.tensors) is not dict and not isinstance(payload.tensors, Mapping):
        raise LocalProtocolError("cannot encode share: payload.tensors is not a mapping")
    if len(payload.tensors) > MAX_TENSORS:
        raise LocalProtocolError(f"cannot encode share: more than {MAX_TENSORS} tensors")
    specs, views = [], []
    for name, tensor in payload.tensors.items():
        spec, view = _tensor_to_wire(name, tensor)
        specs.append(spec)
        views.append(view)
    meta = payload.meta
    if type(meta) is not dict and isinstance(meta, Mapping):
        meta = dict(meta)  # msgpack packs dicts only
    header = {"s": msg.sender, "r": msg.round, "t": specs, "m": meta}
    if msg.clock is not None:
        header["c"] = list(msg.clock)
    return header, views


def _tensor_to_wire(name: object, tensor: object) -> tuple[list[Any], memoryview]:
    """The header entry of one tensor and a byte view of its storage (no copy if contiguous)."""
    if not isinstance(tensor, torch.Tensor):
        raise LocalProtocolError(f"cannot encode tensor {name!r}: got {type(tensor).__name__}")
    wire = WIRE_NAMES.get(tensor.dtype)
    if wire is None:
        supported = ", ".join(str(dtype) for dtype in DTYPES.values())
        raise LocalProtocolError(
            f"cannot encode tensor {name!r}: dtype {tensor.dtype} is not one of {supported}"
        )
    if tensor.layout != torch.strided:
        raise LocalProtocolError(f"cannot encode tensor {name!r}: layout {tensor.layout}")
    try:
        view = _bytes_of(tensor)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode tensor {name!r}: {exc}") from exc
    return [name, wire, list(tensor.shape), view.nbytes], view


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A byte view of a tensor's elements in C order, over its own storage when it can be."""
    if tensor.numel() == 0:
        return memoryview(b"")
    if (
        tensor.dtype in _VIA_NUMPY
        and tensor.is_cpu
        and tensor.is_contiguous()
        and not tensor.is_neg()
    ):
        # the common case, at a third of the cost of the general chain below
        plain = tensor.detach() if tensor.requires_grad else tensor
        return plain.numpy().data.cast("B")
    flat = tensor.detach().resolve_neg().cpu().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data


def _hello_fields(msg: Hello) -> Header:
    return {"run": msg.run_id, "s": msg.sender, "to": msg.target, "n": msg.nonce}


def _challenge_fields(msg: Challenge) -> Header:
    return {"s": msg.sender, "n": msg.nonce, "sig": msg.signature}


def _proof_fields(msg: Proof) -> Header:
    return {"sig": msg.signature}


def _overlay_fields(msg: Overlay) -> Header:
    header = {"s": msg.sender, "r": msg.round, "op": msg.op, "n": msg.nodes, "x": msg.values}
    if msg.clock is not None:
        header["c"] = list(msg.clock)
    return header


def _register_fields(msg: Register) -> Header:
    header: Header = {"s": msg.sender, "host": msg.host, "port": msg.port}
    if msg.agreement:
        header["ak"] = msg.agreement
    return header


def _start_fields(msg: Start) -> Header:
    if not isinstance(msg.addresses, Mapping):
        raise LocalProtocolError("cannot encode start: addresses is not a mapping")
    if not set(msg.keys) | set(msg.agreement) <= set(msg.addresses):
        raise LocalProtocolError("cannot encode start: a key for a node without an address")
    triples = []
    for node, where in msg.addresses.items():
        if not isinstance(where, tuple | list) or len(where) != 2:
            raise LocalProtocolError(
                f"cannot encode start: address of {node!r} is not (host, port)"
            )
        entry = [node, where[0], where[1], msg.keys.get(node, b"")]
        if node in msg.agreement:
            entry.append(msg.agreement[node])
        triples.append(entry)
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


def _lost_fields(msg: Lost) -> Header:
    return {"s": msg.node, "r": msg.round, "why": msg.reason}


_WRITERS: dict[str, Callable[[Any], Header]] = {
    "hello": _hello_fields,
    "challenge": _challenge_fields,
    "proof": _proof_fields,
    "overlay": _overlay_fields,
    "register": _register_fields,
    "start": _start_fields,
    "progress": _progress_fields,
    "done": _done_fields,
    "failed": _failed_fields,
    "stop": _stop_fields,
    "lost": _lost_fields,
}


def _check_outgoing(header: Header) -> None:
    """Validate an outgoing header with the decoder's own rules."""
    try:
        kind = _read_kind(header)
        if kind == "share":
            _read_share_header(header)
            _read_clock(header.get("c"))
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


def decode(body: Body) -> Message:
    """The message in one frame body (as returned by ``FrameDecoder.next_frame``).

    ``body`` is a ``bytearray`` or a writable, contiguous byte ``memoryview`` (a read-only
    buffer is a TypeError: tensors over it would not be writable). Tensors are views of
    ``body`` (no copy). Any malformed input raises ``RemoteProtocolError``.
    """
    _check_body_type(body)
    header, header_end = _read_header(body)
    kind = _read_kind(header)
    if kind == "share":
        sender, round_, specs, meta = _read_share_header(header)
        tensors = _read_tensors(body, header_end, specs)
        payload = Payload(tensors=tensors, meta=meta)
        return Share(sender, round_, payload, _read_clock(header.get("c")))
    if len(body) != header_end:
        _bad(f"{len(body) - header_end} bytes after the header of a {kind} message")
    return _READERS[kind](header)


def _check_body_type(body: object) -> None:
    if type(body) is bytearray:
        return
    if (
        type(body) is memoryview
        and not body.readonly
        and body.format == "B"
        and body.ndim == 1
        and body.c_contiguous
    ):
        return
    raise TypeError(
        "decode() needs a frame body: a bytearray or a writable, contiguous byte memoryview, "
        f"got {type(body).__name__}{' (read-only)' if getattr(body, 'readonly', False) else ''}"
    )


def _read_header(body: Body) -> tuple[Header, int]:
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
    expected = _KEYS[kind]
    if header.keys() == expected:
        return kind
    keys = set(header)
    extra = keys - expected - _OPTIONAL.get(kind, frozenset())
    if extra:
        unexpected = sorted(repr(key)[:20] for key in extra)
        _bad(f"{kind} header: unexpected keys {', '.join(unexpected[:5])}")
    if expected - keys:
        _bad(f"{kind} header: missing keys {sorted(expected - keys)}")
    return kind


def _read_clock(raw: object) -> tuple[float, float] | None:
    """A message's ``[t_first, t_last]`` on an emulated network's clock: two finite floats,
    0 <= t_first <= t_last <= MAX_CLOCK (or absent: None)."""
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(t, float) and math.isfinite(t) for t in raw)
        or not 0.0 <= raw[0] <= raw[1] <= MAX_CLOCK
    ):
        _bad(f"clock must be [t_first, t_last], 0 <= t_first <= t_last <= {MAX_CLOCK:g}")
    return raw[0], raw[1]


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
    # Runs for every tensor of every share, sent (``_check_outgoing``) and received: error
    # messages are only formatted on failure.
    if not isinstance(entry, list) or len(entry) != 4:
        _bad(f"tensor {index} is not [name, dtype, shape, nbytes]")
    name, wire, raw_shape, nbytes = entry
    if not isinstance(name, str) or len(name) > MAX_NAME:
        _text(name, f"tensor {index} name", MAX_NAME)  # raises, saying what is wrong
    dtype = DTYPES.get(wire) if isinstance(wire, str) else None
    if dtype is None:
        _bad(f"tensor {name!r}: unknown dtype {_show(wire)}")
    shape = _read_shape(name, raw_shape)
    if not _is_uint(nbytes):
        _uint(nbytes, f"tensor {name!r} nbytes")  # raises
    if math.prod(shape) * dtype.itemsize != nbytes:
        _bad(f"tensor {name!r}: shape {list(shape)} of {wire} is not {nbytes} bytes")
    return _Spec(name, dtype, shape, nbytes)


def _read_shape(name: str, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_NDIM:
        _bad(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} ints")
    span = 1
    for dim in raw:
        if not _is_uint(dim):
            _uint(dim, f"tensor {name!r} dimension")  # raises
    for dim in raw:
        if dim > MAX_DIM:
            span = MAX_SPAN + 1
            break
        span *= dim or 1
    if span > MAX_SPAN:
        _bad(f"tensor {name!r}: shape {list(raw)} is too large")
    return tuple(raw)


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


def _read_tensors(body: Body, header_end: int, specs: list[_Spec]) -> dict[str, torch.Tensor]:
    starts, end = _layout(header_end - _LEN_BYTES, [spec.nbytes for spec in specs])
    if end != len(body):
        _bad(f"body is {len(body)} bytes but its header describes {end}")
    tensors = {}
    pos = header_end
    for spec, start in zip(specs, starts, strict=True):
        if start != pos and any(body[pos:start]):
            _bad(f"nonzero padding before tensor {spec.name!r}")
        tensors[spec.name] = _tensor_at(body, spec, start)
        pos = start + spec.nbytes
    return tensors


def _tensor_at(body: Body, spec: _Spec, start: int) -> torch.Tensor:
    """A tensor over ``body[start:start + spec.nbytes]`` (no copy).

    Built as a numpy view then ``torch.from_numpy``: a third cheaper than ``torch.frombuffer``
    and ``reshape``, which counts for models of many small tensors. The tensor holds the
    array, which holds ``body``.
    """
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    as_numpy = _NUMPY_OF[spec.dtype]
    count = spec.nbytes // as_numpy.itemsize
    array = np.frombuffer(body, dtype=as_numpy, count=count, offset=start)
    if spec.dtype == torch.bool and int(array.max()) > 1:
        _bad(f"tensor {spec.name!r}: bool bytes must be 0 or 1")
    if len(spec.shape) != 1:  # a 1-d array already has its shape
        array = array.reshape(spec.shape)
    tensor = torch.from_numpy(array)
    return tensor if tensor.dtype == spec.dtype else tensor.view(spec.dtype)


def _read_hello(header: Header) -> Hello:
    return Hello(
        run_id=_text(header["run"], "run_id", MAX_RUN_ID),
        sender=_uint(header["s"], "sender"),
        target=_uint(header["to"], "target"),
        nonce=_bin(header["n"], "nonce", NONCE_LEN),
    )


def _read_challenge(header: Header) -> Challenge:
    return Challenge(
        sender=_uint(header["s"], "sender"),
        nonce=_bin(header["n"], "nonce", NONCE_LEN),
        signature=_bin(header["sig"], "signature", SIGNATURE_LEN),
    )


def _read_proof(header: Header) -> Proof:
    return Proof(signature=_bin(header["sig"], "signature", SIGNATURE_LEN))


def _read_overlay(header: Header) -> Overlay:
    return Overlay(
        sender=_uint(header["s"], "sender"),
        round=_uint(header["r"], "round"),
        op=_text(header["op"], "op", MAX_OP, min_len=1),
        nodes=_uints(header["n"], "nodes"),
        values=_uints(header["x"], "values"),
        clock=_read_clock(header.get("c")),
    )


def _uints(raw: object, what: str) -> list[int]:
    """A list of at most MAX_OVERLAY ints in 0..MAX_OVERLAY_VALUE."""
    if not isinstance(raw, list):
        _bad(f"{what} is a {_show(raw)}, not a list")
    if len(raw) > MAX_OVERLAY:
        _bad(f"{what} has {len(raw)} entries, at most {MAX_OVERLAY} allowed")
    for value in raw:
        if not _is_uint(value) or value > MAX_OVERLAY_VALUE:
            _bad(f"{what} must hold ints in 0..2**63-1, got {_show(value)}")
    return raw


def _read_register(header: Header) -> Register:
    return Register(
        sender=_uint(header["s"], "sender"),
        host=_text(header["host"], "host", MAX_SHORT, min_len=1),
        port=_port(header["port"]),
        agreement=_bin(header["ak"], "agreement key", KEY_LEN) if "ak" in header else b"",
    )


def _read_start(header: Header) -> Start:
    raw = header["addr"]
    if not isinstance(raw, list):
        _bad(f"addresses is a {type(raw).__name__}, not a list")
    addresses: dict[int, tuple[str, int]] = {}
    keys: dict[int, bytes] = {}
    agreement: dict[int, bytes] = {}
    for entry in raw:
        if not isinstance(entry, list) or len(entry) not in (4, 5):
            _bad("an address is not [node, host, port, public key(, agreement key)]")
        node = _uint(entry[0], "node id")
        if node in addresses:
            _bad(f"node {node} has two addresses")
        addresses[node] = (_text(entry[1], "host", MAX_SHORT, min_len=1), _port(entry[2]))
        if entry[3] != b"":
            keys[node] = _bin(entry[3], "public key", KEY_LEN)
        if len(entry) == 5:
            agreement[node] = _bin(entry[4], "agreement key", KEY_LEN)
    t0 = header["t0"]
    if not isinstance(t0, float) or not math.isfinite(t0):
        _bad(f"t0 must be a finite float, got {_show(t0)}")
    return Start(addresses=addresses, t0=t0, keys=keys, agreement=agreement)


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


def _read_lost(header: Header) -> Lost:
    return Lost(
        node=_uint(header["s"], "node"),
        round=_uint(header["r"], "round"),
        reason=_text(header["why"], "reason", MAX_HEADER),
    )


_READERS: dict[str, Callable[[Header], Message]] = {
    "hello": _read_hello,
    "challenge": _read_challenge,
    "proof": _read_proof,
    "overlay": _read_overlay,
    "register": _read_register,
    "start": _read_start,
    "progress": _read_progress,
    "done": _read_done,
    "failed": _read_failed,
    "stop": _read_stop,
    "lost": _read_lost,
}


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _uint(value: object, what: str) -> int:
    if not _is_uint(value):
        _bad(f"{what} must be an int >= 0, got {_show(value)}")
    return value  # type: ignore[return-value]


def _port(value: object) -> int:
    port = _uint(value, "port")
    if not 0 < port < 1 << 16:
        _bad(f"port {port} is not in 1..65535")
    return port


def _text(value: object, what: str, max_len: int, *, min_len: int = 0) -> str:
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        _bad(f"{what} must be a str of {min_len}..{max_len} characters, got {_show(value)}")
    return value


def _bin(value: object, what: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        _bad(f"{what} must be {length} bytes (msgpack bin), got {_show(value)}")
    return value


def _show(value: object) -> str:
    """A short description of a received value for an error message (never a deep repr)."""
    if isinstance(value, list | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(reason: str) -> NoReturn:
    raise RemoteProtocolError(reason)
