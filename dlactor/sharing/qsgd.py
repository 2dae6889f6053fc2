"""Stochastic uniform quantization to b bits (QSGD-style), unbiased for every b in 1..8.

A vector is cut into buckets of ``bucket_size`` consecutive elements (``None``: one bucket,
the whole vector). Each bucket keeps its own range: ``lo = min``, ``step = (max - lo) /
(2**b - 1)``, and each element becomes the code ``floor((x - lo) / step + u)`` with
``u ~ U[0, 1)``, clipped to ``[0, 2**b - 1]``. Rounding up with probability equal to the
fractional part makes ``lo + code * step`` an unbiased estimate of ``x``, with error below one
step and variance at most ``step**2 / 4`` per element. A constant bucket gets step 0 and codes 0
(and is exact).

On the wire (``to_wire``) the codes are bit-packed (``dlactor.sharing.bitpack``) and each
bucket sends ``lo`` and ``step`` as float32: b/8 bytes per element plus 8 bytes per bucket,
e.g. 0.5 + 8/512 ~ 0.52 bytes per element for b = 4 and buckets of 512 (float32 takes 4).
Smaller buckets track the local range better (smaller steps, smaller error) at 8 bytes each.

Everything is whole-tensor torch/numpy work: the vector is padded to a whole number of buckets
(with its last element, so no bucket's range changes) and viewed as [buckets, bucket_size].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from dlactor.sharing.bitpack import pack_bits, packed_size, unpack_bits
from dlactor.wire.errors import RemoteProtocolError

__all__ = [
    "CODES",
    "LO",
    "STEP",
    "Quantized",
    "dequantize",
    "from_wire",
    "num_buckets",
    "quantize",
    "to_wire",
    "wire_layout",
]

#: Names of the tensors ``to_wire`` returns: the packed codes, each bucket's lo and step.
CODES, LO, STEP = "codes", "lo", "step"


def _check_params(bits: int, bucket_size: int | None, count: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
    if bucket_size is not None and bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1 or None, got {bucket_size}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")


def num_buckets(count: int, bucket_size: int | None) -> int:
    """How many buckets ``count`` elements make: ceil(count / bucket_size); with ``None``, one
    (none for an empty vector)."""
    if count == 0:
        return 0
    return 1 if bucket_size is None else -(-count // bucket_size)


@dataclass(frozen=True, eq=False)
class Quantized:
    """A quantized vector of ``count`` elements: ``codes[i]`` (uint8, < 2**bits) stands for
    ``lo[k] + codes[i] * step[k]`` where ``k`` is the bucket of element ``i``."""

    codes: np.ndarray  # uint8 [count]
    lo: torch.Tensor  # float32 [buckets]
    step: torch.Tensor  # float32 [buckets]
    bits: int
    bucket_size: int | None
    count: int

    def __post_init__(self) -> None:
        _check_params(self.bits, self.bucket_size, self.count)
        if self.codes.dtype != np.uint8 or self.codes.shape != (self.count,):
            raise ValueError(
                f"codes must be uint8 [{self.count}], got {self.codes.dtype} "
                f"{list(self.codes.shape)}"
            )
        buckets = num_buckets(self.count, self.bucket_size)
        for name, t in ((LO, self.lo), (STEP, self.step)):
            if t.dtype != torch.float32 or tuple(t.shape) != (buckets,):
                raise ValueError(
                    f"{name} must be float32 [{buckets}], got {t.dtype} {list(t.shape)}"
                )

    @property
    def levels(self) -> int:
        """The largest code, 2**bits - 1."""
        return (1 << self.bits) - 1


def _padded(flat: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """``flat`` extended to ``size`` elements with ``fill`` (a copy only if it must grow)."""
    pad = size - flat.numel()
    return torch.cat([flat, fill.expand(pad)]) if pad else flat


def quantize(
    x: torch.Tensor, bits: int, bucket_size: int | None, generator: torch.Generator
) -> Quantized:
    """``x`` (any shape, read flattened) quantized stochastically to ``bits`` bits per element,
    with the random rounding drawn from ``generator`` (a CPU generator).

    ValueError for bits outside 1..8, a bucket_size below 1, or a non-finite ``x`` or range
    (a bucket's max - min must fit in float32).
    """
    flat = x.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    count = flat.numel()
    _check_params(bits, bucket_size, count)
    buckets = num_buckets(count, bucket_size)
    if count == 0:
        empty = torch.empty(0, dtype=torch.float32)
        return Quantized(np.empty(0, np.uint8), empty, empty.clone(), bits, bucket_size, 0)
    width = count if bucket_size is None else bucket_size
    rows = _padded(flat, buckets * width, flat[-1]).view(buckets, width)
    lo, hi = torch.aminmax(rows, dim=1)
    levels = (1 << bits) - 1
    step = (hi - lo) / levels
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(step).all())):
        raise ValueError("cannot quantize: x has non-finite values or a range beyond float32")
    # A constant bucket has x - lo == 0 everywhere: divided by 1 instead of 0, it gets codes 0.
    # (Division, not multiplication by 1/step, which overflows for subnormal steps.)
    divisor = torch.where(step > 0, step, 1.0)
    scaled = (rows - lo[:, None]).div_(divisor[:, None])
    noise = torch.rand(rows.shape, generator=generator, dtype=torch.float32)
    codes = scaled.add_(noise).floor_().clamp_(0, levels).to(torch.uint8)
    return Quantized(codes.reshape(-1)[:count].numpy(), lo, step, bits, bucket_size, count)


def dequantize(q: Quantized) -> torch.Tensor:
    """The float32 vector [count] that ``q`` stands for: ``lo + code * step`` per bucket."""
    if q.count == 0:
        return torch.empty(0, dtype=torch.float32)
    buckets = num_buckets(q.count, q.bucket_size)
    width = q.count if q.bucket_size is None else q.bucket_size
    codes = torch.from_numpy(q.codes).to(torch.float32)
    rows = _padded(codes, buckets * width, torch.zeros((), dtype=torch.float32)).view(
        buckets, width
    )
    return torch.addcmul(q.lo[:, None], rows, q.step[:, None]).reshape(-1)[: q.count]


def wire_layout(
    bits: int, bucket_size: int | None, count: int
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors ``to_wire`` makes for these parameters: name -> (dtype, shape), the form
    ``dlactor.sharing.ops.check_layout`` takes."""
    _check_params(bits, bucket_size, count)
    buckets = num_buckets(count, bucket_size)
    return {
        CODES: (torch.uint8, (packed_size(count, bits),)),
        LO: (torch.float32, (buckets,)),
        STEP: (torch.float32, (buckets,)),
    }


def to_wire(q: Quantized) -> dict[str, torch.Tensor]:
    """``q`` as payload tensors: ``codes`` bit-packed (uint8), ``lo`` and ``step`` (float32).
    The receiver must know ``bits``, ``bucket_size`` and ``count`` (they are not sent)."""
    return {CODES: torch.from_numpy(pack_bits(q.codes, q.bits)), LO: q.lo, STEP: q.step}


def from_wire(
    tensors: Mapping[str, torch.Tensor], bits: int, bucket_size: int | None, count: int
) -> Quantized:
    """The ``Quantized`` a peer sent as ``to_wire(q)`` (other names in ``tensors`` are ignored).

    ``bits``, ``bucket_size`` and ``count`` are what this side expects (ValueError if invalid).
    RemoteProtocolError if a tensor is missing or has the wrong dtype or shape (which covers the
    number of buckets), if the packed codes' padding bits are set, or if a bucket's lo or step
    is not finite, its step is negative, or its top value ``lo + (2**bits - 1) * step``
    overflows float32: dequantizing what passes is finite.
    """
    layout = wire_layout(bits, bucket_size, count)
    for name, (dtype, shape) in layout.items():
        if name not in tensors:
            raise RemoteProtocolError(f"quantized payload has no tensor {name!r}")
        t = tensors[name]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise RemoteProtocolError(
                f"quantized tensor {name!r} is {t.dtype} {list(t.shape)}, "
                f"expected {dtype} {list(shape)}"
            )
    lo = tensors[LO].detach().cpu()
    step = tensors[STEP].detach().cpu()
    top = lo + step * ((1 << bits) - 1)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(top).all())):
        raise RemoteProtocolError("a quantization bucket's lo or top value is not finite")
    if bool((step < 0).any()):  # NaN steps already made ``top`` non-finite
        raise RemoteProtocolError("a quantization bucket has a negative step")
    packed = np.ascontiguousarray(tensors[CODES].detach().cpu().numpy())
    codes = unpack_bits(packed, bits, count)
    return Quantized(codes, lo.contiguous(), step.contiguous(), bits, bucket_size, count)
