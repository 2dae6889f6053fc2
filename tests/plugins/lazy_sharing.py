"""An example strategy plugin, written as a user would: an async class plus its settings.

Lazy gossip: x_i <- (1 - mix) x_i + mix * sum_j W_ij x_j. With mix = 1 it is D-PSGD's
full sharing; smaller mix moves each model only part of the way to its neighbourhood
average. Used by a config with ``plugins = ["../plugins/lazy_sharing.py"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field

from dlactor import NodeEnv, Payload, RoundContext, SharingSettings, register
from dlactor.sharing.ops import check_layout, flat_layout, flatten, unflatten_into, weighted_sum


class LazySharing:
    def __init__(self, *, mix: float) -> None:
        self.mix = mix

    async def outgoing(self, ctx: RoundContext) -> Payload:
        return Payload(tensors={"params": flatten(ctx.model.parameters())}, meta={"mix": self.mix})

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Optional: the node calls it as each payload arrives and drops a peer whose payload
        does not fit (so ``aggregate`` can trust what it gets)."""
        check_layout(payload, flat_layout(model.parameters()))

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        own = flatten(ctx.model.parameters())
        vectors = {ctx.node: own, **{j: p.tensors["params"] for j, p in received.items()}}
        averaged = weighted_sum(vectors, ctx.weights)
        unflatten_into(
            own.mul_(1 - self.mix).add_(averaged, alpha=self.mix), ctx.model.parameters()
        )


@register("sharing")
class LazySharingSettings(SharingSettings):
    kind: Literal["lazy"] = "lazy"
    mix: float = Field(0.5, gt=0.0, le=1.0, description="how far to move toward the average")

    def build(self, env: NodeEnv) -> LazySharing:
        return LazySharing(mix=self.mix)
