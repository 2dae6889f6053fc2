"""Rosters: what a receiver tells its senders before they mask for it.

A sender's mask for receiver ``i`` sums its pairwise streams with ``i``'s other senders: it
needs ``i``'s neighbours of the round. Where every node can work them out (a graph fixed in
advance, a seeded draw: the topology ``sees_every_node``) nobody sends anything. Otherwise
(the peer sampler, gossip) each node, once it knows its round's neighbours, sends them one
``Overlay`` with op ``"roster"``: its neighbours in ``nodes`` and their mixing weights in
``values``, each as the 64 bits of its IEEE-754 double (a weight in (0, 1] is positive, so
its bits fit the wire's 63-bit values). A sender weighs its model by its own row's weight for
the receiver (the mixing matrix is symmetric); one whose receiver's roster gives it another
weight sends that receiver a skip notice instead of its model (``Node.rosters``).

A roster is accepted only from a sender naming this node among its neighbours, naming only
learning nodes and at most ``max_peers`` of them, once per sender and round, for the current
round or, one at a time per sender, a later one (as the mailbox takes shares: an honest
neighbour that has gone ahead sent at most one); anything else drops that connection.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterable, Mapping

from dlactor.context import Roster
from dlactor.messages import Overlay
from dlactor.transport.emulated import SENT_AT
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
    callback, ``wait`` from the round. ``nodes``: the run's learning nodes; ``max_peers``:
    the most neighbours a roster may name (the topology's degree)."""

    def __init__(self, node: int, nodes: int, max_peers: int) -> None:
        self.node, self.nodes, self.max_peers = node, nodes, max_peers
        self._rounds: dict[int, dict[int, tuple[Roster, float]]] = {}
        self._ahead: dict[int, int] = {}  # sender -> the later round it sent a roster for
        self._floor = 0
        self._arrived = asyncio.Event()

    def put(self, msg: Overlay) -> None:
        """Keep ``msg``'s roster (and, on an emulated network, its arrival time);
        RemoteProtocolError (the connection is dropped) if it is malformed, not for this
        node, a second one, or a second one ahead."""
        r, sender = msg.round, msg.sender
        if r < self._floor:
            return  # late: that round is over
        nodes = msg.nodes
        if len(nodes) != len(msg.values) or nodes != sorted(set(nodes)):
            raise RemoteProtocolError(f"node {sender}'s roster is not sorted unique nodes")
        if len(nodes) > self.max_peers or (nodes and nodes[-1] >= self.nodes):
            raise RemoteProtocolError(
                f"node {sender}'s roster names {len(nodes)} nodes up to {nodes[-1]}: more "
                f"than {self.max_peers}, or not learning nodes"
            )
        if self.node not in nodes or sender in nodes:
            raise RemoteProtocolError(f"node {sender}'s roster does not name this node")
        weight = _weight(msg.values[nodes.index(self.node)])
        if not (math.isfinite(weight) and 0.0 < weight <= 1.0):
            raise RemoteProtocolError(f"node {sender}'s roster weighs this node {weight!r}")
        book = self._rounds.setdefault(r, {})
        if sender in book:
            raise RemoteProtocolError(f"node {sender} sent two rosters for round {r}")
        if r > self._floor:
            ahead = self._ahead.get(sender)
            if ahead is not None and ahead > self._floor:
                raise RemoteProtocolError(
                    f"node {sender} sent rosters for rounds {ahead} and {r}, both ahead"
                )
            self._ahead[sender] = r
        arrival = SENT_AT.get()
        book[sender] = (Roster(frozenset(nodes), weight), 0.0 if arrival is None else arrival)
        self._arrived.set()

    async def wait(
        self, round: int, peers: frozenset[int], timeout: float
    ) -> tuple[dict[int, Roster], float]:
        """The rosters of ``peers`` for ``round`` once all are in (RosterTimeout), and when
        the last of them arrived on an emulated network's clock (0 without one)."""
        try:
            async with asyncio.timeout(timeout):
                while not peers <= self._rounds.get(round, {}).keys():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            missing = peers - self._rounds.get(round, {}).keys()
            raise RosterTimeout(round, missing, timeout) from None
        book = self._rounds.pop(round, {})
        self._floor = round + 1
        for old in [r for r in self._rounds if r < self._floor]:
            del self._rounds[old]
        got = {p: book[p] for p in peers}
        return {p: roster for p, (roster, _) in got.items()}, max(
            (t for _, t in got.values()), default=0.0
        )
