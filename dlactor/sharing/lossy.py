"""Compressors: a flat vector to a small payload and back, for the sparse strategies.

A compressor turns the vector a node shares (its model for random, top-k and quantize
sharing; the difference to its public estimate for CHOCO-SGD) into a :class:`Payload`, and
tells the sender what a receiver will decode from it (a :class:`Part`), so both sides apply
exactly the same numbers. Receivers check every payload on arrival (``decode`` raises
RemoteProtocolError for anything a peer could get wrong).

=============  ==========================================  ===================================
compressor     what travels                                bytes for n parameters
=============  ==========================================  ===================================
``RandomK``    k values and the 64-bit seed of their mask   4k + 9 (the seed, in the header)
``TopK``       k values and their indices                   4k + min(varint gaps, n/8)
``Quantizer``  every value as b bits, per-bucket scales     b*n/8 + 8 per bucket
=============  ==========================================  ===================================

with ``k = budget * n`` (per layer for a per-layer top-k). At budget 10% the varint gaps of
a spread-out index set take about one byte each, so a top-k message is about 12.5% of full
sharing (10% values + 2.5% indices); a random-k message is 10% plus a few bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dlactor.messages import Payload
from dlactor.sharing import qsgd
from dlactor.sharing.indices import decode_indices, encode_indices
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["Compressor", "Part", "Quantizer", "RandomK", "TopK", "budget_count", "mask_seed"]

VALUES, INDEX = "values", "idx"
#: Largest seed a random-k mask takes (it travels as a msgpack int).
MAX_SEED = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Part:
    """What one message says about a flat vector: ``values`` at ``indices`` (sorted, unique),
    or at every position when ``indices`` is None."""

    indices: torch.Tensor | None
    values: torch.Tensor

    def dense(self, n: int) -> torch.Tensor:
        """As a length-``n`` vector, zero where nothing was sent."""
        if self.indices is None:
            return self.values
        out = torch.zeros(n, dtype=self.values.dtype)
        out[self.indices] = self.values
        return out


class Compressor(Protocol):
    def encode(
        self, vector: torch.Tensor, round: int, score: torch.Tensor | None = None
    ) -> tuple[Payload, Part]:
        """The payload for ``vector`` in ``round``, and what a receiver decodes from it.
        ``score`` ranks coordinates for compressors that choose them (default: |vector|)."""
        ...

    def decode(self, payload: Payload, n: int) -> Part:
        """What a peer's payload says; RemoteProtocolError if it is not a payload of this
        compressor for ``n`` parameters."""
        ...


def budget_count(n: int, budget: float) -> int:
    """Coordinates a budget sends out of ``n``: ``round(budget * n)``, at least 1 (n > 0)."""
    return min(n, max(1, round(budget * n))) if n else 0


def mask_seed(seed: int, node: int, round: int) -> int:
    """The seed of a node's random mask in a round: independent streams, same everywhere."""
    words = np.random.SeedSequence(entropy=seed, spawn_key=(node, round)).generate_state(2)
    return (int(words[0]) << 31 ^ int(words[1])) & MAX_SEED


def random_indices(n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct indices in [0, n), sorted, a function of ``seed`` only."""
    chosen = np.random.default_rng(seed).choice(n, size=k, replace=False)
    return torch.from_numpy(np.sort(chosen).astype(np.int64))


def _values(payload: Payload, count: int, names: set[str]) -> torch.Tensor:
    if set(payload.tensors) != names:
        raise RemoteProtocolError(
            f"payload has {sorted(payload.tensors)}, expected {sorted(names)}"
        )
    values = payload.tensors[VALUES]
    if values.dtype != torch.float32 or tuple(values.shape) != (count,):
        raise RemoteProtocolError(
            f"values are {values.dtype} {list(values.shape)}, expected float32 [{count}]"
        )
    return values


class RandomK:
    """``budget`` of the coordinates, chosen at random each round from a seed; only the seed
    travels with the values, and each receiver draws the same mask from it."""

    checkpointed = ()  # drawn from (seed, node, round): nothing to save

    def __init__(self, *, budget: float, seed: int, node: int) -> None:
        self.budget, self.seed, self.node = budget, seed, node

    def encode(
        self, vector: torch.Tensor, round: int, score: torch.Tensor | None = None
    ) -> tuple[Payload, Part]:
        n = vector.numel()
        seed = mask_seed(self.seed, self.node, round)
        idx = random_indices(n, budget_count(n, self.budget), seed)
        part = Part(idx, vector[idx].to(torch.float32))
        return Payload({VALUES: part.values}, {"seed": seed}), part

    def decode(self, payload: Payload, n: int) -> Part:
        values = _values(payload, budget_count(n, self.budget), {VALUES})
        seed = payload.meta.get("seed")
        if set(payload.meta) != {"seed"} or not isinstance(seed, int) or isinstance(seed, bool):
            raise RemoteProtocolError("a random-k payload's meta must be exactly {'seed': int}")
        if not 0 <= seed <= MAX_SEED:
            raise RemoteProtocolError(f"mask seed {seed} is not in 0..2**63-1")
        return Part(random_indices(n, values.numel(), seed), values)


class TopK:
    """The ``budget`` of coordinates with the largest score (globally, or within each layer
    of ``layers`` sizes), sent as values plus compact indices (varint gaps or a bitmask,
    whichever is smaller for this message)."""

    checkpointed = ()  # nothing kept across rounds

    def __init__(self, *, budget: float, layers: Sequence[int] | None = None) -> None:
        self.budget = budget
        self.layers = list(layers) if layers is not None else None

    def count(self, n: int) -> int:
        if self.layers is None:
            return budget_count(n, self.budget)
        if sum(self.layers) != n:
            raise ValueError(f"layer sizes add up to {sum(self.layers)}, the vector has {n}")
        return sum(budget_count(size, self.budget) for size in self.layers)

    def select(self, score: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the largest scores."""
        n = score.numel()
        if self.layers is None:
            idx = torch.topk(score, budget_count(n, self.budget), sorted=False).indices
        else:
            chunks, start = [], 0
            for size in self.layers:
                top = torch.topk(score[start : start + size], budget_count(size, self.budget))
                chunks.append(top.indices + start)
                start += size
            idx = torch.cat(chunks)
        return idx.sort().values

    def encode(
        self, vector: torch.Tensor, round: int, score: torch.Tensor | None = None
    ) -> tuple[Payload, Part]:
        idx = self.select(vector.abs() if score is None else score)
        kind, data = encode_indices(idx.numpy(), vector.numel())
        part = Part(idx, vector[idx].to(torch.float32))
        return Payload({VALUES: part.values, INDEX: torch.from_numpy(data)}, {"idx": kind}), part

    def decode(self, payload: Payload, n: int) -> Part:
        count = self.count(n)
        values = _values(payload, count, {VALUES, INDEX})
        kind = payload.meta.get("idx")
        if set(payload.meta) != {"idx"} or not isinstance(kind, str):
            raise RemoteProtocolError("a top-k payload's meta must be exactly {'idx': kind}")
        data = payload.tensors[INDEX]
        if data.dtype != torch.uint8 or data.dim() != 1:
            raise RemoteProtocolError(f"indices are {data.dtype} {list(data.shape)}, not bytes")
        idx = decode_indices(kind, data.numpy(), n, count)
        return Part(torch.from_numpy(idx), values)


class Quantizer:
    """Every coordinate, stochastically quantized to ``bits`` bits with per-bucket scales
    (``dlactor.sharing.qsgd``: unbiased)."""

    checkpointed = ("generator",)  # stochastic rounding's generator

    def __init__(self, *, bits: int, bucket_size: int | None, seed: int) -> None:
        self.bits, self.bucket_size = bits, bucket_size
        self.generator = torch.Generator().manual_seed(seed)

    def encode(
        self, vector: torch.Tensor, round: int, score: torch.Tensor | None = None
    ) -> tuple[Payload, Part]:
        q = qsgd.quantize(vector, self.bits, self.bucket_size, self.generator)
        return Payload(qsgd.to_wire(q)), Part(None, qsgd.dequantize(q))

    def decode(self, payload: Payload, n: int) -> Part:
        if payload.meta:
            raise RemoteProtocolError("a quantized payload has no meta")
        q = qsgd.from_wire(payload.tensors, self.bits, self.bucket_size, n)
        if set(payload.tensors) != {qsgd.CODES, qsgd.LO, qsgd.STEP}:
            raise RemoteProtocolError(
                f"payload has {sorted(payload.tensors)}, expected codes/lo/step"
            )
        return Part(None, qsgd.dequantize(q))
