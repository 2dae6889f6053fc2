"""The training interface: local steps and evaluation of one node's model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from dlactor.node.context import EvalStats, RoundContext, TrainStats

__all__ = ["Trainer"]


@runtime_checkable
class Trainer(Protocol):
    async def train(self, ctx: RoundContext) -> TrainStats:
        """Run this round's local steps on ``ctx.model`` (off the event loop)."""
        ...

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        """Test loss and accuracy of ``ctx.model`` on the shared test set."""
        ...
