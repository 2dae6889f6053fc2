"""Lossless payload compression (lz4 or zstd) around any sharing strategy.

The strategy's payload tensors are laid end to end, compressed as one block and sent as a
single ``z`` byte tensor; their names, dtypes and shapes travel in the meta (``z_names``,
``z_dtypes``, ``z_ndims``, ``z_dims``), the strategy's own meta beside them. Receivers
decompress into at most the size the meta declares (itself bounded by ``max_size``), so a
peer's decompression bomb costs nothing, then rebuild the tensors and hand the strategy the
payload it would have got without compression. The recorded bytes are the compressed ones:
what went on the wire.

Float parameters compress little (their low mantissa bits look random); indices, bitmasks
and low-bit codes compress more. The option is there to measure that, per strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dlactor.context import RoundContext
from dlactor.messages import MetaValue, Payload
from dlactor.sharing.base import Checked, ChecksPayloads, Sharing
from dlactor.sharing.lossless_frames import Codec, compress, decompress
from dlactor.wire.codec import DTYPES, WIRE_NAMES
from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Lossless", "pack", "unpack"]

BLOB = "z"
_KEYS = ("z_names", "z_dtypes", "z_ndims", "z_dims")


def pack(payload: Payload, codec: Codec) -> Payload:
    """One compressed block for all of ``payload``'s tensors."""
    if any(key.startswith("z_") for key in payload.meta):
        raise LocalProtocolError("a compressed payload reserves the meta keys z_*")
    names = sorted(payload.tensors)
    tensors = [payload.tensors[name].detach().contiguous() for name in names]
    raw = b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors)
    meta: dict[str, MetaValue] = dict(payload.meta)
    meta["z_names"] = list(names)
    meta["z_dtypes"] = [WIRE_NAMES[t.dtype] for t in tensors]
    meta["z_ndims"] = [t.dim() for t in tensors]
    meta["z_dims"] = [int(d) for t in tensors for d in t.shape]
    blob = np.frombuffer(compress(raw, codec), dtype=np.uint8).copy()
    return Payload({BLOB: torch.from_numpy(blob)}, meta)


def _int_list(meta: Mapping[str, Any], key: str) -> list[int]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise RemoteProtocolError(f"compressed payload: {key} must be a list of ints >= 0")
    return value


def _str_list(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RemoteProtocolError(f"compressed payload: {key} must be a list of strings")
    return value


def unpack(payload: Payload, codec: Codec, max_size: int) -> Payload:
    """The payload ``pack`` compressed; RemoteProtocolError for anything malformed."""
    names, dtypes = _str_list(payload.meta, "z_names"), _str_list(payload.meta, "z_dtypes")
    if any(d not in DTYPES for d in dtypes):
        raise RemoteProtocolError("compressed payload: z_dtypes must be wire dtype names")
    ndims, dims = _int_list(payload.meta, "z_ndims"), _int_list(payload.meta, "z_dims")
    if any(d >= 1 << 32 for d in dims) or any(n > 8 for n in ndims):
        raise RemoteProtocolError("compressed payload: a shape the wire format does not allow")
    if not len(names) == len(dtypes) == len(ndims) or sum(ndims) != len(dims):
        raise RemoteProtocolError("compressed payload: names, dtypes and shapes do not match")
    if len(set(names)) != len(names) or set(payload.tensors) != {BLOB}:
        raise RemoteProtocolError("compressed payload: one z tensor and unique names expected")
    shapes, start = [], 0
    for ndim in ndims:
        shapes.append(tuple(dims[start : start + ndim]))
        start += ndim
    sizes = [math.prod(s) * DTYPES[d].itemsize for s, d in zip(shapes, dtypes, strict=True)]
    if sum(sizes) > max_size:
        raise RemoteProtocolError(f"compressed payload declares {sum(sizes)} bytes > {max_size}")
    blob = payload.tensors[BLOB]
    if blob.dtype != torch.uint8 or blob.dim() != 1:
        raise RemoteProtocolError("compressed payload: z must be a 1-D uint8 tensor")
    raw = decompress(blob.numpy(), codec, max_size=sum(sizes))
    if len(raw) != sum(sizes):
        raise RemoteProtocolError(f"compressed payload: {len(raw)} bytes, declared {sum(sizes)}")
    data = np.frombuffer(raw, dtype=np.uint8)
    tensors, offset = {}, 0
    for name, dtype, shape, size in zip(names, dtypes, shapes, sizes, strict=True):
        if size == 0:
            tensors[name] = torch.empty(shape, dtype=DTYPES[dtype])
            continue
        # a copy per tensor: aligned for its dtype, and writable
        chunk = torch.from_numpy(data[offset : offset + size].copy())
        tensors[name] = chunk.view(DTYPES[dtype]).reshape(shape)
        offset += size
    meta = {k: v for k, v in payload.meta.items() if k not in _KEYS}
    return Payload(tensors, meta)


class Lossless:
    """``inner``'s payloads, compressed with ``codec`` on the wire."""

    checkpointed = ("inner",)  # the wrapped strategy's state (compression keeps none)

    def __init__(self, inner: Sharing, codec: Codec, max_size: int) -> None:
        self.inner, self.codec, self.max_size = inner, codec, max_size
        self._sent: Payload | None = None
        self._packed: Payload | None = None  # ``_sent`` as ``outgoing`` returned it
        self._checked: Checked[Payload] = Checked()  # unpacked on arrival

    async def outgoing(self, ctx: RoundContext) -> Payload:
        self._sent = await self.inner.outgoing(ctx)
        self._packed = pack(self._sent, self.codec)
        return self._packed

    def as_made(self, payload: Payload) -> Payload:
        """``payload`` as the wrapped strategy made it, if it is this strategy's last
        outgoing payload (its own checks judge that, not the compressed bytes); else as
        it is (a payload the algorithm made itself)."""
        if payload is self._packed and self._sent is not None:
            return self._sent
        return payload

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        inner = self._checked.keep(payload, unpack(payload, self.codec, self.max_size))
        if isinstance(self.inner, ChecksPayloads):
            self.inner.check(model, inner)

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        ctx.sent = self._sent  # what the strategy itself made this round
        plain = {j: self.unpacked(p) for j, p in received.items()}
        self._checked.clear()
        await self.inner.aggregate(ctx, plain)

    def forget(self) -> None:
        """Drop what was unpacked on arrival (``aggregate`` does it too): for a caller that
        aggregates the unpacked payloads itself (a FedAvg server)."""
        self._checked.clear()

    def unpacked(self, payload: Payload) -> Payload:
        """``payload`` as the strategy made it (what ``check`` unpacked, when it did)."""
        inner = self._checked.take(payload)
        return inner if inner is not None else unpack(payload, self.codec, self.max_size)
