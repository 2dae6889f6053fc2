"""The transport interface. Nodes get one passed in; TCP and in-memory implement it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dlactor.messages import Message

__all__ = ["Address", "Deliver", "PeerUnreachable", "TrafficStats", "Transport"]

Address = tuple[str, int]

#: Called on the event loop for every message received: (message, bytes it took on the wire).
Deliver = Callable[[Message, int], None]


class PeerUnreachable(ConnectionError):
    """Sending to a peer failed at the socket level (refused, reset, gone)."""

    def __init__(self, peer: int, cause: BaseException) -> None:
        self.peer = peer
        super().__init__(f"node {peer} is unreachable: {type(cause).__name__}: {cause}")


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

    async def start(self) -> Address:
        """Begin accepting connections; returns where peers reach this node."""
        ...

    def set_peers(self, addresses: Mapping[int, Address]) -> None:
        """The address book (from the start barrier). Connections open lazily on first send."""
        ...

    async def send(self, peer: int, msg: Message) -> None:
        """Send one message; returns once it is handed to the OS (``drain``ed)."""
        ...

    async def send_all(self, peers: Iterable[int], msg: Message) -> None:
        """Encode once, send to every peer concurrently."""
        ...

    async def stop(self) -> None:
        """Close every connection and stop accepting."""
        ...
