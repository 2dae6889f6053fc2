"""The emulated network, applied in the transport: every message between two processes of a
run waits for its sender's uplink, its link's latency and its receiver's downlink.

:class:`EmulatedTransport` wraps a process's real transport (TCP, or the in-memory one in
tests), so it is the same under the local launcher and under Ray, and it needs no root and
nothing outside the process. The sender stamps each message with the times its first and
last byte reach the receiver (``Share.clock``, ``Overlay.clock``): the copies of one send
share its uplink (a share to 63 peers takes 63 times as long as to one), sends queue behind
each other, and each message then waits its link's latency. The receiver passes the message
through its downlink, a FIFO queue (two senders into one downlink share it): the message is
in when the downlink has taken it, and not before its sender's last byte could be there.

Overlay messages (a peer sampler's answers, gossip's proposals: tens of bytes) take their
latency and their own transmission time but do not queue behind model shares, nor make
shares queue behind them: their order in the queues would depend on this machine's timing,
and they are too small to matter.

With the ``virtual`` clock nothing waits: messages are delivered as soon as they are here,
and the times they carry move the receiver's clock when it takes them (``take_shares``,
``overlay_arrival``). With ``wall``, delivery is held until the message's time has come.
docs/network.md has the model and its limits.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from dlactor.messages import Message, Overlay, Share
from dlactor.network.clock import Clock
from dlactor.network.model import NetworkModel
from dlactor.transport.base import (
    Address,
    Deliver,
    HandshakeSeen,
    TrafficStats,
    Transport,
    send_frames,
)
from dlactor.wire.codec import encode, encoded_size, restamp
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME

__all__ = ["SENT_AT", "EmulatedTransport", "sending_context"]

log = logging.getLogger("dlactor.transport")

#: The time a message sent now leaves at, when it is not the process's clock: while a
#: message is handled, its arrival (a reply leaves when the request is in); in a task
#: spawned to send later, the time it was spawned at.
SENT_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dlactor_sent_at", default=None
)

Buffer = bytes | memoryview
#: A held queue: (sender, whether it holds overlay messages).
_Queue = tuple[int, bool]
#: Most stamps kept for shares not yet taken, per process of the run: an honest peer has
#: at most two rounds' shares buffered (the mailbox's own bound).
_STAMPS_PER_PEER = 4
#: Most rounds whose overlay arrivals are kept (a process that never asks, the peer
#: sampler, keeps the latest).
_OVERLAY_ROUNDS = 64
#: A placeholder stamp: msgpack writes every float in 9 bytes, so a message's size with it
#: is its size with its real stamp.
_PLACEHOLDER = (0.0, 0.0)


def sending_context(transport: Transport) -> contextvars.Context | None:
    """The context for a task that sends what was decided now (``Link.spawn``): its message
    leaves at this moment's time, not at the clock's time when the task gets to run."""
    if not isinstance(transport, EmulatedTransport):
        return None
    context = contextvars.copy_context()
    context.run(SENT_AT.set, transport.send_time())
    return context


class EmulatedTransport:
    """A :class:`~dlactor.transport.base.Transport` over another, through the emulated
    network of ``model``, on ``clock``."""

    def __init__(
        self,
        inner: Callable[[Deliver], Transport],
        deliver: Deliver,
        *,
        process: int,
        model: NetworkModel,
        clock: Clock,
    ) -> None:
        self.process, self.model, self.clock = process, model, clock
        self._deliver = deliver
        self.inner = inner(self._arrive)
        self.stats: TrafficStats = self.inner.stats  # the inner transport counts
        self._up_free = 0.0  # when this process's uplink has pushed all it was given
        self._down_free = 0.0  # when its downlink has taken all shares taken so far
        self._seq: dict[int, int] = {}  # peer -> messages sent to it (the jitter's draw)
        # virtual: shares delivered, not yet taken by a round: (sender, round) -> stamp, size
        self._shares: dict[tuple[int, int], tuple[float, float, int]] = {}
        self._overlay: dict[int, float] = {}  # virtual: round -> its overlay's last arrival
        #: Overlay ops whose arrivals ``overlay_arrival`` leaves out: their receiver moves its
        #: clock to them itself (secure aggregation's rosters, whose arrival before or after
        #: the topology's answer would otherwise depend on machine timing).
        self.untracked_ops: set[str] = set()
        # wall: messages held until their time, per sender and kind (shares, overlay
        # messages: the latter do not wait behind the former), in order, and their timers
        self._held: dict[_Queue, deque[tuple[float, Message, int]]] = {}
        self._timers: dict[_Queue, asyncio.TimerHandle] = {}

    # --- the Transport interface, delegated -------------------------------------------

    @property
    def on_handshake(self) -> HandshakeSeen | None:
        return self.inner.on_handshake

    @on_handshake.setter
    def on_handshake(self, value: HandshakeSeen | None) -> None:
        self.inner.on_handshake = value

    @property
    def open_connections(self) -> int:
        return self.inner.open_connections

    @property
    def connected_peers(self) -> frozenset[int]:
        peers: frozenset[int] = getattr(self.inner, "connected_peers", frozenset())
        return peers

    async def start(self) -> Address:
        return await self.inner.start()

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        self.inner.set_peers(addresses)

    def close_peer(self, peer: int) -> None:
        self.inner.close_peer(peer)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()
        await self.inner.stop()

    # --- sending ------------------------------------------------------------------------

    def send_time(self) -> float:
        """When a message sent now leaves: ``SENT_AT`` if set, else the clock's now (never
        before 0: a wall clock stepped back, or a machine's skew under Ray)."""
        t = SENT_AT.get()
        return max(0.0, self.clock.now() if t is None else t)

    def begin(self, t0: float) -> None:
        """The run starts at wall time ``t0`` (the start barrier): the wall clock's 0, as
        for the records' ``t_wall``."""
        if not self.clock.virtual:
            self.clock.epoch = t0

    def depart(
        self, peers: list[int], t: float, nbytes: int, *, queued: bool
    ) -> dict[int, tuple[float, float]]:
        """The stamps of one message of ``nbytes`` handed over at ``t`` for each of ``peers``:
        when its first and its last byte reach each peer's downlink.

        The copies share the uplink fairly (as parallel TCP flows do): every first byte
        leaves at once, every last byte after all ``len(peers)`` copies have been pushed
        (or later, for a lossy link slower than its share). ``queued`` (a share): the batch
        starts when the uplink has pushed what it was given before; else (overlay) at once.
        """
        start = max(t, self._up_free) if queued else t
        latencies, durations = {}, {}
        for peer in peers:
            seq = self._seq.get(peer, 0)
            self._seq[peer] = seq + 1
            latencies[peer], durations[peer] = self.model.transfer(
                self.process, peer, start, nbytes, seq, share=len(peers)
            )
        if queued and durations:
            self._up_free = start + max(durations.values())
        return {
            peer: (start + latencies[peer], start + durations[peer] + latencies[peer])
            for peer in peers
        }

    @staticmethod
    def wire_size(msg: Message) -> int:
        """Bytes ``msg`` takes on the wire once stamped."""
        if isinstance(msg, Share | Overlay):
            msg = dataclasses.replace(msg, clock=_PLACEHOLDER)
        return encoded_size(encode(msg))

    def _frames(self, msgs: Mapping[int, Share | Overlay]) -> dict[int, list[Buffer]]:
        """Each peer's frame of one send, each with its own stamp. A message is encoded once
        with a placeholder stamp (its size is the stamped size), however many peers it goes
        to; the batch departs at its largest message's size (the copies of ``send_all``, or
        a share per peer of the same size), then every frame is restamped for its peer."""
        max_frame = getattr(self.inner, "max_frame", DEFAULT_MAX_FRAME)
        encoded: dict[int, list[Buffer]] = {}  # by id(message): each distinct one once
        for msg in msgs.values():
            if id(msg) not in encoded:
                placeholder = dataclasses.replace(msg, clock=_PLACEHOLDER)
                encoded[id(msg)] = encode(placeholder, max_frame=max_frame)
        order = sorted(msgs)
        queued = all(isinstance(m, Share) for m in msgs.values())
        nbytes = max((encoded_size(b) for b in encoded.values()), default=0)
        stamps = self.depart(order, self.send_time(), nbytes, queued=queued)
        return {p: restamp(encoded[id(msgs[p])], stamps[p]) for p in order}

    async def send(self, peer: int, msg: Message) -> int:
        if not isinstance(msg, Share | Overlay):
            return await self.inner.send(peer, msg)  # nothing else crosses a peer connection
        return await self.inner.send_frame(peer, self._frames({peer: msg})[peer])

    async def send_frame(self, peer: int, buffers: Sequence[Buffer]) -> int:
        """A frame as it is: unstamped, so a peer on the emulated network refuses it."""
        return await self.inner.send_frame(peer, buffers)

    async def send_all(
        self, peers: Iterable[int], msg: Message, *, timeout: float | None = None
    ) -> None:
        """Into the uplink together (they share it), each with its own stamp."""
        if not isinstance(msg, Share | Overlay):
            await self.inner.send_all(peers, msg, timeout=timeout)
            return
        order = sorted(set(peers))
        await send_frames(self.inner.send_frame, self._frames(dict.fromkeys(order, msg)), timeout)

    async def send_each(self, msgs: Mapping[int, Message], *, timeout: float | None = None) -> None:
        """Into the uplink together, as ``send_all``'s copies (``_frames``)."""
        stamped = {p: m for p, m in msgs.items() if isinstance(m, Share | Overlay)}
        if len(stamped) != len(msgs):
            raise TypeError("send_each on the emulated network takes shares and overlays")
        await send_frames(self.inner.send_frame, self._frames(stamped), timeout)

    # --- receiving ----------------------------------------------------------------------

    def _through_downlink(self, t_first: float, t_last: float, nbytes: int) -> float:
        """A share's arrival. The downlink takes each message's bytes in turn (FIFO), at its
        rate, from when its first byte is there; the message is in when the downlink has
        taken it, and not before its last byte has left the sender and crossed the link.
        The downlink is never idle while a message waits: one whose sender's uplink is slow
        (shared with 62 other copies) does not hold up the next."""
        start = max(t_first, self._down_free)
        self._down_free = start + nbytes / self.model.downlink(self.process, start)
        return max(self._down_free, t_last)

    def _overlay_arrival(self, t_first: float, t_last: float, nbytes: int) -> float:
        return max(t_first + nbytes / self.model.downlink(self.process, t_first), t_last)

    def _arrive(self, msg: Message, nbytes: int) -> None:
        """The inner transport's delivery: a ProtocolError raised here drops the connection."""
        if not isinstance(msg, Share | Overlay):
            self._deliver(msg, nbytes)  # the node refuses it: not for a peer connection
            return
        if msg.clock is None:
            raise RemoteProtocolError(
                f"process {msg.sender} sent a message without its time on the emulated network"
            )
        t_first, t_last = msg.clock
        if self.clock.virtual:
            if isinstance(msg, Share):
                self._handle(msg, nbytes, t_last)
                self._keep_stamp((msg.sender, msg.round), (t_first, t_last, nbytes))
            else:
                arrival = self._overlay_arrival(t_first, t_last, nbytes)
                self._handle(msg, nbytes, arrival)
                if msg.op in self.untracked_ops:
                    return
                self._overlay[msg.round] = max(self._overlay.get(msg.round, 0.0), arrival)
                if len(self._overlay) > _OVERLAY_ROUNDS:
                    del self._overlay[min(self._overlay)]
            return
        if isinstance(msg, Share):
            arrival = self._through_downlink(t_first, t_last, nbytes)
        else:
            arrival = self._overlay_arrival(t_first, t_last, nbytes)
        queue = (msg.sender, isinstance(msg, Overlay))
        held = self._held.get(queue)
        if held is None and arrival <= self.clock.now():
            self._handle(msg, nbytes, arrival)
            return
        if held is None:
            held = self._held[queue] = deque()
        held.append((arrival, msg, nbytes))
        if queue not in self._timers:
            self._wake_at(queue, arrival)

    def _keep_stamp(self, key: tuple[int, int], stamp: tuple[float, float, int]) -> None:
        """Keep a delivered share's stamp until its round takes it. The mailbox drops some
        shares without a word (a round past the run's last): their stamps are pruned with
        the rounds below the one taken, and beyond a bound the latest rounds' go first."""
        self._shares[key] = stamp
        if len(self._shares) > _STAMPS_PER_PEER * self.model.processes:
            del self._shares[max(self._shares, key=lambda k: (k[1], k[0]))]

    def _handle(self, msg: Message, nbytes: int, arrival: float) -> None:
        """Deliver, with replies sent meanwhile leaving at the message's arrival."""
        token = SENT_AT.set(arrival)
        try:
            self._deliver(msg, nbytes)
        finally:
            SENT_AT.reset(token)

    def _wake_at(self, queue: _Queue, t: float) -> None:
        delay = max(0.0, t - self.clock.now())
        self._timers[queue] = asyncio.get_running_loop().call_later(delay, self._release, queue)

    def _release(self, queue: _Queue) -> None:
        """Wall clock: deliver a queue's held messages whose time has come, in order.

        A held message that breaks the protocol cannot drop its connection any more (it
        arrived long ago, and others may have followed on it): it is dropped with the rest
        of that sender's held messages of its kind, logged and counted."""
        del self._timers[queue]
        held = self._held[queue]
        now = self.clock.now()
        try:
            while held and held[0][0] <= now + 1e-4:
                arrival, msg, nbytes = held.popleft()
                self._handle(msg, nbytes, arrival)
        except Exception as exc:  # a peer's bad message must not kill this node's loop
            if not isinstance(exc, ProtocolError):
                log.exception("node %d: delivering a held message failed", self.process)
            log.warning(
                "node %d: dropped %d held message(s) from process %d: %s",
                self.process,
                len(held) + 1,
                queue[0],
                exc,
            )
            self.inner.stats.dropped_connections += 1
            held.clear()
        finally:
            if held:
                self._wake_at(queue, held[0][0])
            else:
                del self._held[queue]

    # --- the virtual clock's side -------------------------------------------------------

    def take_shares(self, r: int, senders: Iterable[int]) -> float:
        """A round has taken its shares of round ``r`` from ``senders``: they go through this
        process's downlink in the order they reach it (ties by sender); the virtual time the
        last is in (0 without the virtual clock, or if there were none)."""
        stamps = [(*self._shares.pop((s, r)), s) for s in senders if (s, r) in self._shares]
        end = 0.0
        for t_first, t_last, nbytes, _ in sorted(stamps):
            end = max(end, self._through_downlink(t_first, t_last, nbytes))
        for key in [k for k in self._shares if k[1] < r]:
            del self._shares[key]  # shares a round did not take (refused, or late)
        return end

    def overlay_arrival(self, r: int) -> float:
        """The latest virtual arrival of an overlay message of round ``r`` so far (0: none)."""
        last = self._overlay.get(r, 0.0)
        for old in [k for k in self._overlay if k <= r]:
            del self._overlay[old]
        return last
