"""Received payloads buffered by (round, sender), so a fast neighbour can run ahead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from dlactor.messages import Payload, Share
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["Mailbox", "RoundTimeout"]

log = logging.getLogger("dlactor.node")


class RoundTimeout(TimeoutError):
    """A round's messages did not all arrive in time; names who is missing."""

    def __init__(self, round: int, missing: Iterable[int], timeout: float) -> None:
        self.round = round
        self.missing = sorted(missing)
        super().__init__(
            f"round {round}: no message from node(s) {self.missing} within {timeout:g} s"
        )


class Mailbox:
    """``put`` from the transport's callback; ``wait_round`` from the round loop."""

    def __init__(self) -> None:
        self._rounds: dict[int, dict[int, Payload]] = {}
        self._floor = 0  # rounds below this are finished: late messages for them are dropped
        self._arrived = asyncio.Event()

    def put(self, msg: Share) -> None:
        if msg.round < self._floor:
            log.debug("late message from node %d for finished round %d", msg.sender, msg.round)
            return
        box = self._rounds.setdefault(msg.round, {})
        if msg.sender in box:
            raise RemoteProtocolError(f"node {msg.sender} sent round {msg.round} twice")
        box[msg.sender] = msg.payload
        self._arrived.set()

    def pending(self) -> int:
        """Payloads buffered, over all rounds."""
        return sum(len(box) for box in self._rounds.values())

    async def wait_round(
        self, round: int, peers: Iterable[int], timeout: float
    ) -> dict[int, Payload]:
        """The payloads of ``round`` from every node in ``peers``; RoundTimeout otherwise.

        Completing a round discards everything buffered for it and earlier rounds.
        """
        expected = frozenset(peers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not expected <= self._rounds.get(round, {}).keys():
            self._arrived.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                got = self._rounds.get(round, {}).keys()
                raise RoundTimeout(round, expected - got, timeout) from None
        box = self._rounds.get(round, {})
        out = {sender: box[sender] for sender in expected}
        self._finish(round)
        return out

    def _finish(self, round: int) -> None:
        self._floor = round + 1
        for r in [r for r in self._rounds if r <= round]:
            del self._rounds[r]
