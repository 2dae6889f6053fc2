"""Full sharing: send the whole model, average with the mixing weights (D-PSGD)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload
from dlactor.sharing.ops import (
    Layout,
    check_layout,
    flat_layout,
    flatten,
    unflatten_into,
    weighted_sum,
)

__all__ = ["FullSharing"]

PARAMS = "params"


class FullSharing:
    """x_i <- sum_j W_ij x_j over the node and its neighbours (Lian et al., 2017)."""

    checkpointed = ()  # nothing kept across rounds

    def __init__(self) -> None:
        self._layout: Layout | None = None  # the node's model never changes shape

    async def outgoing(self, ctx: RoundContext) -> Payload:
        return Payload(tensors={PARAMS: flatten(ctx.model.parameters())})

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Exactly one vector of this model's size and dtype (done on arrival, by the node)."""
        if self._layout is None:
            self._layout = flat_layout(model.parameters(), PARAMS)
        check_layout(payload, self._layout)

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        # The vector sent this round is this model as it is now: no second flatten.
        own = ctx.sent.tensors[PARAMS] if ctx.sent is not None else flatten(ctx.model.parameters())
        vectors = {ctx.node: own}
        for sender, payload in received.items():
            vectors[sender] = payload.tensors[PARAMS]
        unflatten_into(weighted_sum(vectors, ctx.weights), ctx.model.parameters())
