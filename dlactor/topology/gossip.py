"""Decentralized peer sampling: a gossip membership service inside every node, no sampler.

Two parts, both running on each node's own transport:

**Cyclon** (Voulgaris, Gavidia and van Steen, 2005; the "gossip-based peer sampling"
framework of Jelasity et al., TOCS 2007). Each node keeps a partial view of at most
``view_size`` (node, age) entries. Once a round it ages its entries, takes the oldest one
``q`` out of its view and sends ``q`` up to ``shuffle_length - 1`` random entries plus a
fresh entry for itself (``shuffle``); ``q`` answers with up to ``shuffle_length`` of its own
(``shuffled``). Both merge what they got: entries for themselves and ones they already have
are dropped, empty slots are filled first, then entries they sent away are replaced. Views
stay connected, ages push out nodes that stopped answering (an entry that cannot be
contacted is dropped), and a new node that knows one contact spreads through the views.

**Edges from the view, made symmetric.** A node picks its neighbours for a round at random
from its view, which makes a *directed* choice: i picking j says nothing about whom j
picked, and j cannot know in advance who will pick it. D-PSGD needs both ends of an edge to
know it in the same round (each waits for the other's model), so every pick is a proposal
that the picked node answers at once, ``accept`` or ``refuse``:

- a node accepts a pick for round r while it has not closed round r and has a free slot
  (accepted edges + its own pending picks < ``degree``); if its slots are taken only
  because some of its own picks are still pending, it answers when they are (a refused
  one frees a slot), but only to a smaller node id, so that waits never form a cycle;
  otherwise it refuses;
- a node closes round r only when all its own picks for r are answered; from then on it
  refuses picks for r; a refusal never undoes an edge accepted the other way.

So the edge {i, j} exists in round r exactly when one side accepted the other's pick, and
both know it before either closes r: the round's graph is undirected and consistent, with
every degree at most ``degree``. Picks for round r + 1 go out as soon as round r closes,
while the node trains, so they are answered long before they are needed.

Mixing weights are the "maximum-degree" weights ``1 / (degree + 1)`` per neighbour, the rest
on the node itself: symmetric and doubly stochastic for any graph whose degrees are at most
``degree``, so the average is preserved exactly, and equal to Metropolis-Hastings weights
when the round's graph is ``degree``-regular. (Metropolis-Hastings would need each
neighbour's final degree, which is known only when that neighbour closes the round.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dlactor.messages import Overlay
from dlactor.topology.base import OverlayLink
from dlactor.transport.base import TransportClosed, UnknownPeer
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.churn.availability import Availability

__all__ = [
    "ACCEPT",
    "PICK",
    "REFUSE",
    "SHUFFLE",
    "SHUFFLED",
    "CyclonView",
    "GossipTopology",
    "bootstrap_contacts",
]

SHUFFLE, SHUFFLED, PICK, ACCEPT, REFUSE = "shuffle", "shuffled", "pick", "accept", "refuse"

#: Rounds a shuffle may wait for its answer before the partner is taken for gone.
SHUFFLE_PATIENCE = 3


class CyclonView:
    """One node's Cyclon view: at most ``size`` (node, age) entries, never itself."""

    checkpointed = ("ages", "rng")

    def __init__(
        self,
        owner: int,
        size: int,
        shuffle_length: int,
        rng: np.random.Generator,
        contacts: Iterable[int] = (),
    ) -> None:
        if not 1 <= shuffle_length <= size:
            raise ValueError(f"shuffle_length must be in 1..{size}, got {shuffle_length}")
        self.owner, self.size, self.shuffle_length, self.rng = owner, size, shuffle_length, rng
        self.ages: dict[int, int] = {}
        for node in contacts:
            if node != owner and len(self.ages) < size:
                self.ages[node] = 0

    def __contains__(self, node: int) -> bool:
        return node in self.ages

    def __len__(self) -> int:
        return len(self.ages)

    @property
    def nodes(self) -> list[int]:
        return sorted(self.ages)

    def _random(self, k: int, exclude: Iterable[int] = ()) -> list[int]:
        skip = set(exclude)
        pool = [n for n in self.nodes if n not in skip]
        if k >= len(pool):
            return pool
        return sorted(int(n) for n in self.rng.choice(pool, size=k, replace=False))

    def start_shuffle(self) -> tuple[int, list[int], list[int]] | None:
        """Age every entry; take the oldest out of the view. Returns (that node, the entries
        to send it: ``shuffle_length - 1`` random others and the owner at age 0), or None
        when the view is empty."""
        if not self.ages:
            return None
        for node in self.ages:
            self.ages[node] += 1
        oldest = max(self.ages.items(), key=lambda item: (item[1], -item[0]))[0]
        del self.ages[oldest]
        sent = self._random(self.shuffle_length - 1)
        return oldest, [self.owner, *sent], [0, *(self.ages[n] for n in sent)]

    def answer(self, nodes: list[int], ages: list[int]) -> tuple[list[int], list[int]]:
        """A shuffle arrived: the entries sent back, and the view merged with what came."""
        back = self._random(self.shuffle_length, exclude=nodes)
        reply = (back, [self.ages[n] for n in back])
        self.merge(nodes, ages, sent=back)
        return reply

    def merge(self, nodes: list[int], ages: list[int], sent: list[int]) -> None:
        """Cyclon's merge: skip the owner and known entries (keeping the younger age), fill
        empty slots, then replace entries that were sent away."""
        replaceable = [n for n in sent if n in self.ages]
        for node, age in zip(nodes, ages, strict=True):
            if node == self.owner:
                continue
            if node in self.ages:
                self.ages[node] = min(self.ages[node], age)
            elif len(self.ages) < self.size:
                self.ages[node] = age
            elif replaceable:
                del self.ages[replaceable.pop()]
                self.ages[node] = age

    def remove(self, node: int) -> None:
        """``node`` could not be contacted: forget it."""
        self.ages.pop(node, None)

    def sample(self, k: int, exclude: Iterable[int] = ()) -> list[int]:
        """Up to ``k`` distinct nodes of the view, uniformly at random."""
        return self._random(k, exclude)


@dataclass
class _Round:
    """One round's edges as they are being agreed."""

    edges: set[int] = field(default_factory=set)
    pending: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    tried: set[int] = field(default_factory=set)
    picked_by: set[int] = field(default_factory=set)  # whose picks for this round came in
    #: Picks that arrived while every slot was taken by an agreed edge or a pick of ours
    #: still pending: answered when those are (a refused pick of ours frees a slot).
    deferred: list[int] = field(default_factory=list)
    fill: asyncio.Task[None] | None = None
    #: Picks given up on for want of an answer (their nodes left the view).
    unanswered: set[int] = field(default_factory=set)

    def taken(self) -> int:
        """Slots used: agreed edges and picks awaiting an answer (a node in both counts once)."""
        return len(self.edges | self.pending.keys())


class GossipTopology:
    """Each round: a Cyclon shuffle, and up to ``degree`` neighbours agreed from the view."""

    #: A checkpoint saves the view and the shuffle awaiting its answer (rounds being agreed
    #: are agreed afresh after a resume: gossip runs are timing-dependent anyway).
    checkpointed = ("view", "_shuffling")

    def __init__(
        self,
        *,
        node: int,
        nodes: int,
        degree: int,
        view_size: int,
        shuffle_length: int,
        seed: int,
        rounds: int,
        contacts: Iterable[int],
        timeout: float,
        answer_timeout: float | None = None,
        availability: Availability | None = None,
    ) -> None:
        if not 1 <= degree < nodes:
            raise ValueError(f"degree must be in [1, nodes) = [1, {nodes}), got {degree}")
        self.node, self.nodes, self.degree, self.rounds = node, nodes, degree, rounds
        self.timeout = timeout
        #: A pick unanswered this long counts as refused, and its node as gone (it is
        #: dropped from the view). Answers take milliseconds: by default, the round timeout.
        self.answer_timeout = timeout if answer_timeout is None else answer_timeout
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(node,)))
        self.view = CyclonView(node, view_size, shuffle_length, rng, contacts)
        self._link: OverlayLink | None = None
        self.persistent_peers: frozenset[int] = frozenset()
        self._rounds: dict[int, _Round] = {}
        self._closed = -1  # rounds up to this one are closed
        #: The shuffle awaiting its answer: (partner, entries sent, round it started). A new
        #: one starts only when it is answered (entries the partner sent away in its answer
        #: would be lost otherwise) or given up on after SHUFFLE_PATIENCE rounds.
        self._shuffling: tuple[int, list[int], int] | None = None
        self._shuffle: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: With a schedule, picks go only to nodes online in the pick's round.
        self.availability = availability

    #: Picks go only to nodes online in the round (the node need not filter).
    handles_availability = True

    def _online(self, node: int, round: int) -> bool:
        return self.availability is None or self.availability.online(node, round)

    # ----------------------------------------------------------------- the round's graph

    def attach(self, link: OverlayLink) -> None:
        self._link = link

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        if round <= self._closed:
            return frozenset(self._rounds[round].edges)
        state = self._state(round)
        if state.fill is None:
            state.fill = asyncio.get_running_loop().create_task(self._fill(round))
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(state.fill)
        except TimeoutError:
            # The fill may have given up on them in this very instant (its answer timeout
            # is the round timeout by default): name them either way.
            waiting = sorted(state.pending.keys() | state.unanswered)
            raise TimeoutError(
                f"round {round}: node(s) {waiting} did not answer this node's pick "
                f"within {self.timeout:g} s"
            ) from None
        self._close(round)
        if round + 1 < self.rounds and self._online(self.node, round + 1):
            nxt = self._state(round + 1)
            if nxt.fill is None:
                nxt.fill = asyncio.get_running_loop().create_task(self._fill(round + 1))
        if self._shuffling is not None and round - self._shuffling[2] >= SHUFFLE_PATIENCE:
            self._shuffling = None  # the partner never answered: it stays out of the view
        if self._shuffling is None and (self._shuffle is None or self._shuffle.done()):
            self._shuffle = asyncio.get_running_loop().create_task(self._start_shuffle(round))
        return frozenset(state.edges)

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        peers = await self.neighbors(node, round)
        share = 1.0 / (self.degree + 1)
        row = dict.fromkeys(peers, share)
        row[node] = 1.0 - share * len(peers)
        return dict(sorted(row.items()))

    def _state(self, round: int) -> _Round:
        return self._rounds.setdefault(round, _Round())

    def _close(self, round: int) -> None:
        self._closed = max(self._closed, round)
        for old in [r for r in self._rounds if r < round]:
            state = self._rounds.pop(old)
            if state.fill is not None:
                state.fill.cancel()

    async def _fill(self, round: int) -> None:
        """Pick from the view until ``degree`` edges are agreed or no candidate is left;
        answer the picks deferred meanwhile."""
        state = self._state(round)
        loop = asyncio.get_running_loop()
        while True:
            self._settle(round, state)
            free = self.degree - state.taken()
            skip = state.edges | state.tried
            if self.availability is not None:
                skip = skip | {p for p in self.view.nodes if not self._online(p, round)}
            for peer in self.view.sample(free, exclude=skip) if free > 0 else []:
                state.tried.add(peer)
                state.pending[peer] = loop.create_future()
                task = loop.create_task(self._pick(round, peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not state.pending:
                self._settle(round, state)
                return
            done, _ = await asyncio.wait(
                list(state.pending.values()),
                timeout=self.answer_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:  # nobody answered in time: those nodes are gone
                for peer in list(state.pending):
                    self.view.remove(peer)
                    state.unanswered.add(peer)
                    state.pending.pop(peer).cancel()
            for peer in [p for p, f in state.pending.items() if f in done]:
                if state.pending.pop(peer).result():
                    state.edges.add(peer)

    def _settle(self, round: int, state: _Round) -> None:
        """Answer deferred picks: accept while there is a free slot; once no pick of ours
        is pending, refuse the rest (no slot will free up)."""
        for peer in [p for p in state.deferred if p in state.edges]:  # it took our pick
            state.deferred.remove(peer)
            self._spawn(peer, Overlay(self.node, round, ACCEPT))
        while state.deferred and state.taken() < self.degree:
            peer = state.deferred.pop(0)
            state.edges.add(peer)
            self._spawn(peer, Overlay(self.node, round, ACCEPT))
        if not state.pending:
            for peer in state.deferred:
                self._spawn(peer, Overlay(self.node, round, REFUSE))
            state.deferred.clear()

    async def _pick(self, round: int, peer: int) -> None:
        try:
            await self._send(peer, Overlay(self.node, round, PICK))
        except (ConnectionError, TransportClosed, UnknownPeer):
            self.view.remove(peer)  # gone: a refusal
            self._answered(round, peer, accepted=False)

    def _answered(self, round: int, peer: int, *, accepted: bool) -> None:
        state = self._rounds.get(round)
        future = state.pending.get(peer) if state is not None else None
        if future is not None and not future.done():
            future.set_result(accepted)

    def _on_pick(self, msg: Overlay) -> None:
        r, peer = msg.round, msg.sender
        state = None if r <= self._closed or r >= self.rounds else self._state(r)
        if state is not None:
            if peer in state.picked_by:
                raise RemoteProtocolError(f"node {peer} picked this node twice in round {r}")
            state.picked_by.add(peer)
        if state is None or not (self._online(self.node, r) and self._online(peer, r)):
            accept = False
        elif peer in state.edges or peer in state.pending:
            accept = True  # both picked each other: one edge
            state.edges.add(peer)
        elif state.taken() < self.degree:
            accept = True
            state.edges.add(peer)
        elif len(state.edges) < self.degree and peer < self.node and state.pending:
            # Full only with picks still pending: answer once they are (``_settle``). Only
            # a smaller id waits on a larger one, so waits never form a cycle.
            state.deferred.append(peer)
            return
        else:
            accept = False
        self._spawn(peer, Overlay(self.node, r, ACCEPT if accept else REFUSE))

    def lose(self, node: int) -> None:
        """``node`` died and the run goes on without it (the launcher's word): it leaves
        the view, and a pick of it still waiting for an answer counts as refused."""
        self.view.remove(node)
        for r in list(self._rounds):
            self._answered(r, node, accepted=False)

    async def aclose(self) -> None:
        """Refuse every pick from now on and cancel what is still running (the node is
        stopping; the node's link still sends the answers already queued)."""
        self._closed = self.rounds
        tasks = [*self._tasks, self._shuffle]
        tasks += [state.fill for state in self._rounds.values()]
        running = [t for t in tasks if t is not None and not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # ----------------------------------------------------------------- the view

    async def _start_shuffle(self, round: int) -> None:
        started = self.view.start_shuffle()
        if started is None:
            return
        partner, nodes, ages = started
        self._shuffling = (partner, nodes[1:], round)
        try:
            await self._send(partner, Overlay(self.node, round, SHUFFLE, nodes, ages))
        except (ConnectionError, TransportClosed, UnknownPeer):
            self._shuffling = None  # the partner is gone; it stays out of the view

    def _on_shuffle(self, msg: Overlay) -> None:
        back, ages = self.view.answer(msg.nodes, msg.values)
        self._spawn(msg.sender, Overlay(self.node, msg.round, SHUFFLED, back, ages))

    def _on_shuffled(self, msg: Overlay) -> None:
        if self._shuffling is None or self._shuffling[0] != msg.sender:
            return  # a late answer to a shuffle given up on: nothing to merge it with
        _, sent, _ = self._shuffling
        self._shuffling = None
        self.view.merge(msg.nodes, msg.values, sent=sent)

    # ----------------------------------------------------------------- messages

    def on_overlay(self, msg: Overlay) -> None:
        self._check(msg)
        if msg.op == PICK:
            self._on_pick(msg)
        elif msg.op in (ACCEPT, REFUSE):
            self._answered(msg.round, msg.sender, accepted=msg.op == ACCEPT)
        elif msg.op == SHUFFLE:
            self._on_shuffle(msg)
        else:
            self._on_shuffled(msg)

    def _check(self, msg: Overlay) -> None:
        if msg.op not in (PICK, ACCEPT, REFUSE, SHUFFLE, SHUFFLED):
            raise RemoteProtocolError(f"node {msg.sender} sent {msg.op!r} to a gossip topology")
        if msg.sender >= self.nodes or msg.sender == self.node:
            raise RemoteProtocolError(f"an overlay message from node {msg.sender}: not a peer")
        if msg.op in (SHUFFLE, SHUFFLED):
            limit = self.view.shuffle_length
            if len(msg.nodes) != len(msg.values) or len(msg.nodes) > limit:
                raise RemoteProtocolError(
                    f"node {msg.sender}'s {msg.op} has {len(msg.nodes)} nodes and "
                    f"{len(msg.values)} ages (at most {limit} pairs)"
                )
            if len(set(msg.nodes)) != len(msg.nodes) or any(n >= self.nodes for n in msg.nodes):
                raise RemoteProtocolError(f"node {msg.sender}'s {msg.op} names unknown nodes")
        elif msg.nodes or msg.values:
            raise RemoteProtocolError(f"node {msg.sender}'s {msg.op} carries data it should not")

    async def _send(self, peer: int, msg: Overlay) -> None:
        if self._link is None:
            raise RuntimeError("GossipTopology is not attached to a node")
        await self._link.send(peer, msg)

    def _spawn(self, peer: int, msg: Overlay) -> None:
        if self._link is None:
            raise RuntimeError("GossipTopology is not attached to a node")
        self._link.spawn(peer, msg)


def bootstrap_contacts(node: int, nodes: int, view_size: int) -> list[int]:
    """Whom a node knows at the start: its nearest ring neighbours, half on each side, up
    to ``view_size`` (a deliberately poor start: gossip has to mix it)."""
    out: list[int] = []
    for step in range(1, nodes):
        for peer in ((node + step) % nodes, (node - step) % nodes):
            if peer != node and peer not in out and len(out) < view_size:
                out.append(peer)
        if len(out) >= view_size:
            break
    return out
