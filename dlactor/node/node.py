"""The node actor: build, ``start``, ``run`` the D-PSGD round loop, ``stop``.

The constructor only builds (no sockets, no tasks), so a node can be made in a test
with no network. ``start`` opens the transport, ``connect`` gives it the address
book, ``run`` runs the rounds, ``stop`` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil
import torch

from dlactor.messages import Message, Overlay, Payload, Share
from dlactor.node.context import RoundContext
from dlactor.node.mailbox import Mailbox
from dlactor.sharing.base import ChecksPayloads, Sharing
from dlactor.sharing.lossless import Lossless
from dlactor.sharing.ops import all_finite, check_finite
from dlactor.topology.base import Topology, UsesOverlay
from dlactor.training.base import Trainer
from dlactor.transport.base import (
    Address,
    Deliver,
    SendTimeout,
    Transport,
    TransportClosed,
    UnknownPeer,
)
from dlactor.wire.codec import encode, encoded_size
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["Link", "ModelDiverged", "Node", "Record", "SendStalled"]

Record = dict[str, Any]

log = logging.getLogger("dlactor.node")


class Link:
    """A process's :class:`~dlactor.topology.base.OverlayLink`: overlay sends on its
    transport, counted, and the peers it talked to (so the node can close those connections
    when they are not needed any more)."""

    def __init__(self, node: int, transport: Transport) -> None:
        self._node, self.transport = node, transport
        self.msgs_sent = self.bytes_sent = self.msgs_recv = self.bytes_recv = 0
        self.contacts: set[int] = set()
        self._busy: dict[int, int] = {}  # peer -> sends in progress
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set once the address book is in (``connect``): a message can arrive before this
        #: process has read its own Start, and a reply to it must wait for the addresses.
        self.ready = asyncio.Event()

    @property
    def node(self) -> int:
        return self._node

    def busy(self, peer: int) -> bool:
        return self._busy.get(peer, 0) > 0

    async def send(self, peer: int, msg: Overlay) -> None:
        await self.ready.wait()
        self.contacts.add(peer)
        self._busy[peer] = self._busy.get(peer, 0) + 1
        try:
            await self.transport.send(peer, msg)
        finally:
            self._busy[peer] -= 1
        self.msgs_sent += 1
        self.bytes_sent += encoded_size(encode(msg))

    def spawn(self, peer: int, msg: Overlay) -> None:
        task = asyncio.get_running_loop().create_task(self._send_quietly(peer, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_quietly(self, peer: int, msg: Overlay) -> None:
        try:
            await self.send(peer, msg)
        except (ConnectionError, TransportClosed, UnknownPeer) as exc:
            log.info("node %d: %s to node %d not sent: %s", self._node, msg.op, peer, exc)

    def received(self, nbytes: int) -> None:
        self.msgs_recv += 1
        self.bytes_recv += nbytes

    def counters(self) -> tuple[int, int, int, int]:
        return self.msgs_sent, self.bytes_sent, self.msgs_recv, self.bytes_recv

    async def flush(self) -> None:
        """Wait for the sends started with ``spawn``."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self, grace: float = 2.0) -> None:
        """Let replies already queued go out (a peer may be waiting on one), then cancel."""
        if self.ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.flush()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SendStalled(TimeoutError):
    """This round's share did not leave for some neighbours within the round timeout: they
    stopped reading (their socket buffers are full), so waiting longer would hang the round."""

    def __init__(self, round: int, peers: Iterable[int], timeout: float) -> None:
        self.round = round
        self.peers = sorted(peers)
        super().__init__(
            f"round {round}: node(s) {self.peers} did not take this node's share within "
            f"{timeout:g} s (they stopped reading)"
        )


class ModelDiverged(ArithmeticError):
    """This node's own model (or the share it made of it) holds NaN or Inf: it stops the run
    rather than send it to its neighbours (``security.allow_nonfinite`` lets it go on)."""

    def __init__(self, node: int, round: int, what: str = "model") -> None:
        self.node, self.round = node, round
        super().__init__(
            f"node {node}'s {what} holds NaN or Inf after training in round {round} "
            "(training diverged: a lower training.lr may help)"
        )


class Node:
    """One learning node: its strategies, its transport, its mailbox and its round loop."""

    def __init__(
        self,
        *,
        node: int,
        transport: Callable[[Deliver], Transport],
        topology: Topology,
        sharing: Sharing,
        trainer: Trainer,
        model: torch.nn.Module,
        rounds: int,
        eval_every: int,
        round_timeout: float,
        on_round: Callable[[Record], None] | None = None,
        nodes: int | None = None,
        allow_nonfinite: bool = False,
    ) -> None:
        self.node = node
        self.mailbox = Mailbox(senders=nodes, rounds=rounds)
        self.allow_nonfinite = allow_nonfinite
        self.transport = transport(self.deliver)
        self.transport.on_handshake = self.mailbox.count
        self.topology, self.sharing, self.trainer = topology, sharing, trainer
        self.model = model
        self.rounds, self.eval_every, self.round_timeout = rounds, eval_every, round_timeout
        self.on_round = on_round
        self.t0 = time.time()
        self._process = psutil.Process()
        self._peers: frozenset[int] = frozenset()  # the last round's neighbours
        self._recorded_row: tuple[tuple[int, ...], tuple[float, ...]] | None = None
        self.link = Link(node, self.transport)
        if isinstance(topology, UsesOverlay):
            topology.attach(self.link)

    def deliver(self, msg: Message, nbytes: int) -> None:
        """The transport's callback: payloads go to the mailbox, overlay messages to a topology
        that talks; nothing else belongs here.

        A payload is checked against this node's model as it arrives (when the sharing
        strategy can check), and for NaN and Inf (unless ``allow_nonfinite``): a
        RemoteProtocolError here makes the transport drop and log that connection, and the
        node carries on.
        """
        if isinstance(msg, Overlay) and isinstance(self.topology, UsesOverlay):
            self.topology.on_overlay(msg)
            self.link.received(nbytes)
            self.mailbox.count(nbytes)
            return
        if not isinstance(msg, Share):
            raise RemoteProtocolError(f"unexpected {type(msg).__name__} on a peer connection")
        self.mailbox.put(msg, nbytes, check=lambda: self._check_payload(msg.sender, msg.payload))

    def _check_payload(self, sender: int, payload: Payload) -> None:
        try:
            if isinstance(self.sharing, ChecksPayloads):
                self.sharing.check(self.model, payload)
            if not self.allow_nonfinite:
                plain = payload
                if isinstance(self.sharing, Lossless):
                    plain = self.sharing.unpacked(payload)
                check_finite(plain)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"node {sender} sent an unusable payload: {exc}") from exc

    async def start(self) -> Address:
        return await self.transport.start()

    def connect(self, addresses: Mapping[int, Address], t0: float | None = None) -> None:
        """Give the transport the address book; ``t0`` is the start barrier's wall time."""
        self.transport.set_peers(addresses)
        self.link.ready.set()
        self.t0 = time.time() if t0 is None else t0

    async def run(self) -> None:
        for r in range(self.rounds):
            record = await self.run_round(r)
            if self.on_round is not None:
                self.on_round(record)

    def _evaluates(self, r: int) -> bool:
        return (r + 1) % self.eval_every == 0 or r == self.rounds - 1

    async def run_round(self, r: int) -> Record:
        """One D-PSGD round: train, share with this round's neighbours, aggregate, evaluate."""
        ctx = RoundContext(node=self.node, round=r, model=self.model)
        before = self.transport.stats.snapshot()
        overlay_before = self.link.counters()
        t_start = time.perf_counter()
        stats = await self.trainer.train(ctx)
        if not self.allow_nonfinite and not all_finite(self.model.parameters()):
            raise ModelDiverged(self.node, r)
        t_train = time.perf_counter() - t_start
        ctx.peers = await self.topology.neighbors(self.node, r)
        self._close_former_peers(ctx.peers)
        ctx.weights = await self.topology.weights(self.node, r)
        share = Share(self.node, r, await self.sharing.outgoing(ctx))
        self._check_own(share)
        ctx.sent = share.payload
        received = await self._exchange(share, ctx.peers)
        await self.sharing.aggregate(ctx, received)
        got = self.mailbox.take_received(r)
        record: Record = {
            "node": self.node,
            "round": r,
            "train_loss": stats.loss,
            "bytes_sent": 0,  # below, once the round is over
            "bytes_recv": got.nbytes,
            "msgs_sent": 0,
            "msgs_recv": got.msgs,
            "degree": len(ctx.peers),
            **self._overlay_record(overlay_before),
            **self._topology_record(ctx.peers, ctx.weights),
            "t_wall": time.time() - self.t0,
            "t_train": t_train,
            "t_round": time.perf_counter() - t_start,
            "rss_bytes": self._process.memory_info().rss,
        }
        if self._evaluates(r):
            record.update(await self._evaluate(ctx))
        # After evaluating: a challenge this node wrote meanwhile (to a peer connecting to
        # it) belongs to this round, not to none.
        sent = self.transport.stats.minus(before)
        record["bytes_sent"], record["msgs_sent"] = sent.bytes_sent, sent.msgs_sent
        return record

    def _check_own(self, share: Share) -> None:
        """A strategy can overflow a finite model into Inf: never send it (ModelDiverged)."""
        if self.allow_nonfinite:
            return
        plain = share.payload
        if isinstance(self.sharing, Lossless) and self.sharing.sent is not None:
            plain = self.sharing.sent
        try:
            check_finite(plain)
        except RemoteProtocolError:
            raise ModelDiverged(self.node, share.round, "share") from None

    def _overlay_record(self, before: tuple[int, int, int, int]) -> Record:
        """What the topology's own messages cost this round (only for topologies that talk)."""
        if not isinstance(self.topology, UsesOverlay):
            return {}
        now = self.link.counters()
        names = (
            "overlay_msgs_sent",
            "overlay_bytes_sent",
            "overlay_msgs_recv",
            "overlay_bytes_recv",
        )
        return {name: a - b for name, a, b in zip(names, now, before, strict=True)}

    def _topology_record(self, peers: frozenset[int], weights: Mapping[int, float]) -> Record:
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

    def _close_former_peers(self, peers: frozenset[int]) -> None:
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
        keep = peers | getattr(self.topology, "persistent_peers", frozenset())
        self.link.contacts = {p for p in self.link.contacts if self.link.busy(p)}
        for peer in former - keep - self.link.contacts:
            self.transport.close_peer(peer)
        self._peers = peers

    async def _exchange(self, share: Share, peers: frozenset[int]) -> dict[int, Payload]:
        """Send this round's share and collect the neighbours', both within one round timeout:
        a neighbour that stops reading must fail the round as surely as one that stops
        sending, instead of hanging it in ``drain``."""
        deadline = asyncio.get_running_loop().time() + self.round_timeout
        try:
            await self.transport.send_all(peers, share, timeout=self.round_timeout)
        except SendTimeout as exc:
            raise SendStalled(share.round, exc.peers, self.round_timeout) from exc
        return await self.mailbox.wait_round(
            share.round, peers, self.round_timeout, deadline=deadline
        )

    async def _evaluate(self, ctx: RoundContext) -> Record:
        t_eval = time.perf_counter()
        ev = await self.trainer.evaluate(ctx)
        record: Record = {"test_loss": ev.loss, "t_eval": time.perf_counter() - t_eval}
        if ev.rmse is None:
            record["test_acc"] = ev.accuracy
        else:
            record["test_rmse"] = ev.rmse
        return record

    async def stop(self) -> None:
        if isinstance(self.topology, UsesOverlay):
            await self.topology.aclose()
        await self.link.stop()
        await self.transport.stop()
