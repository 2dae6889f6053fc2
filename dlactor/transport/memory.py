"""The in-memory twin of the TCP transport, for protocol tests with many nodes in one process.

With ``codec=True`` (the default) every message is really encoded, fed through a
per-link :class:`FrameDecoder` and decoded, so a test exercises the wire format and
counts the same bytes TCP would (minus the per-connection hello). With
``codec=False`` the message object itself is handed over (faster; payloads are
snapshots, so sharing them is safe). Delivery is always asynchronous
(``call_soon``), as over a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from dlactor.messages import Message
from dlactor.transport.base import Address, Deliver, TrafficStats
from dlactor.wire.codec import decode, encode
from dlactor.wire.errors import ProtocolError
from dlactor.wire.framing import FrameDecoder

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """A switch connecting :class:`MemoryTransport` endpoints by node id."""

    def __init__(self, *, codec: bool = True) -> None:
        self.codec = codec
        self._endpoints: dict[int, MemoryTransport] = {}

    def transport(self, node: int, deliver: Deliver) -> MemoryTransport:
        return MemoryTransport(self, node, deliver)

    def _attach(self, endpoint: MemoryTransport) -> None:
        if endpoint.node in self._endpoints:
            raise ValueError(f"node {endpoint.node} is already on this network")
        self._endpoints[endpoint.node] = endpoint

    def _detach(self, endpoint: MemoryTransport) -> None:
        self._endpoints.pop(endpoint.node, None)

    def _endpoint(self, node: int) -> MemoryTransport:
        try:
            return self._endpoints[node]
        except KeyError:
            raise ConnectionRefusedError(f"node {node} is not on the network") from None


class MemoryTransport:
    """One node's endpoint on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, node: int, deliver: Deliver) -> None:
        self.node = node
        self.deliver = deliver
        self.stats = TrafficStats()
        self._network = network
        self._decoders: dict[int, FrameDecoder] = {}

    async def start(self) -> Address:
        self._network._attach(self)
        return ("memory", self.node)

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        """Nothing to do: the network knows every endpoint."""

    async def send(self, peer: int, msg: Message) -> None:
        await self.send_all([peer], msg)

    async def send_all(self, peers: Iterable[int], msg: Message) -> None:
        buffers = encode(msg)
        nbytes = sum(len(b) for b in buffers)
        loop = asyncio.get_running_loop()
        for peer in peers:
            target = self._network._endpoint(peer)
            self.stats.bytes_sent += nbytes
            self.stats.msgs_sent += 1
            if self._network.codec:
                loop.call_soon(target._receive_bytes, self.node, buffers)
            else:
                loop.call_soon(target._receive_message, msg, nbytes)
        await asyncio.sleep(0)

    def _receive_message(self, msg: Message, nbytes: int) -> None:
        self.stats.bytes_recv += nbytes
        self.stats.msgs_recv += 1
        self.deliver(msg, nbytes)

    def _receive_bytes(self, sender: int, buffers: list[bytes | memoryview]) -> None:
        decoder = self._decoders.setdefault(sender, FrameDecoder())
        try:
            for buf in buffers:
                decoder.receive_data(buf)
            while (body := decoder.next_frame()) is not None:
                self._receive_message(decode(body), 4 + len(body))
        except ProtocolError:
            self._decoders.pop(sender, None)
            self.stats.dropped_connections += 1

    async def stop(self) -> None:
        self._network._detach(self)
