"""A training plugin that raises on one node at one round: drives the failure tests."""

from __future__ import annotations

import asyncio
from typing import Literal

from dlactor import NodeEnv, RoundContext, TrainStats, register
from dlactor.training.base import Trainer
from dlactor.training.settings import SGDSettings


class FaultyTrainer:
    def __init__(
        self, *, inner: Trainer, node: int, fail_node: int, fail_round: int, delay_s: float
    ) -> None:
        self.inner, self.node = inner, node
        self.fail_node, self.fail_round, self.delay_s = fail_node, fail_round, delay_s

    async def train(self, ctx: RoundContext) -> TrainStats:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if ctx.node == self.fail_node and ctx.round == self.fail_round:
            raise RuntimeError(f"injected failure on node {ctx.node} at round {ctx.round}")
        return await self.inner.train(ctx)

    async def evaluate(self, ctx: RoundContext):  # type: ignore[no-untyped-def]
        return await self.inner.evaluate(ctx)


@register("training")
class FaultySettings(SGDSettings):
    kind: Literal["faulty"] = "faulty"  # type: ignore[assignment]
    fail_node: int = -1
    fail_round: int = 0
    delay_s: float = 0.0

    def build(self, env: NodeEnv) -> Trainer:
        inner = SGDSettings(**self.model_dump(include=set(SGDSettings.model_fields) - {"kind"}))
        return FaultyTrainer(
            inner=inner.build(env),
            node=env.node,
            fail_node=self.fail_node,
            fail_round=self.fail_round,
            delay_s=self.delay_s,
        )
