"""TCP transport: asyncio streams out, a zero-copy BufferedProtocol in, and the handshake.

Outgoing: one connection per peer, opened lazily on the first send and reused. It opens
with the handshake (``dlactor.security.handshake``): our hello, the peer's challenge (its
proof that it is the node we dialled), our proof; only then does anything else go out.
Frames go out with ``writelines`` of the codec's buffers (tensor memory is not copied under
uvloop) followed by ``drain`` so a slow peer slows us down instead of growing our buffers.
``close_peer`` (a dynamic topology dropped the peer) closes it gracefully without waiting:
what was written is still flushed, then the FIN follows it, and the peer reads every byte
before it sees the end. After its challenge, nothing is written on an incoming connection,
so no socket is closed with unread bytes in it (the kernel would answer those with a reset,
and a reset can destroy data the peer has not read yet).

Incoming: the kernel writes straight into the :class:`FrameDecoder`'s buffers (big frames
land in their final buffer; tensors are views over it). A connection is read until the peer
closes it, then forgotten. Until its handshake has finished, a connection is a stranger:
it may announce frames of at most ``HANDSHAKE_MAX_FRAME`` bytes, holds a receive buffer of
``HANDSHAKE_SCRATCH`` bytes, must finish within ``handshake_timeout`` seconds, and at most
``max_pending`` strangers are kept (a new one pushes out the oldest, so a flood of idle
connections cannot keep a real peer out). After it, a frame that has begun must be complete
within ``frame_timeout`` seconds (a peer sending a byte a second is dropped). Any protocol
error drops that connection, logs it, and counts it in ``stats.dropped_connections``; the
node carries on.

With TLS (``Credentials.tls``), every connection is TLS 1.3 with certificates of the run's
CA on both sides, and each side checks that the other's certificate holds the key of the
process it expects (``dlactor.security.tls``); the handshake then runs inside it.

Stopping never waits on a peer: each outgoing connection (those still flushing after
``close_peer`` included) gets ``close_timeout`` seconds to flush, then is aborted, and a
connection whose connect or send failed is closed at once, so no socket outlives ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, cast

from dlactor.messages import Challenge, Hello, Message, Proof
from dlactor.security.credentials import Credentials
from dlactor.security.handshake import Initiator, Responder
from dlactor.security.tls import peer_public_key
from dlactor.transport.base import (
    Address,
    Deliver,
    HandshakeFailed,
    HandshakeSeen,
    PeerUnreachable,
    TrafficStats,
    TransportClosed,
    UnknownPeer,
    send_frames,
)
from dlactor.wire.codec import decode, encode, encoded_size
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    HANDSHAKE_SCRATCH,
    PREFIX_LEN,
    FrameDecoder,
)

__all__ = ["TcpTransport", "check_peer_certificate", "read_handshake_frame"]

log = logging.getLogger("dlactor.transport")

Buffers = Sequence[bytes | memoryview]

#: Seconds an outgoing connection may take to flush when closed before it is aborted.
CLOSE_TIMEOUT_S = 2.0
#: Seconds a connection may take to finish its handshake (TLS's included). A handshake is
#: three turns on the CPU of two processes (hello, challenge, proof), and with a thousand
#: node processes on two cores one turn can wait seconds: at round 0 of 1024 nodes here, 5 s
#: dropped real peers mid-handshake. Slots for strangers stay bounded whatever the timeout
#: (``max_pending_handshakes``, the oldest pushed out); an idle stranger holds one longer.
HANDSHAKE_TIMEOUT_S = 30.0
#: Seconds a frame may take to arrive once its first bytes have.
FRAME_TIMEOUT_S = 120.0
#: Connections kept at once whose handshake has not finished.
MAX_PENDING = 128
#: The receive buffer of an authenticated connection (small frames collect in it).
SCRATCH = 1 << 16
#: Connections one proven peer may have open to a node at once: its current one, and those
#: it closed (a topology dropped this node) that this node is still reading to their end.
#: Gossip opens and closes several a round, and a loaded node reads their ends late: 4 was
#: reached by an honest run (the one refused lost its message), so the bound is generous.
MAX_PER_PEER = 64
#: Tries at a handshake before a send gives up on a peer (a flood of strangers can push an
#: honest handshake out of a peer's pending slots); the pause before each retry grows.
HANDSHAKE_ATTEMPTS, RETRY_PAUSE_S = 3, 0.1

_HANDSHAKE_KINDS = (Hello, Challenge, Proof)


def check_peer_certificate(
    transport: asyncio.BaseTransport, credentials: Credentials, peer: int
) -> None:
    """With TLS, RemoteProtocolError unless the peer's certificate holds ``peer``'s key."""
    if credentials.tls is None:
        return
    if peer_public_key(transport.get_extra_info("ssl_object")) != credentials.ring.get(peer):
        raise RemoteProtocolError(f"the TLS certificate is not process {peer}'s")


async def read_handshake_frame(reader: asyncio.StreamReader) -> Message:
    """One handshake-sized frame from ``reader`` (RemoteProtocolError if it is bigger, or
    the stream ends first)."""
    return (await _read_handshake_frame(reader))[0]


async def _read_handshake_frame(reader: asyncio.StreamReader) -> tuple[Message, int]:
    """The frame's message and its size on the wire, prefix included."""
    try:
        prefix = await reader.readexactly(PREFIX_LEN)
        length = int.from_bytes(prefix, "big")
        if not 0 < length <= HANDSHAKE_MAX_FRAME:
            raise RemoteProtocolError(f"a handshake frame of {length} bytes")
        return decode(bytearray(await reader.readexactly(length))), PREFIX_LEN + length
    except asyncio.IncompleteReadError as exc:
        raise RemoteProtocolError("the connection closed during the handshake") from exc


class Warns(Protocol):
    """Where a :class:`LogBudget` says things: a ``logging.Logger``, or anything like one."""

    def warning(self, msg: str, *args: object) -> None: ...


class LogBudget:
    """At most ``burst`` warnings per ``window`` seconds; what it held back is counted and
    said in one line when the next window opens."""

    def __init__(self, logger: Warns, *, burst: int = 10, window: float = 10.0):
        self.logger, self.burst, self.window = logger, burst, window
        self._opened, self._said, self._held = float("-inf"), 0, 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._opened >= self.window:
            if self._held:
                self.logger.warning("... %d more like it in %g s, not logged", self._held,
                                    self.window)  # fmt: skip
            self._opened, self._said, self._held = now, 0, 0
        if self._said < self.burst:
            self._said += 1
            self.logger.warning(message, *args)
        else:
            self._held += 1


class _Inbound(asyncio.BufferedProtocol):
    """One accepted connection: the handshake answered, then frames in, messages delivered."""

    def __init__(self, owner: TcpTransport) -> None:
        self._owner = owner
        self._decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME, scratch_size=HANDSHAKE_SCRATCH)
        self._transport: asyncio.Transport | None = None
        self._responder: Responder | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake_bytes = 0
        self.peer: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._owner._inbound.add(self)
        self._owner._admit(self)
        self._timer = self._later(self._owner.handshake_timeout, "did not finish its handshake")

    def _later(self, delay: float, why: str) -> asyncio.TimerHandle:
        error = RemoteProtocolError(f"{why} within {delay:g} s")
        return asyncio.get_running_loop().call_later(delay, self.drop, error)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._decoder.buffer_updated(nbytes)
            framed = False
            while (body := self._decoder.next_frame()) is not None:
                self._handle(decode(body), PREFIX_LEN + len(body))
                framed = True
            if self.peer is not None:
                self._watch_frame(framed)
        except ProtocolError as exc:
            self.drop(exc)
        except Exception as exc:  # a bug in what handles a message: logged, never the loop's
            log.exception("node %d: handling a message from %s failed", self._owner.node, self._who)
            self.drop(RemoteProtocolError(f"its message could not be handled: {exc!r}"))

    def _watch_frame(self, framed: bool) -> None:
        """Time the frame in progress: its deadline starts with its first bytes, or when the
        frame before it completed."""
        if framed and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._decoder.buffered_bytes:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None:
            self._timer = self._later(self._owner.frame_timeout, "sent less than a frame")

    def _handle(self, msg: Message, nbytes: int) -> None:
        owner = self._owner
        owner.stats.bytes_recv += nbytes
        owner.stats.msgs_recv += 1
        if self.peer is None:
            self._handshake(msg, nbytes)
        elif isinstance(msg, _HANDSHAKE_KINDS):
            raise RemoteProtocolError(f"node {self.peer} sent a {type(msg).__name__} again")
        elif getattr(msg, "sender", self.peer) != self.peer:
            raise RemoteProtocolError(f"node {self.peer} sent a message as node {msg.sender}")  # type: ignore[union-attr]
        else:
            owner.deliver(msg, nbytes)

    def _handshake(self, msg: Message, nbytes: int) -> None:
        """Hello: check, answer with our challenge. Proof: the peer is who it said."""
        owner = self._owner
        self._handshake_bytes += nbytes
        if self._responder is None:
            creds = owner.credentials
            self._responder = Responder(creds.run_id, creds.identity, creds.ring)
            if isinstance(msg, Hello):  # TLS: the certificate first, so we sign for no relay
                check_peer_certificate(self._transport, creds, msg.sender)  # type: ignore[arg-type]
            self._write(self._responder.on_hello(msg))
            return
        peer = self._responder.on_proof(msg)
        open_from_peer = owner._by_peer.setdefault(peer, set())
        if len(open_from_peer) >= MAX_PER_PEER:
            raise RemoteProtocolError(
                f"node {peer} has {len(open_from_peer)} connections to this node already"
            )
        open_from_peer.add(self)
        self.peer = peer
        self._responder = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        owner._pending.pop(self, None)
        self._decoder.set_max_frame(owner.max_frame)
        self._decoder.grow_scratch(SCRATCH)
        if owner.on_handshake is not None:  # hello and proof, each a message
            owner.on_handshake(self._handshake_bytes - nbytes)
            owner.on_handshake(nbytes)

    def _write(self, msg: Message) -> None:
        buffers = encode(msg)
        if self._transport is not None:
            self._transport.writelines(buffers)
        self._owner.stats.bytes_sent += encoded_size(buffers)
        self._owner.stats.msgs_sent += 1

    def drop(self, exc: Exception) -> None:
        self._warn("node %d: dropped connection from %s: %s", self._owner.node, self._who, exc)
        self._owner.stats.dropped_connections += 1
        if self._transport is not None:
            self._transport.abort()

    def _warn(self, message: str, *args: object) -> None:
        """Log a peer's misdeed; a stranger's only within the transport's log budget (a
        flood of strangers must not flood the log)."""
        if self.peer is not None:
            log.warning(message, *args)
        else:
            self._owner._stranger_log.warning(message, *args)

    @property
    def _who(self) -> str:
        if self.peer is not None:
            return f"node {self.peer}"
        claimed = self._responder.claimed if self._responder is not None else None
        return "an unidentified peer" if claimed is None else f"a peer claiming to be {claimed}"

    def eof_received(self) -> bool:
        """The peer closed its side after its last frame (returning False closes ours). A
        frame cut short is logged: its message is lost, and the round waiting for it will
        time out naming the peer."""
        if self._decoder.buffered_bytes:
            self._warn(
                "node %d: %s closed its connection %d bytes into a frame",
                self._owner.node,
                self._who,
                self._decoder.buffered_bytes,
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound.discard(self)
        self._owner._pending.pop(self, None)
        if self.peer is not None:
            self._owner._by_peer.get(self.peer, set()).discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None  # nothing of the connection outlives it


LISTEN_BACKLOG = 1024


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket | None:
    """A listening socket on ``host:port`` when ``host`` is an IP address, else None (the
    loop resolves a host name). uvloop resolves even an IP address through libuv's thread
    pool, which starts 4 threads that then live as long as the process: about 1 MiB of a
    node's private memory (stacks and malloc arenas), times every node of a run."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock


class TcpTransport:
    """The :class:`~dlactor.transport.base.Transport` over TCP sockets."""

    def __init__(
        self,
        *,
        credentials: Credentials,
        deliver: Deliver,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame: int = DEFAULT_MAX_FRAME,
        close_timeout: float = CLOSE_TIMEOUT_S,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        frame_timeout: float = FRAME_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.credentials = credentials
        self.node = credentials.identity.process
        self.deliver = deliver
        self.on_handshake: HandshakeSeen | None = None
        self.max_frame = max_frame
        self.close_timeout = close_timeout
        self.handshake_timeout, self.frame_timeout = handshake_timeout, frame_timeout
        self.max_pending = max_pending
        self.stats = TrafficStats()
        self._host, self._port = host, port
        self._peers: dict[int, Address] = {}
        self._out: dict[int, asyncio.StreamWriter] = {}
        # Connections close_peer closed that are still flushing, by the task awaiting each.
        self._closing: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._inbound: set[_Inbound] = set()
        self._pending: dict[_Inbound, None] = {}  # strangers, oldest first
        self._by_peer: dict[int, set[_Inbound]] = {}  # proven connections, by peer
        self._stranger_log = LogBudget(log)
        self._server: asyncio.Server | None = None
        self._closed = False
        self.address: Address | None = None

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        tls = self.credentials.tls
        serve = functools.partial(
            loop.create_server,
            lambda: _Inbound(self),
            backlog=LISTEN_BACKLOG,
            ssl=tls.server if tls is not None else None,
            ssl_handshake_timeout=self.handshake_timeout if tls is not None else None,
        )
        sock = _listening_socket(self._host, self._port, LISTEN_BACKLOG)
        self._server = await (serve(self._host, self._port) if sock is None else serve(sock=sock))
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        return self.address

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        self._peers = dict(addresses)

    def _admit(self, conn: _Inbound) -> None:
        """A new stranger: if ``max_pending`` are waiting already, the oldest is dropped."""
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.drop(RemoteProtocolError("pushed out by newer connections in handshake"))
        self._pending[conn] = None

    @property
    def open_connections(self) -> int:
        """Sockets open: outgoing (those still flushing after ``close_peer`` included) and
        incoming."""
        return len(self._out) + len(self._closing) + len(self._inbound)

    @property
    def connected_peers(self) -> frozenset[int]:
        """The peers we have an outgoing connection to."""
        return frozenset(self._out)

    async def send(self, peer: int, msg: Message) -> int:
        return await self._send_buffers(peer, encode(msg, max_frame=self.max_frame))

    async def send_frame(self, peer: int, buffers: Buffers) -> int:
        return await self._send_buffers(peer, buffers)

    async def send_all(
        self, peers: Iterable[int], msg: Message, *, timeout: float | None = None
    ) -> None:
        buffers = encode(msg, max_frame=self.max_frame)
        await send_frames(self._send_buffers, dict.fromkeys(peers, buffers), timeout)

    async def send_each(self, msgs: Mapping[int, Message], *, timeout: float | None = None) -> None:
        frames = {peer: encode(msg, max_frame=self.max_frame) for peer, msg in msgs.items()}
        await send_frames(self._send_buffers, frames, timeout)

    async def _send_buffers(self, peer: int, buffers: Buffers) -> int:
        if self._closed:
            raise TransportClosed(self.node)
        writer: asyncio.StreamWriter | None = None
        try:
            writer = self._out.get(peer) or await self._connect(peer)
            _check_open(writer)
            writer.writelines(buffers)
            nbytes = sum(len(b) for b in buffers)
            self.stats.bytes_sent += nbytes
            self.stats.msgs_sent += 1
            await writer.drain()
            _check_open(writer)  # a drain cut short by an abort returns without an error
            return nbytes
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
            for attempt in range(1, HANDSHAKE_ATTEMPTS + 1):
                try:
                    writer = await self._open(peer)
                    break
                except HandshakeFailed:
                    if attempt == HANDSHAKE_ATTEMPTS or self._closed:
                        raise
                    await asyncio.sleep(RETRY_PAUSE_S * attempt)
            self._out[peer] = writer
            return writer

    async def _open(self, peer: int) -> asyncio.StreamWriter:
        """A new connection to ``peer``, its handshake done, both within one
        ``handshake_timeout`` (HandshakeFailed otherwise: ``_connect`` tries again)."""
        tls = self.credentials.tls
        try:
            async with asyncio.timeout(self.handshake_timeout):
                reader, writer = await asyncio.open_connection(
                    *self._peers[peer],
                    ssl=tls.client if tls is not None else None,
                    ssl_handshake_timeout=self.handshake_timeout if tls is not None else None,
                )
                if self._closed:  # stopped while we were connecting
                    await _abort(writer)
                    raise TransportClosed(self.node)
                try:
                    await self._handshake(peer, reader, writer)
                except BaseException:
                    await _abort(writer)
                    raise
        except TimeoutError as exc:
            # A connect that times out is tried again like a handshake cut short: with a
            # thousand node processes on two cores a node can go seconds without the CPU
            # while its connect completes, and its loop then runs the expired timer first.
            why = TimeoutError(f"no connection and handshake within {self.handshake_timeout:g} s")
            raise HandshakeFailed(peer, why) from exc
        if self._closed:  # stopped during the handshake
            await _abort(writer)
            raise TransportClosed(self.node)
        return writer

    async def _handshake(
        self, peer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Prove who we are to ``peer``, and have it prove it is ``peer``: HandshakeFailed
        (a ConnectionError) if it does not (``_open`` bounds it in time)."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        creds = self.credentials
        initiator = Initiator(creds.run_id, creds.identity, creds.ring, peer)
        try:
            check_peer_certificate(writer.transport, creds, peer)
            self._write(writer, initiator.hello())
            challenge, nbytes = await _read_handshake_frame(reader)
            self.stats.bytes_recv += nbytes
            self.stats.msgs_recv += 1
            if self.on_handshake is not None:
                self.on_handshake(nbytes)
            self._write(writer, initiator.on_challenge(challenge))
        except ProtocolError as exc:
            raise HandshakeFailed(peer, exc) from exc

    def _write(self, writer: asyncio.StreamWriter, msg: Message) -> None:
        buffers = encode(msg)
        writer.writelines(buffers)
        self.stats.bytes_sent += encoded_size(buffers)
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
                conn.connection_lost(None)  # its timers too, even if the loop has no time left
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
