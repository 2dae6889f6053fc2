"""The training interface: local steps and evaluation of one node's model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from dlactor.context import EvalStats, RoundContext, TrainStats

__all__ = ["Restarts", "Trainer"]


@runtime_checkable
class Trainer(Protocol):
    async def train(self, ctx: RoundContext) -> TrainStats:
        """Run this round's local steps on ``ctx.model`` (off the event loop)."""
        ...

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        """Test loss and accuracy of ``ctx.model`` on the shared test set."""
        ...


@runtime_checkable
class Restarts(Protocol):
    """Optional for a trainer: forget the optimizer's state (momentum) when the model was
    replaced from outside (a FedAvg client's download), as FedAvg's local solver does."""

    def restart(self) -> None: ...
