"""Received payloads buffered by (round, sender), so a fast neighbour can run ahead.

The mailbox also counts what arrived for each round: a Share's bytes belong to the round it
carries, whenever it arrives, so a node's ``bytes_recv`` for round r is exactly what its
neighbours sent it for round r even when they are not in lockstep. Anything that belongs to
no round (a connection's handshake, a late message for a finished round) is counted in the
round the node is in when it arrives.

It holds only what a round can use, so a peer cannot make a node buffer more than two
payloads of its own: for the current round, one from each of the round's expected senders
(the others are dropped and logged once the round's neighbours are known); for a later
round, one per sender. An honest neighbour is never further ahead than that: having sent
its share for round r, it waits for this node's share for r, which this node sends only in
round r. A second share ahead from the same sender is a protocol error (the transport drops
that connection); a share for a round past the run's last, or from a process that is not a
learning node, is dropped and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
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

    def __init__(
        self, *, senders: int | None = None, rounds: int | None = None, lookahead: int = 1
    ) -> None:
        """``senders``: the count of processes that may send shares (ids
        ``0..senders-1``); ``rounds``: the run's (None: no bound); ``lookahead``: how many
        later rounds one sender may have a share buffered for (1 for D-PSGD, where a
        neighbour waits for this node's share before it goes on)."""
        self._rounds: dict[int, dict[int, Payload]] = {}
        self._received: dict[int, Received] = {}
        self._floor = 0  # the current round: rounds below it are finished
        self._arrived = asyncio.Event()
        self._senders, self._last = senders, rounds
        self._expected: dict[int, frozenset[int]] = {}  # round -> its senders, once known
        self._lookahead = lookahead
        self._ahead: dict[int, set[int]] = {}  # sender -> the later rounds it sent shares for
        self._gone: set[int] = set()  # senders the run goes on without (``gone``)
        self.dropped = 0

    @property
    def current_round(self) -> int:
        """The lowest round not finished yet: the one the node is in."""
        return self._floor

    def put(self, msg: Share, nbytes: int, check: Callable[[], None] | None = None) -> None:
        """Buffer ``msg`` (``nbytes`` on the wire) for its round; late ones are only counted.

        ``check`` (the node's payload check) runs only for a share the mailbox keeps, before
        it is kept: what it caches is then bounded by what the mailbox holds."""
        if msg.round < self._floor:
            log.debug("late message from node %d for finished round %d", msg.sender, msg.round)
            self.count(nbytes)
            return
        why = self._unwanted(msg)
        if why:
            log.warning("dropped a share from node %d for round %d: %s", msg.sender, msg.round, why)
            self.dropped += 1
            self.count(nbytes)
            return
        box = self._rounds.setdefault(msg.round, {})
        if msg.sender in box:
            raise RemoteProtocolError(f"node {msg.sender} sent round {msg.round} twice")
        ahead = self._ahead.get(msg.sender, set())
        if msg.round > self._floor and len(ahead) >= self._lookahead:
            raise RemoteProtocolError(
                f"node {msg.sender} sent shares for rounds {sorted(ahead)} and {msg.round} "
                f"ahead of round {self._floor} (at most {self._lookahead} may wait)"
            )
        if check is not None:
            check()
        if msg.round > self._floor:
            self._ahead.setdefault(msg.sender, set()).add(msg.round)
        box[msg.sender] = msg.payload
        self._count(msg.round, nbytes)
        self._arrived.set()

    def _unwanted(self, msg: Share) -> str:
        """Why ``msg`` is of no use to any round (empty if it is)."""
        if self._senders is not None and msg.sender >= self._senders:
            return "not a process that sends shares"
        if self._last is not None and msg.round >= self._last:
            return f"the run has {self._last} rounds"
        expected = self._expected.get(msg.round)
        if expected is not None and msg.sender not in expected:
            return "not a neighbour in that round"
        return ""

    def expect(self, round: int, peers: Iterable[int]) -> None:
        """The senders of ``round``: shares buffered from others are dropped (and logged),
        and so are any that arrive later."""
        expected = self._expected[round] = frozenset(peers)
        box = self._rounds.get(round, {})
        for sender in [s for s in box if s not in expected]:
            log.warning("dropped a share from node %d for round %d: not a neighbour", sender, round)
            del box[sender]
            self.dropped += 1

    def gone(self, sender: int) -> None:
        """``sender`` died and the run goes on without it: no round waits for it any more
        (a wait in progress returns with what came from the others)."""
        self._gone.add(sender)
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
        """The payloads of ``round`` from every node in ``peers`` (but those ``gone``, whose
        payload is there only if it came before they died); RoundTimeout otherwise.

        ``deadline`` (loop time) defaults to ``timeout`` from now; the node passes its round's
        deadline, which the sends of the round have used part of. Completing a round discards
        everything buffered for it and earlier rounds.
        """
        expected = frozenset(peers)
        self.expect(round, expected)
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + timeout
        while not expected - self._gone <= self._rounds.get(round, {}).keys():
            self._arrived.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                got = self._rounds.get(round, {}).keys()
                raise RoundTimeout(round, expected - got - self._gone, timeout) from None
        box = self._rounds.get(round, {})
        out = {sender: box[sender] for sender in expected if sender in box}
        self._finish(round)
        return out

    def finish(self, round: int) -> None:
        """``round`` is over for this node (it waited for it, or sat it out): what comes
        for it or earlier rounds from now on is late, and counts in the current round."""
        self._finish(round)

    def _finish(self, round: int) -> None:
        self._floor = max(self._floor, round + 1)
        for r in [r for r in self._rounds if r <= round]:
            del self._rounds[r]
        for r in [r for r in self._expected if r <= round]:
            del self._expected[r]
        for sender in list(self._ahead):
            later = {r for r in self._ahead[sender] if r > self._floor}
            if later:
                self._ahead[sender] = later
            else:
                del self._ahead[sender]
