"""The in-memory twin of the TCP transport, for protocol tests with many nodes in one process.

With ``codec=True`` (the default) every message is really encoded, fed through a
per-link :class:`FrameDecoder` and decoded, so a test exercises the wire format and
counts the same bytes TCP would (minus the per-connection hello). With
``codec=False`` the message object itself is handed over (faster; payloads are
snapshots, so sharing them is safe). Delivery is always asynchronous
(``call_soon``), as over a socket.

Links mirror TCP connections: a sender's link to a peer opens with its first send and
closes with ``close_peer`` (or ``stop``); the receiver forgets its side of the link (its
frame decoder) when the close reaches it, after every message sent before it, as a TCP
receiver reads up to the end of the stream. ``open_connections`` counts both sides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from dlactor.messages import Message
from dlactor.transport.base import (
    Address,
    Deliver,
    HandshakeSeen,
    PeerUnreachable,
    TrafficStats,
    TransportClosed,
    UnknownPeer,
)
from dlactor.wire.codec import decode, encode
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import PREFIX_LEN, FrameDecoder

__all__ = ["MemoryNetwork", "MemoryTransport"]

log = logging.getLogger("dlactor.transport")


class MemoryNetwork:
    """A switch connecting :class:`MemoryTransport` endpoints by node id."""

    def __init__(self, *, codec: bool = True) -> None:
        self.codec = codec
        self._endpoints: dict[int, MemoryTransport] = {}
        self._left: set[int] = set()

    def transport(self, node: int, deliver: Deliver) -> MemoryTransport:
        return MemoryTransport(self, node, deliver)

    def _attach(self, endpoint: MemoryTransport) -> None:
        if endpoint.node in self._endpoints:
            raise ValueError(f"node {endpoint.node} is already on this network")
        self._endpoints[endpoint.node] = endpoint
        self._left.discard(endpoint.node)

    def _detach(self, endpoint: MemoryTransport) -> None:
        if self._endpoints.get(endpoint.node) is endpoint:
            del self._endpoints[endpoint.node]
            self._left.add(endpoint.node)

    def _endpoint(self, sender: int, node: int) -> MemoryTransport:
        """``node``'s endpoint: UnknownPeer if it never joined, PeerUnreachable if it left."""
        if node in self._endpoints:
            return self._endpoints[node]
        if node in self._left:
            raise PeerUnreachable(node, ConnectionRefusedError("it has stopped"))
        raise UnknownPeer(sender, node)


class MemoryTransport:
    """One node's endpoint on a :class:`MemoryNetwork`.

    It fails the way :class:`~dlactor.transport.tcp.TcpTransport` does: UnknownPeer for a
    node not on the network, PeerUnreachable for one that has stopped, TransportClosed
    after ``stop`` (and nothing is delivered to a stopped endpoint); a message that breaks
    the protocol drops that link, is logged and counted, and the node carries on.
    """

    def __init__(self, network: MemoryNetwork, node: int, deliver: Deliver) -> None:
        self.node = node
        self.deliver = deliver
        self.on_handshake: HandshakeSeen | None = None  # there are no handshakes in memory
        self.stats = TrafficStats()
        self._network = network
        self._out: set[int] = set()  # peers our links go to
        # Links from peers, each with its frame decoder (None without the codec).
        self._inbound: dict[int, FrameDecoder | None] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Links open: ours to peers, and peers' to us."""
        return len(self._out) + len(self._inbound)

    @property
    def connected_peers(self) -> frozenset[int]:
        """The peers we have a link to."""
        return frozenset(self._out)

    async def start(self) -> Address:
        self._network._attach(self)
        return ("memory", self.node)

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        """Nothing to do: the network knows every endpoint."""

    async def send(self, peer: int, msg: Message) -> int:
        nbytes = self._post([peer], msg)
        await asyncio.sleep(0)
        return nbytes

    async def send_frame(self, peer: int, buffers: Sequence[bytes | memoryview]) -> int:
        """An encoded frame: fed to the peer's decoder as is (without the codec: decoded
        here, and the message handed over)."""
        if self._network.codec:
            nbytes = self._post_buffers(peer, list(buffers))
        else:
            body = bytearray(b"".join(buffers)[PREFIX_LEN:])
            nbytes = self._post([peer], decode(body))
        await asyncio.sleep(0)
        return nbytes

    def _post_buffers(self, peer: int, buffers: list[bytes | memoryview]) -> int:
        if self._closed:
            raise TransportClosed(self.node)
        target = self._network._endpoint(self.node, peer)
        nbytes = sum(len(b) for b in buffers)
        self._out.add(target.node)
        self.stats.bytes_sent += nbytes
        self.stats.msgs_sent += 1
        asyncio.get_running_loop().call_soon(target._receive_bytes, self.node, buffers)
        return nbytes

    async def send_all(
        self, peers: Iterable[int], msg: Message, *, timeout: float | None = None
    ) -> None:
        """Hand ``msg`` to every peer; it never blocks, so ``timeout`` cannot expire."""
        self._post(peers, msg)
        await asyncio.sleep(0)

    async def send_each(self, msgs: Mapping[int, Message], *, timeout: float | None = None) -> None:
        """Hand each peer its message; it never blocks, so ``timeout`` cannot expire."""
        for peer, msg in sorted(msgs.items()):
            self._post([peer], msg)
        await asyncio.sleep(0)

    def _post(self, peers: Iterable[int], msg: Message) -> int:
        """Queue ``msg`` for every peer; the bytes of one copy on the wire."""
        if self._closed:
            raise TransportClosed(self.node)
        targets, unreachable = [], []
        for peer in peers:
            try:
                targets.append(self._network._endpoint(self.node, peer))
            except PeerUnreachable as exc:  # the others still get theirs (as over TCP)
                unreachable.append(exc)
        buffers = encode(msg)
        nbytes = sum(len(b) for b in buffers)
        loop = asyncio.get_running_loop()
        for target in targets:
            self._out.add(target.node)
            self.stats.bytes_sent += nbytes
            self.stats.msgs_sent += 1
            if self._network.codec:
                loop.call_soon(target._receive_bytes, self.node, buffers)
            else:
                loop.call_soon(target._receive_message, self.node, msg, nbytes)
        if unreachable:
            unreachable[0].peers = frozenset(exc.peer for exc in unreachable)
            raise unreachable[0]
        return nbytes

    def _receive_message(self, sender: int, msg: Message, nbytes: int) -> None:
        if self._closed:
            return
        self._inbound.setdefault(sender, None)
        try:
            self.deliver(msg, nbytes)
        except ProtocolError as exc:
            self._drop(sender, exc)
            return
        except Exception as exc:  # a bug in what handles a message: dropped as TCP does
            self._drop(sender, self._handler_failed(sender, exc))
            return
        self.stats.bytes_recv += nbytes
        self.stats.msgs_recv += 1

    def _receive_bytes(self, sender: int, buffers: list[bytes | memoryview]) -> None:
        if self._closed:
            return
        decoder = self._inbound.get(sender)
        if decoder is None:
            decoder = self._inbound[sender] = FrameDecoder()
        for buf in buffers:
            decoder.receive_data(buf)
        try:
            while (body := decoder.next_frame()) is not None:
                msg = decode(body)
                self.deliver(msg, PREFIX_LEN + len(body))
                self.stats.bytes_recv += PREFIX_LEN + len(body)
                self.stats.msgs_recv += 1
        except ProtocolError as exc:
            self._drop(sender, exc)
        except Exception as exc:  # a bug in what handles a message: dropped as TCP does
            self._drop(sender, self._handler_failed(sender, exc))

    def _handler_failed(self, sender: int, exc: Exception) -> RemoteProtocolError:
        """Log a failure of this node's own message handling with its traceback (as TCP
        does): the connection is dropped, the node carries on."""
        log.error("node %d: handling node %d's message failed", self.node, sender, exc_info=exc)
        return RemoteProtocolError(f"its message could not be handled: {exc!r}")

    def _drop(self, sender: int, exc: ProtocolError) -> None:
        """As TCP drops a connection: forget the link's state, log, count."""
        log.warning("node %d: dropped connection from node %d: %s", self.node, sender, exc)
        self._inbound.pop(sender, None)
        self.stats.dropped_connections += 1

    def close_peer(self, peer: int) -> None:
        """Close our link to ``peer``: it still receives what was sent before, then the
        close (the order of ``call_soon``)."""
        if peer not in self._out:
            return
        self._out.discard(peer)
        target = self._network._endpoints.get(peer)
        if target is not None:
            asyncio.get_running_loop().call_soon(target._link_closed, self.node)

    def _link_closed(self, sender: int) -> None:
        self._inbound.pop(sender, None)

    async def stop(self) -> None:
        for peer in list(self._out):
            self.close_peer(peer)
        self._closed = True
        self._inbound.clear()
        self._network._detach(self)
