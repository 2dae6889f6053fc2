"""The study's control: plain full sharing whose average is summed in float64, then rounded
once to float32 (plain full sharing sums in float32, one rounding per addition).

It changes nothing but rounding, by about as much as secure sharing's fixed point does, so a
run with it shows how far the rounding alone moves a run from the plain one: the secure
run's distance from the plain run is to be read against it. Used with
``--set plugins=['full64.py'] --set sharing.kind=full64`` (run.sh does it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from dlactor import NodeEnv, Payload, RoundContext, SharingSettings, register
from dlactor.sharing.full import PARAMS, FullSharing
from dlactor.sharing.ops import flatten, unflatten_into


class Full64Sharing(FullSharing):
    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        vectors = {ctx.node: flatten(ctx.model.parameters())}
        vectors.update({j: p.tensors[PARAMS] for j, p in received.items()})
        total = torch.zeros(vectors[ctx.node].numel(), dtype=torch.float64)
        for j, w in ctx.weights.items():
            total.add_(vectors[j].to(torch.float64), alpha=w)
        unflatten_into(total.to(torch.float32), ctx.model.parameters())


@register("sharing")
class Full64Settings(SharingSettings):
    """Full sharing, its average summed in float64 (the secure study's control)."""

    kind: Literal["full64"] = "full64"

    def build(self, env: NodeEnv) -> Full64Sharing:
        return Full64Sharing()
