"""Received payloads buffered by (round, sender), so a fast neighbour can run ahead.

The mailbox also counts what arrived for each round: a Share's bytes belong to the round it
carries, whenever it arrives, so a node's ``bytes_recv`` for round r is exactly what its
neighbours sent it for round r even when they are not in lockstep. Anything that belongs to
no round (a connection's handshake, a late message for a finished round) is counted in the
round the node is in when it arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from dlactor.messages import Payload, Share
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["Mailbox", "Received", "RoundTimeout"]

log = logging.getLogger("dlactor.node")


class RoundTimeout(TimeoutError):
    """A round's messages did not all arrive in time; names who is missing."""

    def __init__(self, round: int, missing: Iterable[int], timeout: float) -> None:
        self.round = round
        self.missing = sorted(missing)
        super().__init__(
            f"round {round}: no message from node(s) {self.missing} within {timeout:g} s"
        )


@dataclass(slots=True)
class Received:
    """Bytes (framing included) and messages received for one round."""

    nbytes: int = 0
    msgs: int = 0


class Mailbox:
    """``put`` from the transport's callback; ``wait_round`` from the round loop."""

    def __init__(self) -> None:
        self._rounds: dict[int, dict[int, Payload]] = {}
        self._received: dict[int, Received] = {}
        self._floor = 0  # the current round: rounds below it are finished
        self._arrived = asyncio.Event()

    @property
    def current_round(self) -> int:
        """The lowest round not finished yet: the one the node is in."""
        return self._floor

    def put(self, msg: Share, nbytes: int) -> None:
        """Buffer ``msg`` (``nbytes`` on the wire) for its round; late ones are only counted."""
        if msg.round < self._floor:
            log.debug("late message from node %d for finished round %d", msg.sender, msg.round)
            self.count(nbytes)
            return
        box = self._rounds.setdefault(msg.round, {})
        if msg.sender in box:
            raise RemoteProtocolError(f"node {msg.sender} sent round {msg.round} twice")
        box[msg.sender] = msg.payload
        self._count(msg.round, nbytes)
        self._arrived.set()

    def count(self, nbytes: int) -> None:
        """Count a frame that belongs to no round (a handshake) in the current round."""
        self._count(self._floor, nbytes)

    def _count(self, round: int, nbytes: int) -> None:
        received = self._received.setdefault(round, Received())
        received.nbytes += nbytes
        received.msgs += 1

    def take_received(self, round: int) -> Received:
        """What was counted for ``round`` (forgotten here). Final once the round is finished:
        later arrivals count in the current round."""
        return self._received.pop(round, Received())

    def pending(self) -> int:
        """Payloads buffered, over all rounds."""
        return sum(len(box) for box in self._rounds.values())

    async def wait_round(
        self, round: int, peers: Iterable[int], timeout: float, *, deadline: float | None = None
    ) -> dict[int, Payload]:
        """The payloads of ``round`` from every node in ``peers``; RoundTimeout otherwise.

        ``deadline`` (loop time) defaults to ``timeout`` from now; the node passes its round's
        deadline, which the sends of the round have used part of. Completing a round discards
        everything buffered for it and earlier rounds.
        """
        expected = frozenset(peers)
        loop = asyncio.get_running_loop()
        if deadline is None:
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
        self._floor = max(self._floor, round + 1)
        for r in [r for r in self._rounds if r <= round]:
            del self._rounds[r]
