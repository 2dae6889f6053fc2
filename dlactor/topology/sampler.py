"""The peer sampler: one process that draws every round's graph and tells each node its part.

decentralizepy's dynamic topologies work this way: a peer-sampler process draws a fresh
random d-regular graph each round, and each node asks it for its neighbours. Here the
sampler is a process of the run like every node (id ``nodes``, after the learning nodes),
with the same transport, wire format and lifecycle (start, register, barrier, run, done).

A node asks for round r with ``Overlay(op="ask", round=r)``; the sampler answers
``Overlay(op="peers", round=r, nodes=<neighbours>, values=<their degrees>)``. The graph is a
deterministic function of ``(seed, round)`` (``random_regular_at``), symmetric, so if i is
told j then j is told i. Each node asks for round r + 1 as soon as it has round r's answer,
so the answer is normally there before the node needs it: the sampler costs two small
messages per node and round, not a round trip on the critical path.

The node's mixing weights are Metropolis-Hastings weights of the round's graph, from the
degrees in the answer (for a d-regular graph, ``1 / (d + 1)`` everywhere).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from dlactor.messages import Message, Overlay
from dlactor.topology.base import OverlayLink
from dlactor.topology.dynamic import draw_among, random_regular_at
from dlactor.topology.mixing import metropolis_hastings_row
from dlactor.transport.base import Address, Deliver, Transport
from dlactor.transport.emulated import EmulatedTransport
from dlactor.transport.link import Link
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.churn.availability import Availability

__all__ = ["ASK", "PEERS", "PeerSampler", "SampledTopology"]

ASK, PEERS = "ask", "peers"

#: Rounds of graphs the sampler keeps: nodes of a run are within a few rounds of each other
#: (each waits for its neighbours), and an older round is drawn again if asked.
CACHED_ROUNDS = 8


class PeerSampler:
    """The sampler's actor: answers every node's ``ask`` from the round's graph.

    It runs until every node has asked for the last round (and the answers are sent): then
    ``run`` returns and the process reports done like a node.
    """

    def __init__(
        self,
        *,
        node: int,
        nodes: int,
        degree: int,
        seed: int,
        rounds: int,
        transport: Callable[[Deliver], Transport],
        availability: Availability | None = None,
    ) -> None:
        random_regular_at(nodes, degree, seed, 0)  # invalid settings fail here, not per ask
        self.availability = availability  # each round's graph is among its online nodes
        self.node, self.nodes, self.degree, self.seed, self.rounds = (
            node,
            nodes,
            degree,
            seed,
            rounds,
        )
        self.transport = transport(self.deliver)
        self.link = Link(node, self.transport)
        self._graphs: OrderedDict[int, dict[int, list[int]]] = OrderedDict()
        self._asked: set[tuple[int, int]] = set()
        # Nodes yet to ask for the last round: not those offline in it (they need not ask),
        # nor those lost (``lose``).
        last = rounds - 1
        self._to_ask = {
            i for i in range(nodes) if availability is None or availability.online(i, last)
        }
        self._all_asked = asyncio.Event()
        if not self._to_ask:
            self._all_asked.set()
        self.answers = 0
        #: Lost nodes, and the first round each is drawn no more in.
        self.lost: dict[int, int] = {}
        self._drawn_to = -1  # the latest round drawn

    def deliver(self, msg: Message, nbytes: int) -> None:
        """The transport's callback: an ``ask`` gets its answer; anything else is the peer's
        protocol error (its connection is dropped)."""
        if not isinstance(msg, Overlay) or msg.op != ASK:
            raise RemoteProtocolError(f"the peer sampler takes 'ask' messages, got {msg!r:.80}")
        self.link.received(nbytes)
        if msg.sender >= self.nodes or msg.round >= self.rounds or msg.nodes or msg.values:
            raise RemoteProtocolError(
                f"node {msg.sender} asked for round {msg.round}: not a node and round of this "
                f"run ({self.nodes} nodes, {self.rounds} rounds), or not an empty ask"
            )
        if (msg.sender, msg.round) in self._asked:
            raise RemoteProtocolError(f"node {msg.sender} asked for round {msg.round} twice")
        self._asked.add((msg.sender, msg.round))
        peers = self._graph(msg.round)
        neighbours = peers[msg.sender]
        degrees = [len(peers[j]) for j in neighbours]
        self.link.spawn(msg.sender, Overlay(self.node, msg.round, PEERS, neighbours, degrees))
        self.answers += 1
        if msg.round == self.rounds - 1:
            self._done_asking(msg.sender)

    def _done_asking(self, node: int) -> None:
        self._to_ask.discard(node)
        if not self._to_ask:
            self._all_asked.set()

    def lose(self, node: int, round: int) -> None:
        """``node`` died and the run goes on without it (the launcher's word): it will not
        ask again, and it is drawn no more (from the next graph drawn on)."""
        # Graphs already handed out keep it (a round drawn again after leaving the cache
        # must be the same graph): it is left out from the first round not drawn yet.
        self.lost.setdefault(node, self._drawn_to + 1)
        self._done_asking(node)

    def _graph(self, round: int) -> dict[int, list[int]]:
        graph = self._graphs.get(round)
        if graph is None:
            online = None
            if self.availability is not None:
                online = self.availability.online_nodes(round).tolist()
            gone = {node for node, since in self.lost.items() if since <= round}
            if gone:
                every = range(self.nodes) if online is None else online
                online = [i for i in every if i not in gone]
            graph = draw_among(self.nodes, self.degree, self.seed, round, online)
            self._graphs[round] = graph
            self._drawn_to = max(self._drawn_to, round)
            while len(self._graphs) > CACHED_ROUNDS:
                self._graphs.popitem(last=False)
        return graph

    async def start(self) -> Address:
        return await self.transport.start()

    def connect(self, addresses: Mapping[int, Address], t0: float | None = None) -> None:
        self.transport.set_peers(addresses)
        self.link.ready.set()
        if isinstance(self.transport, EmulatedTransport):
            self.transport.begin(time.time() if t0 is None else t0)

    async def run(self) -> None:
        """Serve until every node has asked for the last round and been answered."""
        await self._all_asked.wait()
        await self.link.flush()

    async def stop(self) -> None:
        await self.link.stop()
        await self.transport.stop()


class SampledTopology:
    """A node's side of the peer sampler: each round's neighbours and weights, asked for one
    round ahead."""

    #: The sampler draws each round's graph among the online nodes.
    handles_availability = True

    def __init__(self, *, node: int, nodes: int, sampler: int, rounds: int, timeout: float) -> None:
        self.node, self.nodes, self.sampler, self.rounds = node, nodes, sampler, rounds
        self.timeout = timeout
        #: The node keeps its connection to the sampler open across rounds.
        self.persistent_peers = frozenset({sampler})
        self._link: OverlayLink | None = None
        self._answers: dict[int, asyncio.Future[tuple[list[int], list[int]]]] = {}

    def attach(self, link: OverlayLink) -> None:
        self._link = link

    def on_overlay(self, msg: Overlay) -> None:
        future = self._answers.get(msg.round)
        if msg.sender != self.sampler or msg.op != PEERS:
            raise RemoteProtocolError(f"node {msg.sender} sent {msg.op!r}: only the sampler talks")
        if future is None or future.done():
            raise RemoteProtocolError(f"the sampler answered round {msg.round}, not asked")
        self._check(msg)
        future.set_result((msg.nodes, msg.values))

    def _check(self, msg: Overlay) -> None:
        peers = msg.nodes
        if len(set(peers)) != len(peers) or len(msg.values) != len(peers):
            raise RemoteProtocolError("the sampler's answer repeats a node or misses degrees")
        if any(p >= self.nodes or p == self.node for p in peers):
            raise RemoteProtocolError(f"the sampler named a node outside the run: {peers[:10]}")
        if any(not 1 <= d < self.nodes for d in msg.values):
            raise RemoteProtocolError(f"the sampler gave impossible degrees: {msg.values[:10]}")

    async def aclose(self) -> None:
        for future in self._answers.values():
            future.cancel()

    def _ask(self, round: int) -> asyncio.Future[tuple[list[int], list[int]]]:
        future = self._answers.get(round)
        if future is None:
            if self._link is None:
                raise RuntimeError("SampledTopology is not attached to a node")
            future = asyncio.get_running_loop().create_future()
            self._answers[round] = future
            self._link.spawn(self.sampler, Overlay(self.node, round, ASK))
        return future

    async def _answer(self, round: int) -> tuple[list[int], list[int]]:
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._ask(round)
        except TimeoutError:
            raise TimeoutError(
                f"round {round}: the peer sampler (process {self.sampler}) did not answer "
                f"within {self.timeout:g} s"
            ) from None
        if round + 1 < self.rounds:
            self._ask(round + 1)  # the next round's answer travels while this one runs
        for old in [r for r in self._answers if r < round]:
            del self._answers[old]
        return answer

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        peers, _ = await self._answer(round)
        return frozenset(peers)

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        peers, degrees = await self._answer(round)
        local = dict(zip(peers, degrees, strict=True))
        local[node] = len(peers)
        return metropolis_hastings_row(node, local)
