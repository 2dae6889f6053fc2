"""Sharing part of the model, or all of it approximately: the common body of the random,
top-k and quantize strategies.

A node sends what its compressor makes of its flattened model, keeps its own model at full
precision, and averages each coordinate over itself and the neighbours that sent that
coordinate, with the Metropolis-Hastings weights renormalized over those senders
(``ops.partial_average``). Coordinates nobody sent stay the node's own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload
from dlactor.sharing.base import Checked
from dlactor.sharing.lossy import Compressor, Part
from dlactor.sharing.ops import flatten, partial_average, unflatten_into

__all__ = ["CompressedSharing", "PartialSharing"]


class CompressedSharing:
    """What every strategy built on a compressor shares: peers' payloads are decoded once,
    on arrival (a bad one drops that peer there and then), and ``aggregate`` gets the parts
    decoded then."""

    #: What a checkpoint saves (dlactor.checkpoint.state): the compressor's own state.
    checkpointed: tuple[str, ...] = ("compressor",)

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self._n: int | None = None  # parameters in the model
        self._checked: Checked[Part] = Checked()

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Decodable by this compressor for this model (done on arrival, by the node)."""
        if self._n is None:
            self._n = sum(p.numel() for p in model.parameters())
        self._checked.keep(payload, self.compressor.decode(payload, self._n))

    def received_parts(self, received: Mapping[int, Payload], n: int) -> dict[int, Part]:
        """Each sender's part: as decoded on arrival, or decoded now (a payload that was
        not checked, e.g. in a test that calls ``aggregate`` directly)."""
        parts = {}
        for sender, payload in received.items():
            part = self._checked.take(payload)
            parts[sender] = part if part is not None else self.compressor.decode(payload, n)
        self._checked.clear()
        return parts


class PartialSharing(CompressedSharing):
    """Send ``compressor(model)``; aggregate coordinate by coordinate over who sent it."""

    def __init__(self, compressor: Compressor) -> None:
        super().__init__(compressor)
        self._own: torch.Tensor | None = None  # this round's flattened model

    def score(self, flat: torch.Tensor) -> torch.Tensor | None:
        """How to rank coordinates for a compressor that chooses them (default: |value|)."""
        return None

    def sent(self, part: Part) -> None:
        """Told what this round's message carried (top-k keeps track of it)."""

    async def outgoing(self, ctx: RoundContext) -> Payload:
        flat = flatten(ctx.model.parameters())
        self._own = flat
        payload, part = self.compressor.encode(flat, ctx.round, self.score(flat))
        self.sent(part)
        return payload

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        own = self._own if self._own is not None else flatten(ctx.model.parameters())
        parts = [
            (ctx.weights[sender], part.indices, part.values)
            for sender, part in self.received_parts(received, own.numel()).items()
        ]
        averaged = partial_average(own, ctx.weights[ctx.node], parts)
        unflatten_into(averaged, ctx.model.parameters())
