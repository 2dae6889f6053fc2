"""The node actor: build, ``start``, ``run`` its algorithm's rounds, ``stop``.

A node is one process of a run: a learning node, or an algorithm's server (a FedAvg server,
a parameter server). It owns the transport, the mailbox, the model and the strategies; what
it does in a round is its algorithm's (``dlactor.algorithms``: D-PSGD by default), which
uses the helpers here (``exchange``, ``evaluate``, the record fields).

The constructor only builds (no sockets, no tasks), so a node can be made in a test
with no network. ``start`` opens the transport, ``connect`` gives it the address
book, ``run`` runs the rounds, ``stop`` closes everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dlactor.algorithms.base import Record
from dlactor.checkpoint.files import save_node
from dlactor.churn.availability import Availability
from dlactor.context import (
    ModelDiverged,
    PayloadAliasesModel,
    Roster,
    RoundContext,
    SendStalled,
    TrainStats,
)
from dlactor.messages import Message, Overlay, Payload, Share
from dlactor.metrics.memory import ResidentMemory
from dlactor.network.clock import Clock
from dlactor.node.mailbox import Mailbox
from dlactor.node.rosters import ROSTER, RosterBook, roster_message
from dlactor.security.agreement import PairwiseKeys
from dlactor.sharing.base import ChecksPayloads, Reports, SharesPerPeer, Sharing
from dlactor.sharing.lossless import Lossless
from dlactor.sharing.ops import aliased, all_finite, check_finite, model_tensors
from dlactor.topology.base import Topology, UsesOverlay
from dlactor.training.base import Trainer
from dlactor.transport.base import (
    Address,
    Deliver,
    PeerUnreachable,
    SendTimeout,
    TrafficStats,
    Transport,
)
from dlactor.transport.emulated import EmulatedTransport
from dlactor.transport.link import Link
from dlactor.wire.codec import encode, encoded_size
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.algorithms.base import Algorithm

__all__ = [
    "ModelDiverged",
    "Node",
    "Record",
    "RoundStart",
    "SendStalled",
]  # the errors: re-exported

log = logging.getLogger("dlactor.node")


@dataclass(frozen=True, slots=True)
class RoundStart:
    """Where a round's counters stood when it began (``Node.new_record``)."""

    stats: TrafficStats
    overlay: tuple[int, int, int, int]
    t_start: float


class Node:
    """One process of a run: its strategies, transport, mailbox, and its algorithm's rounds.

    ``topology`` may be None for a process whose algorithm has no neighbours (a FedAvg
    server or client); ``algorithm`` defaults to D-PSGD. ``processes`` is the run's count
    of processes that may send this one shares (nodes and servers; default ``nodes``).
    """

    def __init__(
        self,
        *,
        node: int,
        transport: Callable[[Deliver], Transport],
        topology: Topology | None,
        sharing: Sharing,
        trainer: Trainer,
        model: torch.nn.Module,
        rounds: int,
        eval_every: int,
        round_timeout: float,
        on_round: Callable[[Record], None] | None = None,
        nodes: int | None = None,
        allow_nonfinite: bool = False,
        algorithm: Algorithm | None = None,
        processes: int | None = None,
        lookahead: int = 1,
        availability: Availability | None = None,
        survive: bool = False,
        checkpoint_every: int = 0,
        run_dir: Path | None = None,
    ) -> None:
        from dlactor.algorithms.dpsgd import DPSGD

        self.node = node
        self.nodes = nodes
        self.algorithm: Algorithm = DPSGD() if algorithm is None else algorithm
        senders = processes if processes is not None else nodes
        self.mailbox = Mailbox(senders=senders, rounds=rounds, lookahead=lookahead)
        self.allow_nonfinite = allow_nonfinite
        self.transport = transport(self.deliver)
        self.transport.on_handshake = self.mailbox.count
        self.topology, self.sharing, self.trainer = topology, sharing, trainer
        # Capabilities, worked out once rather than per message or round.
        self._overlay = topology if isinstance(topology, UsesOverlay) else None
        self._persistent: frozenset[int] = frozenset(getattr(topology, "persistent_peers", ()))
        self._checks = sharing if isinstance(sharing, ChecksPayloads) else None
        self._lossless = sharing if isinstance(sharing, Lossless) else None
        self._reports = sharing if isinstance(sharing, Reports) else None
        #: The sharing strategy when it sends each peer its own payload, else None.
        self.per_peer = sharing if isinstance(sharing, SharesPerPeer) else None
        #: This process's X25519 key pair when its sharing masks (its public key goes into
        #: the address book; ``learn_agreement`` takes everyone's at the start barrier).
        agreement = getattr(sharing, "agreement", None)
        self.agreement = agreement if isinstance(agreement, PairwiseKeys) else None
        # Rosters come as messages only where the topology cannot tell a sender them.
        asks = self.per_peer is not None and self.per_peer.needs_rosters
        sees = topology is None or getattr(topology, "sees_every_node", False)
        self._rosters: RosterBook | None = None
        if asks and not sees:
            count = nodes if nodes is not None else 1 << 16
            limit = getattr(topology, "degree", None)
            self._rosters = RosterBook(node, count, limit if isinstance(limit, int) else count)
        self._secure_bytes = 0  # this round's bytes of rosters sent
        self.model = model
        self._model_tensors = model_tensors(model)  # what no outgoing payload may share
        self.rounds, self.eval_every, self.round_timeout = rounds, eval_every, round_timeout
        self.on_round = on_round
        self.t0 = time.time()
        self._rss = ResidentMemory()
        self._peers: frozenset[int] = frozenset()  # the last round's neighbours
        self._recorded_row: tuple[tuple[int, ...], tuple[float, ...]] | None = None
        self.link = Link(node, self.transport)
        #: The emulated network's transport and its clock (``[network]``), else None.
        self._emulated = self.transport if isinstance(self.transport, EmulatedTransport) else None
        self.clock: Clock | None = None if self._emulated is None else self._emulated.clock
        if self._emulated is not None and self._rosters is not None:
            self._emulated.untracked_ops.add(ROSTER)  # the roster wait reaches them itself
        self._t_compute = self._t_wait = 0.0  # this round's, on the clock
        if self._overlay is not None:
            self._overlay.attach(self.link)
        #: The run's availability schedule ([availability]), else None.
        self.availability = availability
        # A topology that knows the schedule recomputes the round's graph and weights over
        # the online nodes itself; for any other the node drops offline neighbours here.
        self._schedule_aware = bool(getattr(topology, "handles_availability", False))
        #: ``launcher.on_node_failure = "continue"``: a peer that dies is waited for no more
        #: once the launcher says it is lost (``lose``), instead of failing this node.
        self.survive = survive
        #: Peers the launcher said are lost, and the round each was lost in.
        self.lost: dict[int, int] = {}
        self._lost_news = asyncio.Event()
        #: The first round ``run`` runs (a resumed run's: the checkpoint's).
        self.first_round = 0
        #: The last round this node took part in (an offline node skips ahead: its first
        #: round back waits for neighbours still in the rounds it skipped).
        self._active = -1
        self._heard: dict[int, int] = {}  # with a schedule: peer -> the last round heard from
        #: Checkpoints every this many rounds and after the last (0: none), into ``run_dir``.
        self.checkpoint_every = checkpoint_every if run_dir is not None else 0
        self.run_dir = run_dir
        #: Seconds of the run before this launch (a resumed run's ``t_wall`` continues).
        self.t_wall_offset = 0.0

    def require_topology(self) -> Topology:
        if self.topology is None:
            raise RuntimeError(f"node {self.node}'s algorithm needs a topology; it has none")
        return self.topology

    def deliver(self, msg: Message, nbytes: int) -> None:
        """The transport's callback: payloads go to the mailbox, overlay messages to a topology
        that talks; nothing else belongs here.

        A payload is checked against this node's model as it arrives (when the sharing
        strategy can check), and for NaN and Inf (unless ``allow_nonfinite``): a
        RemoteProtocolError here makes the transport drop and log that connection, and the
        node carries on.
        """
        if isinstance(msg, Overlay) and msg.op == ROSTER and self._rosters is not None:
            self._rosters.put(msg)
            self.mailbox.count(nbytes)
            return
        if isinstance(msg, Overlay) and self._overlay is not None:
            self._overlay.on_overlay(msg)
            self.link.received(nbytes)
            self.mailbox.count(nbytes)
            return
        if not isinstance(msg, Share):
            raise RemoteProtocolError(f"unexpected {type(msg).__name__} on a peer connection")
        self.mailbox.put(msg, nbytes, check=lambda: self.algorithm.check(self, msg))

    def check_payload(self, sender: int, payload: Payload, *, sharing: bool = True) -> None:
        """The sharing strategy's check of ``payload`` (unless ``sharing`` is False), then
        NaN and Inf (unless ``allow_nonfinite``): RemoteProtocolError naming ``sender``."""
        try:
            if sharing and self._checks is not None:
                self._checks.check(self.model, payload)
            if not self.allow_nonfinite:
                plain = payload
                if sharing and self._lossless is not None:
                    plain = self._lossless.unpacked(payload)
                check_finite(plain)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"node {sender} sent an unusable payload: {exc}") from exc

    async def start(self) -> Address:
        return await self.transport.start()

    def learn_agreement(self, keys: Mapping[int, bytes]) -> None:
        """The run's X25519 public keys (the start barrier's address book), if this node
        masks: ValueError if its own is not among them as it made it."""
        if self.agreement is not None:
            self.agreement.learn(keys)

    def connect(self, addresses: Mapping[int, Address], t0: float | None = None) -> None:
        """Give the transport the address book; ``t0`` is the start barrier's wall time."""
        self.transport.set_peers(addresses)
        self.link.ready.set()
        self.t0 = (time.time() if t0 is None else t0) - self.t_wall_offset
        if self._emulated is not None:
            self._emulated.begin(self.t0)

    async def run(self) -> None:
        for r in range(self.first_round, self.rounds):
            if self.sits_out(r):
                record = await self.offline_round(r)
            else:
                record = await self.run_round(r)
                self._active = r
            if self.on_round is not None:
                self.on_round(record)
            if self._checkpoints(r + 1):
                assert self.run_dir is not None
                save_node(self, self.run_dir, r + 1)

    def _checkpoints(self, next_round: int) -> bool:
        """Whether to save this node's state before ``next_round``: every
        ``checkpoint_every`` rounds, and after the last. Once a node is lost no later
        checkpoint can be complete (it takes none): only the final models are saved."""
        every = self.checkpoint_every
        if not every:
            return False
        if next_round == self.rounds:
            return True
        return next_round % every == 0 and not self.lost

    def resume_at(self, round: int) -> None:
        """Its state was just loaded from the checkpoint before ``round``: run from there."""
        self.first_round = round
        self._active = round - 1
        if round > 0:
            self.mailbox.finish(round - 1)

    def sits_out(self, r: int) -> bool:
        """Whether this node is offline in round ``r`` by the availability schedule (a
        server or a service never is)."""
        return self.availability is not None and not self.availability.online(self.node, r)

    async def offline_round(self, r: int) -> Record:
        """Round ``r`` spent offline: no training, no messages; the model stays as it is
        (evaluated on an evaluation round all the same: measuring it is the experimenter's
        doing, not the node's), recorded with ``online: false``."""
        record, start = self.new_record(r)
        record["online"] = False
        evaluates = getattr(self.algorithm, "evaluates", True)
        ctx = RoundContext(node=self.node, round=r, model=self.model) if evaluates else None
        return await self.close_record(record, start, ctx)

    def lose(self, peer: int, round: int) -> None:
        """The launcher says ``peer`` died in ``round`` and the run goes on without it: no
        round waits for it from now on, and it is nobody's neighbour any more."""
        if peer in self.lost or peer == self.node:
            return
        self.lost[peer] = round
        self.mailbox.gone(peer)
        self.transport.close_peer(peer)
        lose = getattr(self.topology, "lose", None)
        if lose is not None:  # a topology that keeps peers of its own (gossip's view)
            lose(peer)
        self._lost_news.set()
        log.info("node %d: node %d is lost (round %d); going on without it", self.node, peer, round)

    async def _wait_lost(self, peers: Iterable[int], deadline: float) -> bool:
        """Wait until the launcher has said every one of ``peers`` is lost, up to
        ``deadline`` (loop time): True if it has."""
        loop = asyncio.get_running_loop()
        waiting = set(peers)
        while not waiting <= self.lost.keys():
            self._lost_news.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._lost_news.wait()
            except TimeoutError:
                return waiting <= self.lost.keys()
        return True

    def drop_missing(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        """Neighbours whose payload never came (they were lost mid-round) leave this round:
        their mixing weight goes to this node's own model, which keeps the row summing to 1
        and, the matrix being symmetric, the survivors' average."""
        missing = ctx.peers - received.keys()
        if missing:
            ctx.peers, ctx.weights = self._without(ctx.peers, ctx.weights, missing)

    def _without(
        self, peers: frozenset[int], weights: Mapping[int, float], drop: Iterable[int]
    ) -> tuple[frozenset[int], dict[int, float]]:
        gone = set(drop) & peers
        row = {p: w for p, w in weights.items() if p not in gone}
        row[self.node] = weights.get(self.node, 0.0) + sum(weights.get(p, 0.0) for p in gone)
        return peers - gone, row

    def evaluates(self, r: int) -> bool:
        return (r + 1) % self.eval_every == 0 or r == self.rounds - 1

    async def run_round(self, r: int) -> Record:
        """Round ``r`` of this process's algorithm; its record."""
        return await self.algorithm.round(self, r)

    def new_record(self, r: int) -> tuple[Record, RoundStart]:
        """A round's record as it begins, and its counters' starting point for
        ``close_record``."""
        start = RoundStart(
            self.transport.stats.snapshot(), self.link.counters(), time.perf_counter()
        )
        self._t_compute = self._t_wait = 0.0
        self._secure_bytes = 0
        return {"node": self.node, "round": r}, start

    async def train(self, ctx: RoundContext) -> tuple[TrainStats, float]:
        """The trainer's local steps on ``ctx.model``, then the divergence check
        (ModelDiverged); the stats and the seconds they took."""
        t_start, cpu = time.perf_counter(), time.process_time()
        stats = await self.trainer.train(ctx)
        t_train = time.perf_counter() - t_start
        await self.charge(time.process_time() - cpu, steps=stats.steps)
        self.check_finite_own(ctx.round, self.model.parameters())
        return stats, t_train

    async def charge(self, cpu_s: float, *, steps: int = 0, merged: int = 0) -> None:
        """Compute just done (``cpu_s`` of CPU time, ``steps`` local steps, ``merged`` models
        merged) moves the emulated network's clock (a no-op without one)."""
        if self.clock is not None:
            self._t_compute += await self.clock.compute(cpu_s, steps=steps, merged=merged)

    async def aggregate(
        self,
        ctx: RoundContext,
        received: Mapping[int, Payload],
        merge: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Merge ``received`` (the sharing strategy's ``aggregate``, or ``merge``), its CPU
        time charged to the clock."""
        cpu = time.process_time()
        await (self.sharing.aggregate(ctx, received) if merge is None else merge())
        await self.charge(time.process_time() - cpu, merged=len(received))

    async def collect(
        self, r: int, senders: Iterable[int], timeout: float, *, deadline: float | None = None
    ) -> dict[int, Payload]:
        """The mailbox's ``wait_round``; on an emulated network, the clock then moves to when
        the last of them is in (and the wait is this round's ``t_wait``)."""
        t_start = time.perf_counter()
        got = await self.mailbox.wait_round(r, senders, timeout, deadline=deadline)
        if self.availability is not None:
            self._heard.update(dict.fromkeys(got, r))
        if self._emulated is not None:
            clock = self._emulated.clock
            if clock.virtual:
                self._t_wait += clock.reach(self._emulated.take_shares(r, got))
            else:
                self._t_wait += time.perf_counter() - t_start
        return got

    async def neighbours(self, r: int) -> tuple[frozenset[int], Mapping[int, float]]:
        """The topology's neighbours and mixing weights for round ``r``; on the virtual
        clock, not before the topology's messages of that round (a peer sampler's answer)."""
        topology = self.require_topology()
        peers = await topology.neighbors(self.node, r)
        weights = await topology.weights(self.node, r)
        if self._emulated is not None:
            self._t_wait += self._emulated.clock.reach(self._emulated.overlay_arrival(r))
        drop = {p for p in peers if p in self.lost}
        if self.availability is not None and not self._schedule_aware:
            drop |= {p for p in peers if not self.availability.online(p, r)}
        if drop:
            peers, weights = self._without(peers, weights, drop)
        return peers, weights

    def check_finite_own(
        self, r: int, tensors: Iterable[torch.Tensor], what: str = "model"
    ) -> None:
        """ModelDiverged if this node's own ``tensors`` (its model, a gradient it computed)
        hold NaN or Inf, unless ``allow_nonfinite``: never send them on."""
        if not self.allow_nonfinite and not all_finite(tensors):
            raise ModelDiverged(self.node, r, what)

    async def close_record(
        self, record: Record, start: RoundStart, ctx: RoundContext | None
    ) -> Record:
        """Finish round ``record["round"]``'s record: what it received, its times and memory,
        its evaluation (with ``ctx`` on an evaluation round), then what it sent."""
        r = record["round"]
        self.mailbox.finish(r)  # a round the node sat out (a FedAvg client) is over too
        got = self.mailbox.take_received(r)
        record.update(
            bytes_recv=got.nbytes,
            msgs_recv=got.msgs,
            t_wall=time.time() - self.t0,
            t_round=time.perf_counter() - start.t_start,
            rss_bytes=self._rss.bytes(),
        )
        if self.clock is not None:
            if self.clock.virtual:
                record["t_virtual"] = self.clock.t
            record.update(t_compute=self._t_compute, t_wait=self._t_wait)
        if self.agreement is not None or self.per_peer is not None:
            record["secure_bytes_sent"] = self._secure_bytes
        if self._reports is not None:
            record.update(self._reports.report())
        if ctx is not None and self.evaluates(r):
            record.update(await self.evaluate(ctx))
        # After evaluating: a challenge this node wrote meanwhile (to a peer connecting to
        # it) belongs to this round, not to none.
        sent = self.transport.stats.minus(start.stats)
        record["bytes_sent"], record["msgs_sent"] = sent.bytes_sent, sent.msgs_sent
        return record

    def _as_made(self, payload: Payload) -> Payload:
        """``payload`` before the sharing strategy's lossless compression, if it has any."""
        return payload if self._lossless is None else self._lossless.as_made(payload)

    def check_own(self, share: Share) -> None:
        """A strategy can overflow a finite model into Inf: never send it (ModelDiverged)."""
        if self.allow_nonfinite:
            return
        try:
            check_finite(self._as_made(share.payload))
        except RemoteProtocolError:
            raise ModelDiverged(self.node, share.round, "share") from None

    def overlay_record(self, before: tuple[int, int, int, int]) -> Record:
        """What the topology's own messages cost this round (only for topologies that talk)."""
        if self._overlay is None:
            return {}
        now = self.link.counters()
        names = (
            "overlay_msgs_sent",
            "overlay_bytes_sent",
            "overlay_msgs_recv",
            "overlay_bytes_recv",
        )
        return {name: a - b for name, a, b in zip(names, now, before, strict=True)}

    def topology_record(self, peers: frozenset[int], weights: Mapping[int, float]) -> Record:
        """This round's neighbours and their mixing weights, when they differ from the last
        recorded ones: the run's topology round by round, at the cost of one list per change
        (the launcher writes every round's graph from it into topology_rounds.jsonl, and
        ``dlactor report`` plots its degrees and spectral gap)."""
        order = sorted(peers)
        row = (tuple(order), tuple(float(weights.get(p, 0.0)) for p in order))
        if row == self._recorded_row:
            return {}
        self._recorded_row = row
        return {"peers": order, "weights": list(row[1])}

    def close_former_peers(self, peers: frozenset[int]) -> None:
        """Close the connections to last round's neighbours (and to the peers the topology
        talked to) that are not neighbours now.

        Only here, once that round is over on this side: its share went out to them (its
        send completed) and theirs came in. What a peer has not read yet still reaches it
        (the transport closes gracefully), so a dynamic topology never loses a message to
        a close, and connections never pile up: at most this round's neighbours, plus the
        closes still flushing to peers that have not read their last message yet. A peer
        the topology is still sending to is left open (it is closed in a later round).
        """
        former = self._peers | self.link.contacts
        keep = peers | self._persistent
        self.link.contacts = {p for p in self.link.contacts if self.link.busy(p)}
        for peer in former - keep - self.link.contacts:
            self.transport.close_peer(peer)
        self._peers = peers

    async def exchange(self, share: Share, peers: frozenset[int]) -> dict[int, Payload]:
        """Send this round's share and collect the neighbours', both within one round timeout:
        a neighbour that stops reading must fail the round as surely as one that stops
        sending, instead of hanging it in ``drain``."""
        allowed = self.round_allowance(share.round, peers)
        deadline = asyncio.get_running_loop().time() + allowed
        await self.send(peers, share, deadline)
        return await self.collect(share.round, peers, allowed, deadline=deadline)

    def round_allowance(self, r: int, peers: Iterable[int]) -> float:
        """How long round ``r``'s exchange may take: a round timeout; with an availability
        schedule, one per round since this node last took part (it skipped the others
        offline) or since it last heard from the peer heard from longest ago (nodes cut off
        by offline neighbours run ahead of the rest, which then take those rounds to catch
        up)."""
        if self.availability is None:
            return self.round_timeout
        behind = max((r - self._heard.get(p, -1) for p in peers), default=1)
        return self.round_timeout * max(1, r - self._active, behind)

    async def exchange_each(self, ctx: RoundContext) -> dict[int, Payload]:
        """``exchange`` for a strategy that sends each peer its own payload: the receivers'
        rosters first (when it needs them), then its payloads, then the peers'; all within
        one round timeout."""
        if self.per_peer is None:
            raise RuntimeError(f"node {self.node}'s sharing sends one payload to everyone")
        allowed = self.round_allowance(ctx.round, ctx.peers)
        deadline = asyncio.get_running_loop().time() + allowed
        if self.per_peer.needs_rosters:
            ctx.rosters = await self.rosters(ctx, deadline)
        payloads = await self.outgoing_each(ctx)
        shares = {peer: Share(self.node, ctx.round, payloads[peer]) for peer in sorted(ctx.peers)}
        for share in shares.values():
            self.check_own(share)
        await self.send_each(shares, deadline)
        return await self.collect(ctx.round, ctx.peers, allowed, deadline=deadline)

    async def outgoing_each(self, ctx: RoundContext) -> Mapping[int, Payload]:
        """The sharing strategy's payload for each peer, its CPU time charged to the clock
        (secure aggregation's masks are most of its cost)."""
        if self.per_peer is None:
            raise RuntimeError(f"node {self.node}'s sharing sends one payload to everyone")
        cpu = time.process_time()
        payloads = await self.per_peer.outgoing_each(ctx)
        await self.charge(time.process_time() - cpu)
        return payloads

    async def rosters(self, ctx: RoundContext, deadline: float) -> dict[int, Roster]:
        """Each peer's roster this round: from the topology when it sees every node, else
        sent (this node's own to its peers) and received (theirs), by ``deadline``.

        A sender weighs its model by its own weight for the receiver, which is the
        receiver's for it (mixing matrices are symmetric). A roster that says otherwise
        (a receiver lying to make its other senders send it nothing) gets a skip notice
        instead of this node's model, logged."""
        topology = self.require_topology()
        peers, r = ctx.peers, ctx.round
        if self._rosters is None:
            return {p: Roster(await topology.neighbors(p, r), ctx.weights[p]) for p in peers}
        loop = asyncio.get_running_loop()
        msg = roster_message(self.node, r, {p: ctx.weights[p] for p in peers})
        try:
            remaining = max(deadline - loop.time(), 0.0)
            await self.transport.send_all(sorted(peers), msg, timeout=remaining)
        except SendTimeout as exc:
            raise SendStalled(r, exc.peers, self.round_timeout) from exc
        # the rosters' own frames (a connection's handshake the share would need anyway)
        size = EmulatedTransport.wire_size(msg) if self._emulated else encoded_size(encode(msg))
        self._secure_bytes += size * len(peers)
        got, arrival = await self._rosters.wait(r, peers, max(deadline - loop.time(), 0.0))
        if self._emulated is not None and self._emulated.clock.virtual:
            self._t_wait += self._emulated.clock.reach(arrival)
        out = {}
        for peer, roster in got.items():
            mine = ctx.weights[peer]
            if roster.weight != mine:
                log.warning(
                    "node %d: node %d's roster of round %d weighs this node %r, this node "
                    "weighs it %r: it gets a skip notice",
                    self.node,
                    peer,
                    r,
                    roster.weight,
                    mine,
                )
                roster = Roster(frozenset({self.node}), mine)  # one sender: a skip notice
            out[peer] = Roster(roster.senders, mine)
        return out

    def check_unaliased(self, payload: Payload) -> None:
        """PayloadAliasesModel if ``payload`` shares memory with this node's model: whatever
        made it (the sharing strategy, or the algorithm) has a bug that would otherwise run
        on unseen, with the transport sending parameters the next round is changing. Run on
        every share this node sends (``send``, ``send_each``), so no algorithm can skip it;
        a compressed payload is checked as the strategy made it."""
        alias = aliased(self._as_made(payload), self._model_tensors)
        if alias is not None:
            sharing = self.sharing if self._lossless is None else self._lossless.inner
            makers = f"sharing strategy {_name(sharing)} or algorithm {_name(self.algorithm)}"
            raise PayloadAliasesModel(makers, *alias)

    async def send_each(self, shares: Mapping[int, Share], deadline: float) -> None:
        """Send each peer its own share by ``deadline`` (loop time), as ``send`` does."""
        for share in shares.values():
            self.check_unaliased(share.payload)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            await self.transport.send_each(shares, timeout=remaining)
        except SendTimeout as exc:
            r = next(iter(shares.values())).round
            raise SendStalled(r, exc.peers, self.round_timeout) from exc

    async def send(self, peers: Iterable[int], share: Share, deadline: float | None = None) -> None:
        """Send ``share`` to ``peers`` by ``deadline`` (loop time; default: a round timeout
        from now): a peer that stops reading fails the round (SendStalled) instead of
        hanging it in ``drain``."""
        self.check_unaliased(share.payload)
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.round_timeout
        try:
            await self.transport.send_all(peers, share, timeout=max(deadline - loop.time(), 0.0))
        except SendTimeout as exc:
            raise SendStalled(share.round, exc.peers, self.round_timeout) from exc
        except PeerUnreachable as exc:
            # A peer that died before the launcher's word came: going on without it needs
            # that word (the launcher judges who is lost), so wait for it within the round.
            if not self.survive or not await self._wait_lost(exc.peers, deadline):
                raise

    async def evaluate(self, ctx: RoundContext) -> Record:
        t_eval = time.perf_counter()
        ev = await self.trainer.evaluate(ctx)
        record: Record = {"test_loss": ev.loss, "t_eval": time.perf_counter() - t_eval}
        if ev.rmse is None:
            record["test_acc"] = ev.accuracy
        else:
            record["test_rmse"] = ev.rmse
        return record

    async def stop(self) -> None:
        if self._overlay is not None:
            await self._overlay.aclose()
        await self.link.stop()
        await self.transport.stop()
        self._rss.close()


def _name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
