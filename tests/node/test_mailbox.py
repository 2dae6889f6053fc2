import asyncio

import pytest
import torch

from dlactor.messages import Payload, Share
from dlactor.node.mailbox import Mailbox, Received, RoundTimeout
from dlactor.wire.errors import RemoteProtocolError

NBYTES = 100


def share(sender: int, round: int) -> Share:
    return Share(sender, round, Payload({"x": torch.tensor([float(sender)])}))


async def test_wait_round_returns_once_every_peer_has_sent() -> None:
    box = Mailbox()
    waiter = asyncio.ensure_future(box.wait_round(0, {1, 2}, timeout=5))
    box.put(share(1, 0), NBYTES)
    await asyncio.sleep(0)
    assert not waiter.done()
    box.put(share(2, 0), NBYTES)
    got = await waiter
    assert sorted(got) == [1, 2]
    assert got[2].tensors["x"].item() == 2.0


async def test_fast_neighbours_next_round_is_kept_while_this_round_completes() -> None:
    box = Mailbox()
    box.put(share(1, 1), NBYTES)  # node 1 already at round 1
    box.put(share(1, 0), NBYTES)
    box.put(share(2, 0), NBYTES)
    assert sorted(await box.wait_round(0, {1, 2}, timeout=1)) == [1, 2]
    assert box.pending() == 1
    box.put(share(2, 1), NBYTES)
    got = await box.wait_round(1, {1, 2}, timeout=1)
    assert {s: p.tensors["x"].item() for s, p in got.items()} == {1: 1.0, 2: 2.0}
    assert box.pending() == 0


async def test_timeout_names_the_missing_peers() -> None:
    box = Mailbox()
    box.put(share(1, 0), NBYTES)
    with pytest.raises(RoundTimeout, match=r"round 0: no message from node\(s\) \[2, 3\]"):
        await box.wait_round(0, {1, 2, 3}, timeout=0.05)


async def test_late_message_for_a_finished_round_is_dropped() -> None:
    box = Mailbox()
    box.put(share(1, 0), NBYTES)
    await box.wait_round(0, {1}, timeout=1)
    box.put(share(2, 0), NBYTES)
    assert box.pending() == 0


async def test_same_round_twice_from_one_sender_is_a_remote_error() -> None:
    box = Mailbox()
    box.put(share(1, 0), NBYTES)
    with pytest.raises(RemoteProtocolError, match="twice"):
        box.put(share(1, 0), NBYTES)


async def test_bytes_are_counted_in_the_round_a_message_carries_not_when_it_arrives() -> None:
    box = Mailbox()
    box.put(share(1, 1), 700)  # node 1 is a round ahead of us
    box.put(share(1, 0), 500)
    box.put(share(2, 0), 300)
    await box.wait_round(0, {1, 2}, timeout=1)
    box.put(share(2, 1), 200)

    assert box.take_received(0) == Received(nbytes=800, msgs=2)
    await box.wait_round(1, {1, 2}, timeout=1)
    assert box.take_received(1) == Received(nbytes=900, msgs=2)


async def test_handshakes_and_late_messages_count_in_the_current_round() -> None:
    box = Mailbox()
    box.count(40)  # a hello while in round 0
    box.put(share(1, 0), 500)
    await box.wait_round(0, {1}, timeout=1)
    box.count(41)  # a hello while in round 1
    box.put(share(2, 0), 300)  # late for round 0

    assert box.take_received(0) == Received(nbytes=540, msgs=2)
    assert box.take_received(1) == Received(nbytes=341, msgs=2)
    assert box.take_received(1) == Received()  # taken once


async def test_wait_round_honours_a_deadline_shared_with_the_sends() -> None:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    with pytest.raises(RoundTimeout, match=r"within 5 s"):
        await box.wait_round(0, {1}, timeout=5, deadline=t0 + 0.05)
    assert loop.time() - t0 < 1


def test_a_round_sat_out_is_finished_too_and_later_bytes_count_in_the_next() -> None:
    """A FedAvg client that is not sampled closes the round without waiting in it: a
    handshake arriving afterwards belongs to the round it is in now, not to a closed one."""
    box = Mailbox(senders=8, rounds=10)
    box.put(share(3, 5), NBYTES)  # ahead: kept
    box.finish(2)
    box.count(40)
    assert box.current_round == 3
    assert box.take_received(2) == Received()
    assert box.take_received(3) == Received(nbytes=40, msgs=1)
    assert box.pending() == 1  # the share for round 5 is still there
