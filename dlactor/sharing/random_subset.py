"""Random sampling (decentralizepy's ``RandomAlpha``): each round a node sends a random
``budget`` of its parameters. The mask comes from a seed derived from the run's seed, the
node and the round, and only that seed travels (8 bytes, not the indices): receivers draw
the same mask. They average what they got, coordinate by coordinate (``PartialSharing``)."""

from __future__ import annotations

from dlactor.sharing.lossy import RandomK
from dlactor.sharing.partial import PartialSharing

__all__ = ["RandomSharing"]


class RandomSharing(PartialSharing):
    def __init__(self, *, budget: float, seed: int, node: int) -> None:
        super().__init__(RandomK(budget=budget, seed=seed, node=node))
