"""The sharing interface: what a node sends each round and how it folds in what it got."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from dlactor.messages import Payload
from dlactor.node.context import RoundContext

__all__ = ["ChecksPayloads", "Sharing"]


@runtime_checkable
class Sharing(Protocol):
    async def outgoing(self, ctx: RoundContext) -> Payload:
        """The payload sent to every neighbour this round. It must not alias live parameters:
        the transport may still be flushing it while the next round trains."""
        ...

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        """Fold the neighbours' payloads (by sender) into ``ctx.model``."""
        ...


@runtime_checkable
class ChecksPayloads(Protocol):
    """Optional for a sharing strategy, and recommended: the node calls ``check`` on every
    payload as it arrives, so a peer sending what ``aggregate`` cannot use has its connection
    dropped there and then (and is logged), instead of failing this node's round later."""

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Raise RemoteProtocolError if ``payload`` cannot be aggregated into ``model``."""
        ...
