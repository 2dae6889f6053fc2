"""TCP transport: asyncio streams out, a zero-copy BufferedProtocol in.

Outgoing: one connection per peer, opened lazily on the first send and reused;
its first frame is our ``Hello``. Frames go out with ``writelines`` of the codec's
buffers (tensor memory is not copied under uvloop) followed by ``drain`` so a slow
peer slows us down instead of growing our buffers. ``close_peer`` (a dynamic topology
dropped the peer) closes it gracefully without waiting: what was written is still flushed,
then the FIN follows it, and the peer reads every byte before it sees the end. Nothing is
ever written on an incoming connection, so no socket is closed with unread bytes in it
(the kernel would answer those with a reset, and a reset can destroy data the peer has
not read yet).

Incoming: the kernel writes straight into the :class:`FrameDecoder`'s buffers
(big frames land in their final buffer; tensors are views over it). A connection is read
until the peer closes it, then forgotten. The first
frame must be a ``Hello`` with this run's id and secret, and until it has been
accepted a frame may be at most ``HANDSHAKE_MAX_FRAME`` bytes: a stranger cannot make
us allocate more. Any protocol error drops that connection, logs it, and counts it in
``stats.dropped_connections``; the node carries on.

Stopping never waits on a peer: each outgoing connection (those still flushing after
``close_peer`` included) gets ``close_timeout`` seconds to flush, then is aborted, and a
connection whose connect or send failed is closed at once, so no socket outlives ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, cast

from dlactor.messages import Hello, Message
from dlactor.transport.base import (
    Address,
    Deliver,
    HandshakeSeen,
    PeerUnreachable,
    SendTimeout,
    TrafficStats,
    TransportClosed,
    UnknownPeer,
)
from dlactor.wire.codec import decode, encode
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, FrameDecoder

__all__ = ["TcpTransport", "check_hello"]

log = logging.getLogger("dlactor.transport")

Buffers = Sequence[bytes | memoryview]

#: Seconds an outgoing connection may take to flush when closed before it is aborted.
CLOSE_TIMEOUT_S = 2.0


def check_hello(msg: Message, run_id: str, secret: str) -> Hello:
    """The first frame of a connection, or RemoteProtocolError saying what is wrong with it."""
    if not isinstance(msg, Hello):
        raise RemoteProtocolError(f"expected a hello first, got {type(msg).__name__}")
    if msg.run_id != run_id:
        raise RemoteProtocolError(f"hello for run {msg.run_id!r}, this is run {run_id!r}")
    if not hmac.compare_digest(msg.secret.encode(), secret.encode()):
        raise RemoteProtocolError(f"hello from node {msg.sender} with a wrong secret")
    return msg


class _Inbound(asyncio.BufferedProtocol):
    """One accepted connection: frames in, hello checked, messages delivered."""

    def __init__(self, owner: TcpTransport) -> None:
        self._owner = owner
        # Until the hello is accepted, only a hello-sized frame may be announced.
        self._decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME)
        self._transport: asyncio.Transport | None = None
        self.peer: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._owner._inbound.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._decoder.buffer_updated(nbytes)
            while (body := self._decoder.next_frame()) is not None:
                self._handle(decode(body), 4 + len(body))
        except ProtocolError as exc:
            self.drop(exc)

    def _handle(self, msg: Message, nbytes: int) -> None:
        owner = self._owner
        if self.peer is None:
            self._accept(msg, nbytes)
        elif isinstance(msg, Hello):
            raise RemoteProtocolError(f"node {self.peer} sent a second hello")
        elif getattr(msg, "sender", self.peer) != self.peer:
            raise RemoteProtocolError(f"node {self.peer} sent a message as node {msg.sender}")  # type: ignore[union-attr]
        else:
            owner.deliver(msg, nbytes)
        owner.stats.bytes_recv += nbytes
        owner.stats.msgs_recv += 1

    def _accept(self, msg: Message, nbytes: int) -> None:
        """Check the hello; only then may the peer send frames of the configured size."""
        owner = self._owner
        self.peer = check_hello(msg, owner.run_id, owner.secret).sender
        self._decoder.set_max_frame(owner.max_frame)
        if owner.on_handshake is not None:
            owner.on_handshake(nbytes)

    def drop(self, exc: Exception) -> None:
        log.warning("node %d: dropped connection from %s: %s", self._owner.node, self._who, exc)
        self._owner.stats.dropped_connections += 1
        if self._transport is not None:
            self._transport.abort()

    @property
    def _who(self) -> str:
        return f"node {self.peer}" if self.peer is not None else "an unidentified peer"

    def eof_received(self) -> bool:
        """The peer closed its side after its last frame (returning False closes ours). A
        frame cut short is logged: its message is lost, and the round waiting for it will
        time out naming the peer."""
        if self._decoder.buffered_bytes:
            log.warning(
                "node %d: %s closed its connection %d bytes into a frame",
                self._owner.node,
                self._who,
                self._decoder.buffered_bytes,
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound.discard(self)
        self._transport = None  # nothing of the connection outlives it


class TcpTransport:
    """The :class:`~dlactor.transport.base.Transport` over TCP sockets."""

    def __init__(
        self,
        *,
        node: int,
        run_id: str,
        secret: str,
        deliver: Deliver,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame: int = DEFAULT_MAX_FRAME,
        close_timeout: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.node, self.run_id, self.secret = node, run_id, secret
        self.deliver = deliver
        self.on_handshake: HandshakeSeen | None = None
        self.max_frame = max_frame
        self.close_timeout = close_timeout
        self.stats = TrafficStats()
        self._host, self._port = host, port
        self._peers: dict[int, Address] = {}
        self._out: dict[int, asyncio.StreamWriter] = {}
        # Connections close_peer closed that are still flushing, by the task awaiting each.
        self._closing: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self.address: Address | None = None

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self), self._host, self._port, backlog=1024
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        return self.address

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        self._peers = dict(addresses)

    @property
    def open_connections(self) -> int:
        """Sockets open: outgoing (those still flushing after ``close_peer`` included) and
        incoming."""
        return len(self._out) + len(self._closing) + len(self._inbound)

    @property
    def connected_peers(self) -> frozenset[int]:
        """The peers we have an outgoing connection to."""
        return frozenset(self._out)

    async def send(self, peer: int, msg: Message) -> None:
        await self._send_buffers(peer, encode(msg, max_frame=self.max_frame))

    async def send_all(
        self, peers: Iterable[int], msg: Message, *, timeout: float | None = None
    ) -> None:
        buffers = encode(msg, max_frame=self.max_frame)
        unsent = set(peers)

        async def send_one(peer: int) -> None:
            await self._send_buffers(peer, buffers)
            unsent.discard(peer)

        try:
            async with asyncio.timeout(timeout):
                await _all_or_first_error([send_one(peer) for peer in sorted(unsent)])
        except TimeoutError:
            raise SendTimeout(unsent, timeout or 0.0) from None

    async def _send_buffers(self, peer: int, buffers: Buffers) -> None:
        if self._closed:
            raise TransportClosed(self.node)
        writer: asyncio.StreamWriter | None = None
        try:
            writer = self._out.get(peer) or await self._connect(peer)
            _check_open(writer)
            writer.writelines(buffers)
            self.stats.bytes_sent += sum(len(b) for b in buffers)
            self.stats.msgs_sent += 1
            await writer.drain()
            _check_open(writer)  # a drain cut short by an abort returns without an error
        except OSError as exc:
            await self._discard(peer, writer)
            if self._closed:
                raise TransportClosed(self.node) from exc
            raise PeerUnreachable(peer, exc) from exc

    async def _connect(self, peer: int) -> asyncio.StreamWriter:
        lock = self._connecting.setdefault(peer, asyncio.Lock())
        async with lock:
            if peer in self._out:
                return self._out[peer]
            if peer not in self._peers:
                raise UnknownPeer(self.node, peer)
            _, writer = await asyncio.open_connection(*self._peers[peer])
            if self._closed:  # stopped while we were connecting
                await _abort(writer)
                raise TransportClosed(self.node)
            try:
                self._say_hello(writer)
            except OSError:
                await _abort(writer)
                raise
            self._out[peer] = writer
            return writer

    def _say_hello(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = encode(Hello(self.run_id, self.secret, self.node))
        writer.writelines(hello)
        self.stats.bytes_sent += sum(len(b) for b in hello)
        self.stats.msgs_sent += 1

    async def _discard(self, peer: int, writer: asyncio.StreamWriter | None) -> None:
        """Forget and abort a connection whose send failed: it cannot be trusted again."""
        if writer is None:
            return
        if self._out.get(peer) is writer:
            del self._out[peer]
        await _abort(writer)

    def close_peer(self, peer: int) -> None:
        """Close our connection to ``peer`` (a topology dropped it), without waiting.

        The bytes already written still reach the peer, then the end of the stream: the
        connection closes once they are flushed, however long the peer takes to read them
        (never aborted, or a message the peer has not read yet could be lost; ``stop`` still
        aborts it after ``close_timeout``). Do not call it while a send to ``peer`` is in
        progress. A later send to ``peer`` opens a new connection.
        """
        writer = self._out.pop(peer, None)
        lock = self._connecting.get(peer)
        if lock is not None and not lock.locked():
            del self._connecting[peer]
        if writer is None:
            return
        writer.close()  # graceful: the transport flushes its buffer, then closes the socket
        closing = asyncio.ensure_future(_wait_closed(writer))
        self._closing[closing] = writer
        closing.add_done_callback(lambda task: self._closing.pop(task, None))

    async def stop(self) -> None:
        """Stop sending and accepting; close every connection within ``close_timeout``."""
        self._closed = True
        writers = [*self._out.values(), *self._closing.values()]
        closing, self._out = list(self._closing), {}
        await asyncio.gather(*(_close(w, self.close_timeout) for w in writers))
        await asyncio.gather(*closing)
        if self._server is not None:
            self._server.close()
            for conn in list(self._inbound):
                if conn._transport is not None:
                    conn._transport.abort()
            await self._server.wait_closed()
            self._server = None


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _abort(writer: asyncio.StreamWriter) -> None:
    """Abort the connection and wait until its socket is closed."""
    writer.transport.abort()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _check_open(writer: asyncio.StreamWriter) -> None:
    """ConnectionResetError if the connection is closed or closing: the peer reset it (uvloop
    then refuses to write at all), or we aborted it while sending."""
    if writer.transport.is_closing():
        raise ConnectionResetError("the connection is closed")


async def _all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently in a TaskGroup; if any fails, the others are cancelled and
    the first failure is raised as itself (callers catch PeerUnreachable, not a group)."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _close(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Close gracefully if the peer takes the rest of our bytes in time, else abort: a peer
    that stopped reading would otherwise keep the socket (and ``stop``) forever. (``wait``
    rather than a timeout around ``wait_closed``: cancelling that would cancel the stream's
    own close future, and a later ``wait_closed`` would raise CancelledError.)"""
    writer.close()
    closed = asyncio.ensure_future(writer.wait_closed())
    done, _ = await asyncio.wait({closed}, timeout=timeout)
    if not done:
        writer.transport.abort()
    with contextlib.suppress(ConnectionError, OSError):
        await closed
