"""The topology interface: who a node talks to in a round, and with what weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

__all__ = ["Topology"]


@runtime_checkable
class Topology(Protocol):
    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        """The peers ``node`` exchanges with in ``round`` (symmetric: j in N(i) iff i in N(j))."""
        ...

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        """``node``'s row of the round's mixing matrix: neighbours and itself, summing to 1."""
        ...
