"""The topology interface: who a node talks to in a round, and with what weights.

A topology that needs to talk to other processes (the peer sampler's clients, gossip peer
sampling) also implements :class:`UsesOverlay`: the node gives it an :class:`OverlayLink`
before the first round and hands it every ``Overlay`` message that arrives, and keeps the
connections to its optional ``persistent_peers`` open across rounds even when they are not
neighbours (the peer sampler).

A topology whose ``neighbors`` and ``weights`` answer for any node, not only the one asking
(a graph fixed in advance, a draw from the run's seed), says so with a class attribute
``sees_every_node = True``: a secure sender then works out its receivers' rosters itself,
where otherwise each receiver sends its senders one (``dlactor.node.rosters``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from dlactor.messages import Overlay

__all__ = ["OverlayLink", "Topology", "UsesOverlay"]


@runtime_checkable
class Topology(Protocol):
    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        """The peers ``node`` exchanges with in ``round`` (symmetric: j in N(i) iff i in N(j))."""
        ...

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        """``node``'s row of the round's mixing matrix: neighbours and itself, summing to 1."""
        ...


class OverlayLink(Protocol):
    """What a node lends its topology to talk: sends on the node's own transport, counted
    (messages and bytes) in the node's ``overlay_*`` record fields."""

    @property
    def node(self) -> int: ...

    async def send(self, peer: int, msg: Overlay) -> None:
        """Send one overlay message; raises the transport's errors (PeerUnreachable...)."""
        ...

    def spawn(self, peer: int, msg: Overlay) -> None:
        """Send without waiting (a reply from a message handler); a peer that cannot be
        reached or is not in the address book is only logged."""
        ...


@runtime_checkable
class UsesOverlay(Protocol):
    """A topology that talks. It may also have ``persistent_peers``, a frozenset of peers
    whose connections the node keeps open across rounds even when they are not neighbours
    (the peer sampler); the node reads it once, and takes none if it is absent."""

    def attach(self, link: OverlayLink) -> None:
        """Called once, before the first round."""
        ...

    def on_overlay(self, msg: Overlay) -> None:
        """An overlay message arrived (called on the event loop; must not block). Raise
        RemoteProtocolError for a message the peer should not have sent: the connection is
        dropped, the node carries on."""
        ...

    async def aclose(self) -> None:
        """The node is stopping: cancel whatever the topology still has running."""
        ...
