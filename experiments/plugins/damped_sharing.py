"""A sharing strategy plugin: damped averaging (docs/plugins.md walks through it).

x_i <- (1 - mix) * x_i + mix * sum_j W_ij x_j. With ``mix = 1`` it is full sharing
(D-PSGD's average); a smaller ``mix`` moves each model only part of the way to its
neighbourhood's average, which slows consensus and keeps more of each node's own training.
Any ``mix`` in (0, 1] keeps the network's average model where it was (W is doubly
stochastic), which is what ``test_plugins.py`` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field

from dlactor import NodeEnv, Payload, RoundContext, SharingSettings, register
from dlactor.sharing.ops import check_layout, flat_layout, flatten, unflatten_into, weighted_sum


class DampedSharing:
    """The strategy: one object per node, built by its settings' ``build``."""

    def __init__(self, *, mix: float) -> None:
        self.mix = mix

    async def outgoing(self, ctx: RoundContext) -> Payload:
        # flatten() copies: a payload must never be a view of the live parameters.
        return Payload(tensors={"params": flatten(ctx.model.parameters())})

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Called on each payload as it arrives: a peer whose payload does not fit the model
        has its connection dropped there, so ``aggregate`` can trust what it gets."""
        check_layout(payload, flat_layout(model.parameters()))

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        own = flatten(ctx.model.parameters()) if ctx.sent is None else ctx.sent.tensors["params"]
        vectors = {ctx.node: own, **{j: p.tensors["params"] for j, p in received.items()}}
        average = weighted_sum(vectors, ctx.weights)  # over ctx.weights' keys: self + peers
        mixed = own.mul(1 - self.mix).add_(average, alpha=self.mix)  # own is not changed
        unflatten_into(mixed, ctx.model.parameters())


@register("sharing")
class DampedSharingSettings(SharingSettings):
    """``[sharing] kind = "damped"``: the settings, validated when the config is read."""

    kind: Literal["damped"] = "damped"
    mix: float = Field(0.5, gt=0.0, le=1.0, description="how far each model moves to the average")

    def build(self, env: NodeEnv) -> DampedSharing:
        return DampedSharing(mix=self.mix)
