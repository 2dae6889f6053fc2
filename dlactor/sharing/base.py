"""The sharing interface: what a node sends each round and how it folds in what it got."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload

__all__ = ["Checked", "ChecksPayloads", "Reports", "Sharing", "SharesPerPeer"]

T = TypeVar("T")


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
class SharesPerPeer(Protocol):
    """Optional: a strategy whose neighbours each get a payload of their own (secure
    aggregation masks each one differently). The algorithm then calls ``outgoing_each``
    instead of ``outgoing``, and the node sends each payload to its peer alone; a strategy
    without it sends one payload to everyone, encoded once, as before.

    With ``needs_rosters`` True, ``ctx.rosters`` holds, for each peer, who else sends to it
    this round and the weight it gives this node (from the topology when every node can
    work it out, else from a message each receiver sends its senders first)."""

    needs_rosters: bool

    async def outgoing_each(self, ctx: RoundContext) -> Mapping[int, Payload]:
        """A payload for each peer in ``ctx.peers`` (none may alias live parameters)."""
        ...


@runtime_checkable
class Reports(Protocol):
    """Optional: a strategy with fields of its own for each round's record (what its last
    ``aggregate`` did). The node calls ``report`` once per round, as it closes the record."""

    def report(self) -> Mapping[str, Any]: ...


@runtime_checkable
class ChecksPayloads(Protocol):
    """Optional for a sharing strategy, and recommended: the node calls ``check`` on every
    payload as it arrives, so a peer sending what ``aggregate`` cannot use has its connection
    dropped there and then (and is logged), instead of failing this node's round later."""

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """Raise RemoteProtocolError if ``payload`` cannot be aggregated into ``model``."""
        ...


class Checked(Generic[T]):
    """What ``check`` made of each payload on arrival (decoded indices, an unpacked payload),
    so that ``aggregate`` does not decode it a second time.

    Keyed by the payload object, which is held while kept, so its id cannot be reused for
    another. ``clear`` after each aggregate: a payload that came early, for the next round,
    is then just decoded again, and nothing accumulates (a late payload that is never
    aggregated included).
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Payload, T]] = {}

    def keep(self, payload: Payload, value: T) -> T:
        self._seen[id(payload)] = (payload, value)
        return value

    def take(self, payload: Payload) -> T | None:
        entry = self._seen.get(id(payload))
        return entry[1] if entry is not None and entry[0] is payload else None

    def clear(self) -> None:
        self._seen.clear()
