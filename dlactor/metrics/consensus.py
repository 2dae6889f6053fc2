"""Consensus distance: how far the node models are from agreeing.

Xi_t = sqrt( (1/n) sum_i ||x_i - x_bar||^2 ), the root-mean-square distance of the n node
models to their average (Kong et al., "Consensus Control for Decentralized Deep Learning",
ICML 2021). Computed in one pass from the running sum and sum of squares, so the launcher
keeps O(model size) memory per round in flight, not one model per node.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ConsensusMeter"]


class _Accumulator:
    def __init__(self, numel: int) -> None:
        self.total = torch.zeros(numel, dtype=torch.float64)
        self.squares = 0.0
        self.count = 0


class ConsensusMeter:
    """Feed each node's model vector of a round; get the distance once all n have arrived."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self._rounds: dict[int, _Accumulator] = {}
        self._lost: list[int] = []  # the rounds nodes were lost in (they report no more)

    def needed(self, round: int) -> int:
        """How many nodes report ``round``: all but those lost in it or before."""
        return self.nodes - sum(1 for lost in self._lost if lost <= round)

    def forget(self, round: int) -> list[tuple[int, float]]:
        """A node was lost in ``round`` (after reporting the rounds before it): rounds from
        it on are complete without it. The (round, distance) of those that now are."""
        self._lost.append(round)
        done = []
        for r in sorted(self._rounds):
            acc = self._rounds[r]
            if r >= round and acc.count >= self.needed(r):
                done.append((r, self._distance(r)))
        return done

    @property
    def pending(self) -> int:
        """Rounds being summed: some nodes have reported them, not all."""
        return len(self._rounds)

    def __contains__(self, round: object) -> bool:
        return round in self._rounds

    def add(self, round: int, vector: torch.Tensor) -> float | None:
        v = vector.detach().reshape(-1).to(torch.float64)
        acc = self._rounds.get(round)
        if acc is None:
            acc = self._rounds[round] = _Accumulator(v.numel())
        if v.numel() != acc.total.numel():
            raise ValueError(
                f"round {round}: model of {v.numel()} values, expected {acc.total.numel()}"
            )
        acc.total += v
        acc.squares += float(v.dot(v))
        acc.count += 1
        if acc.count < self.needed(round):
            return None
        return self._distance(round)

    def _distance(self, round: int) -> float:
        acc = self._rounds.pop(round)
        mean = acc.total / acc.count
        spread = acc.squares / acc.count - float(mean.dot(mean))
        return math.sqrt(max(spread, 0.0))
