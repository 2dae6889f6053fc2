"""The transport interface. Nodes get one passed in; TCP and in-memory implement it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dlactor.messages import Message
from dlactor.security.identity import LAUNCHER

__all__ = [
    "Address",
    "Deliver",
    "HandshakeFailed",
    "HandshakeSeen",
    "PeerUnreachable",
    "SendTimeout",
    "TrafficStats",
    "Transport",
    "TransportClosed",
    "UnknownPeer",
    "all_or_first_error",
    "send_frames",
]

Address = tuple[str, int]

#: Called on the event loop for every message received after a connection's handshake:
#: (message, bytes it took on the wire).
Deliver = Callable[[Message, int], None]
#: Called on the event loop with the wire size of every handshake accepted.
HandshakeSeen = Callable[[int], None]


class PeerUnreachable(ConnectionError):
    """Sending to a peer failed at the socket level (refused, reset, gone)."""

    def __init__(self, peer: int, cause: BaseException) -> None:
        self.peer = peer
        #: Every peer a send to several could not reach (``send_frames``): this one and others.
        self.peers: frozenset[int] = frozenset({peer})
        super().__init__(f"node {peer} is unreachable: {type(cause).__name__}: {cause}")


class HandshakeFailed(ConnectionError):
    """The process at a peer's address did not prove it is that peer (or not in time)."""

    def __init__(self, peer: int, cause: BaseException) -> None:
        self.peer = peer
        who = "the launcher" if peer == LAUNCHER else f"node {peer}"
        super().__init__(f"handshake with {who} failed: {str(cause) or type(cause).__name__}")


class UnknownPeer(LookupError):
    """Sending to a node the address book does not have: a bug on this side (the topology
    names a node outside the run), not a peer's failure."""

    def __init__(self, node: int, peer: int) -> None:
        self.peer = peer
        super().__init__(f"node {node} has no address for node {peer}")


class TransportClosed(RuntimeError):
    """Sending on a transport that has been stopped."""

    def __init__(self, node: int) -> None:
        super().__init__(f"node {node}'s transport is stopped")


class SendTimeout(TimeoutError):
    """Some peers did not take a message within the time allowed: they stopped reading, so
    the socket buffers filled up and the send could not finish."""

    def __init__(self, peers: Iterable[int], timeout: float) -> None:
        self.peers = sorted(peers)
        self.timeout = timeout
        super().__init__(f"node(s) {self.peers} did not take the message within {timeout:g} s")


@dataclass(slots=True)
class TrafficStats:
    """Application bytes and frames on the wire, framing and handshakes included."""

    bytes_sent: int = 0
    bytes_recv: int = 0
    msgs_sent: int = 0
    msgs_recv: int = 0
    dropped_connections: int = 0

    def snapshot(self) -> TrafficStats:
        return TrafficStats(
            self.bytes_sent,
            self.bytes_recv,
            self.msgs_sent,
            self.msgs_recv,
            self.dropped_connections,
        )

    def minus(self, before: TrafficStats) -> TrafficStats:
        return TrafficStats(
            self.bytes_sent - before.bytes_sent,
            self.bytes_recv - before.bytes_recv,
            self.msgs_sent - before.msgs_sent,
            self.msgs_recv - before.msgs_recv,
            self.dropped_connections - before.dropped_connections,
        )


@runtime_checkable
class Transport(Protocol):
    """Sends messages to peers by node id; hands received ones to ``deliver``."""

    stats: TrafficStats
    #: Told the size of every handshake accepted (None: nobody counts them). The node sets it
    #: to count handshakes in the round it is in when they arrive.
    on_handshake: HandshakeSeen | None

    async def start(self) -> Address:
        """Begin accepting connections; returns where peers reach this node."""
        ...

    @property
    def open_connections(self) -> int:
        """Connections open now, outgoing and incoming."""
        ...

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        """The address book (from the start barrier). Connections open lazily on first send."""
        ...

    def close_peer(self, peer: int) -> None:
        """Close our connection to ``peer`` without waiting (a no-op if there is none): what
        was sent on it still arrives, then the peer sees it end. A later send opens a new one.
        Not while a send to ``peer`` is in progress."""
        ...

    async def send(self, peer: int, msg: Message) -> int:
        """Send one message; returns once it is handed to the OS (``drain``ed), with the
        bytes it took on the wire (length prefix included).

        Raises PeerUnreachable (socket-level failure), UnknownPeer (no address for ``peer``)
        or TransportClosed (after ``stop``).
        """
        ...

    async def send_frame(self, peer: int, buffers: Sequence[bytes | memoryview]) -> int:
        """``send`` for a message already encoded (``dlactor.wire.codec.encode``): its
        frame's buffers. Raises what ``send`` raises."""
        ...

    async def send_all(
        self, peers: Iterable[int], msg: Message, *, timeout: float | None = None
    ) -> None:
        """Encode once, send to every peer concurrently; the first failure is raised as is.

        With a ``timeout``, SendTimeout names the peers whose sends had not finished by then.
        """
        ...

    async def send_each(self, msgs: Mapping[int, Message], *, timeout: float | None = None) -> None:
        """Send each peer its own message (``msgs``, by peer) concurrently, as ``send_all``
        sends one to all (its errors and ``timeout`` too)."""
        ...

    async def stop(self) -> None:
        """Close every connection and stop accepting; later sends raise TransportClosed."""
        ...


async def all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently in a TaskGroup; if any fails, the others are cancelled and
    the first failure is raised as itself (callers catch PeerUnreachable, not a group)."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None


async def send_frames(
    send: Callable[[int, Sequence[bytes | memoryview]], Awaitable[int]],
    frames: Mapping[int, Sequence[bytes | memoryview]],
    timeout: float | None,
) -> None:
    """``send`` each peer its frame concurrently; with a ``timeout``, SendTimeout names the
    peers whose sends had not finished by then. A peer that cannot be reached does not stop
    the sends to the others: once they are done, the first PeerUnreachable is raised, its
    ``peers`` naming every peer that could not be reached (a run that goes on without a
    dead node knows whom it reached)."""
    unsent = set(frames)
    unreachable: dict[int, PeerUnreachable] = {}

    async def send_one(peer: int) -> None:
        try:
            await send(peer, frames[peer])
        except PeerUnreachable as exc:  # the others still get theirs
            unreachable[peer] = exc
        unsent.discard(peer)

    try:
        async with asyncio.timeout(timeout):
            await all_or_first_error([send_one(peer) for peer in sorted(unsent)])
    except TimeoutError:
        raise SendTimeout(unsent, timeout or 0.0) from None
    if unreachable:
        first = unreachable[min(unreachable)]
        first.peers = frozenset(unreachable)
        raise first


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
