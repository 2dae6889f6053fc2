"""How much a peer can make a node's mailbox hold: two shares at most, both usable."""

from __future__ import annotations

import logging

import pytest

from dlactor.messages import Payload, Share
from dlactor.node.mailbox import Mailbox
from dlactor.wire.errors import RemoteProtocolError


def share(sender: int, round: int) -> Share:
    return Share(sender, round, Payload(meta={"from": sender}))


async def test_a_share_from_a_node_that_is_not_a_neighbour_this_round_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Mailbox(senders=8, rounds=10)
    box.put(share(5, 0), 10)  # before the round's neighbours are known: kept for now
    box.put(share(1, 0), 10)
    with caplog.at_level(logging.WARNING, logger="dlactor.node"):
        box.expect(0, [1, 2])
        box.put(share(6, 0), 10)  # after: dropped on arrival
    assert box.pending() == 1 and box.dropped == 2
    assert "node 5 for round 0: not a neighbour" in caplog.text
    assert "node 6 for round 0: not a neighbour" in caplog.text


async def test_one_share_ahead_per_sender_is_kept_and_a_second_is_a_protocol_error() -> None:
    box = Mailbox(senders=8, rounds=10)
    box.put(share(3, 4), 10)  # a neighbour far ahead (dynamic topologies) is fine, once
    box.put(share(3, 0), 10)  # and its share for the current round too
    with pytest.raises(RemoteProtocolError, match=r"rounds \[4\] and 5 ahead of round 0"):
        box.put(share(3, 5), 10)
    assert box.pending() == 2


async def test_once_the_round_is_finished_the_sender_may_be_ahead_again() -> None:
    box = Mailbox(senders=8, rounds=10)
    box.put(share(3, 0), 10)
    box.put(share(3, 1), 10)
    assert set(await box.wait_round(0, [3], timeout=1.0)) == {3}
    box.put(share(3, 2), 10)  # round 1 is current now: 2 is its one share ahead
    assert set(await box.wait_round(1, [3], timeout=1.0)) == {3}


@pytest.mark.parametrize(
    ("msg", "why"),
    [(share(8, 0), "not a process that sends shares"), (share(2, 10), "the run has 10 rounds")],
)
async def test_a_share_no_round_can_use_is_dropped_and_logged(
    msg: Share, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = Mailbox(senders=8, rounds=10)
    with caplog.at_level(logging.WARNING, logger="dlactor.node"):
        box.put(msg, 10)
    assert box.pending() == 0 and box.dropped == 1
    assert why in caplog.text


async def test_the_payload_check_runs_only_for_a_share_the_mailbox_keeps() -> None:
    """A strategy's check may cache what it decoded: it must see no share the mailbox drops,
    or a peer could make that cache grow without bound."""
    checked: list[int] = []
    box = Mailbox(senders=8, rounds=10)
    box.put(share(1, 0), 10)
    assert await box.wait_round(0, [1], timeout=1.0)
    for msg in (share(1, 0), share(9, 1), share(2, 10)):  # late, not a node, past the run
        box.put(msg, 10, check=lambda m=msg: checked.append(m.round))  # type: ignore[misc]
    box.put(share(1, 1), 10, check=lambda: checked.append(1))
    assert checked == [1]
