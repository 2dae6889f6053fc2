"""TCP transport: asyncio streams out, a zero-copy BufferedProtocol in.

Outgoing: one connection per peer, opened lazily on the first send and reused;
its first frame is our ``Hello``. Frames go out with ``writelines`` of the codec's
buffers (tensor memory is not copied under uvloop) followed by ``drain`` so a slow
peer slows us down instead of growing our buffers.

Incoming: the kernel writes straight into the :class:`FrameDecoder`'s buffers
(big frames land in their final bytearray; tensors are views over it). The first
frame must be a ``Hello`` with this run's id and secret. Any protocol error drops
that connection, logs it, and counts it in ``stats.dropped_connections``; the node
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from dlactor.messages import Hello, Message
from dlactor.transport.base import Address, Deliver, PeerUnreachable, TrafficStats
from dlactor.wire.codec import decode, encode
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME, FrameDecoder

__all__ = ["TcpTransport", "check_hello"]

log = logging.getLogger("dlactor.transport")

Buffers = Sequence[bytes | memoryview]


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
        self._decoder = FrameDecoder(max_frame=owner.max_frame)
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
            self.peer = check_hello(msg, owner.run_id, owner.secret).sender
        elif isinstance(msg, Hello):
            raise RemoteProtocolError(f"node {self.peer} sent a second hello")
        elif getattr(msg, "sender", self.peer) != self.peer:
            raise RemoteProtocolError(f"node {self.peer} sent a message as node {msg.sender}")  # type: ignore[union-attr]
        else:
            owner.deliver(msg, nbytes)
        owner.stats.bytes_recv += nbytes
        owner.stats.msgs_recv += 1

    def drop(self, exc: Exception) -> None:
        who = f"node {self.peer}" if self.peer is not None else "an unidentified peer"
        log.warning("node %d: dropped connection from %s: %s", self._owner.node, who, exc)
        self._owner.stats.dropped_connections += 1
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound.discard(self)


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
    ) -> None:
        self.node, self.run_id, self.secret = node, run_id, secret
        self.deliver = deliver
        self.max_frame = max_frame
        self.stats = TrafficStats()
        self._host, self._port = host, port
        self._peers: dict[int, Address] = {}
        self._out: dict[int, asyncio.StreamWriter] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
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
        return len(self._out) + len(self._inbound)

    async def send(self, peer: int, msg: Message) -> None:
        await self._send_buffers(peer, encode(msg, max_frame=self.max_frame))

    async def send_all(self, peers: Iterable[int], msg: Message) -> None:
        buffers = encode(msg, max_frame=self.max_frame)
        try:
            async with asyncio.TaskGroup() as tg:
                for peer in peers:
                    tg.create_task(self._send_buffers(peer, buffers))
        except* PeerUnreachable as group:
            raise group.exceptions[0] from None

    async def _send_buffers(self, peer: int, buffers: Buffers) -> None:
        try:
            writer = self._out.get(peer) or await self._connect(peer)
            writer.writelines(buffers)
            self.stats.bytes_sent += sum(len(b) for b in buffers)
            self.stats.msgs_sent += 1
            await writer.drain()
        except OSError as exc:
            self._out.pop(peer, None)
            raise PeerUnreachable(peer, exc) from exc

    async def _connect(self, peer: int) -> asyncio.StreamWriter:
        lock = self._connecting.setdefault(peer, asyncio.Lock())
        async with lock:
            if peer in self._out:
                return self._out[peer]
            if peer not in self._peers:
                raise KeyError(f"node {self.node} has no address for node {peer}")
            host, port = self._peers[peer]
            _, writer = await asyncio.open_connection(host, port)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = encode(Hello(self.run_id, self.secret, self.node))
            writer.writelines(hello)
            self.stats.bytes_sent += sum(len(b) for b in hello)
            self.stats.msgs_sent += 1
            self._out[peer] = writer
            return writer

    async def close_peer(self, peer: int) -> None:
        """Close our connection to ``peer`` (e.g. when a topology drops it)."""
        writer = self._out.pop(peer, None)
        if writer is not None:
            writer.close()
            await _closed(writer)

    async def stop(self) -> None:
        for peer in list(self._out):
            await self.close_peer(peer)
        if self._server is not None:
            self._server.close()
            for conn in list(self._inbound):
                if conn._transport is not None:
                    conn._transport.abort()
            await self._server.wait_closed()
            self._server = None


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
