"""A process's overlay link: the sends a topology service makes on its node's transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dlactor.messages import Overlay
from dlactor.transport.base import Transport, TransportClosed, UnknownPeer
from dlactor.transport.emulated import sending_context

__all__ = ["Link"]

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
            sent = await self.transport.send(peer, msg)
        finally:
            self._busy[peer] -= 1
        self.msgs_sent += 1
        self.bytes_sent += sent

    def spawn(self, peer: int, msg: Overlay) -> None:
        # On an emulated network the message leaves now, not when the task gets to run.
        context = sending_context(self.transport)
        task = asyncio.get_running_loop().create_task(
            self._send_quietly(peer, msg), context=context
        )
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
