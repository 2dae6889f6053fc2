"""Rosters: what a receiver tells its senders before they mask for it.

A sender's mask for receiver ``i`` sums its pairwise streams with ``i``'s other senders, and
its payload is weighted by ``W_ij``: it needs ``i``'s neighbours and weights of the round.
Where every node can work them out (a graph fixed in advance, a seeded draw: the topology
``sees_every_node``) nobody sends anything. Otherwise (the peer sampler, gossip) each node,
once it knows its round's neighbours, sends them one ``Overlay`` with op ``"roster"``: its
neighbours in ``nodes`` and their mixing weights in ``values``, each as the 64 bits of its
IEEE-754 double (a weight in (0, 1] is positive, so its bits fit the wire's 63-bit values).

A roster is accepted only from a sender naming this node among its neighbours, once per
sender and round, and for the current round or the next (an honest neighbour is never
further ahead); anything else drops that connection.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterable, Mapping

from dlactor.context import Roster
from dlactor.messages import Overlay
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["ROSTER", "RosterBook", "RosterTimeout", "roster_message"]

ROSTER = "roster"


def _bits(weight: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", weight))[0])


def _weight(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def roster_message(node: int, round: int, weights: Mapping[int, float]) -> Overlay:
    """Node ``node``'s roster of ``round``: its neighbours (``weights``' keys but itself) and
    the weight it gives each one."""
    peers = sorted(p for p in weights if p != node)
    return Overlay(node, round, ROSTER, peers, [_bits(float(weights[p])) for p in peers])


class RosterTimeout(TimeoutError):
    def __init__(self, round: int, missing: Iterable[int], timeout: float) -> None:
        self.missing = sorted(missing)
        super().__init__(
            f"round {round}: no roster from node(s) {self.missing} within {timeout:g} s"
        )


class RosterBook:
    """The rosters this node's receivers sent it, by round; ``put`` from the transport's
    callback, ``wait`` from the round."""

    def __init__(self, node: int) -> None:
        self.node = node
        self._rounds: dict[int, dict[int, Roster]] = {}
        self._floor = 0
        self._arrived = asyncio.Event()

    def put(self, msg: Overlay) -> None:
        """Keep ``msg``'s roster; RemoteProtocolError (the connection is dropped) if it is
        malformed, not for this node, a second one, or too far ahead."""
        r, sender = msg.round, msg.sender
        if r < self._floor:
            return  # late: that round is over
        if r > self._floor + 1:
            raise RemoteProtocolError(f"node {sender} sent a roster for round {r}, too far ahead")
        nodes = msg.nodes
        if len(nodes) != len(msg.values) or nodes != sorted(set(nodes)):
            raise RemoteProtocolError(f"node {sender}'s roster is not sorted unique nodes")
        if self.node not in nodes or sender in nodes:
            raise RemoteProtocolError(f"node {sender}'s roster does not name this node")
        weight = _weight(msg.values[nodes.index(self.node)])
        if not (math.isfinite(weight) and 0.0 < weight <= 1.0):
            raise RemoteProtocolError(f"node {sender}'s roster weighs this node {weight!r}")
        book = self._rounds.setdefault(r, {})
        if sender in book:
            raise RemoteProtocolError(f"node {sender} sent two rosters for round {r}")
        book[sender] = Roster(frozenset(nodes), weight)
        self._arrived.set()

    async def wait(self, round: int, peers: frozenset[int], timeout: float) -> dict[int, Roster]:
        """The rosters of ``peers`` for ``round``, once all are in (RosterTimeout)."""
        try:
            async with asyncio.timeout(timeout):
                while not peers <= self._rounds.get(round, {}).keys():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            missing = peers - self._rounds.get(round, {}).keys()
            raise RosterTimeout(round, missing, timeout) from None
        book = self._rounds.pop(round)
        self._floor = round + 1
        for old in [r for r in self._rounds if r < self._floor]:
            del self._rounds[old]
        return {p: book[p] for p in peers}
