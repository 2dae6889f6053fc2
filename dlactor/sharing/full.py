"""Full sharing: send the whole model, average with the mixing weights (D-PSGD)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dlactor.messages import Payload
from dlactor.node.context import RoundContext
from dlactor.sharing.ops import flatten, unflatten_into, weighted_sum
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["FullSharing"]

PARAMS = "params"


class FullSharing:
    """x_i <- sum_j W_ij x_j over the node and its neighbours (Lian et al., 2017)."""

    async def outgoing(self, ctx: RoundContext) -> Payload:
        return Payload(tensors={PARAMS: flatten(ctx.model.parameters())})

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        own = flatten(ctx.model.parameters())
        vectors = {ctx.node: own}
        for sender, payload in received.items():
            vectors[sender] = _checked_vector(payload, own.numel(), sender)
        unflatten_into(weighted_sum(vectors, ctx.weights), ctx.model.parameters())


def _checked_vector(payload: Payload, numel: int, sender: int) -> torch.Tensor:
    vec = payload.tensors.get(PARAMS)
    if vec is None or vec.dim() != 1 or vec.numel() != numel or not vec.is_floating_point():
        raise RemoteProtocolError(
            f"node {sender} sent a full-sharing payload that does not fit this model "
            f"(expected a float vector of {numel} values)"
        )
    return vec
