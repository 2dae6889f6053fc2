"""Quantized sharing: each round a node sends its whole model stochastically quantized to
``bits`` bits (QSGD-style, unbiased, per-bucket scales: ``dlactor.sharing.qsgd``), bit-packed.
It keeps its own model at full precision and averages in the neighbours' dequantized ones."""

from __future__ import annotations

from dlactor.sharing.lossy import Quantizer
from dlactor.sharing.partial import PartialSharing

__all__ = ["QuantizeSharing"]


class QuantizeSharing(PartialSharing):
    def __init__(self, *, bits: int, bucket_size: int | None, seed: int) -> None:
        super().__init__(Quantizer(bits=bits, bucket_size=bucket_size, seed=seed))
