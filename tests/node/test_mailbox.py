import asyncio

import pytest
import torch

from dlactor.messages import Payload, Share
from dlactor.node.mailbox import Mailbox, RoundTimeout
from dlactor.wire.errors import RemoteProtocolError


def share(sender: int, round: int) -> Share:
    return Share(sender, round, Payload({"x": torch.tensor([float(sender)])}))


async def test_wait_round_returns_once_every_peer_has_sent() -> None:
    box = Mailbox()
    waiter = asyncio.ensure_future(box.wait_round(0, {1, 2}, timeout=5))
    box.put(share(1, 0))
    await asyncio.sleep(0)
    assert not waiter.done()
    box.put(share(2, 0))
    got = await waiter
    assert sorted(got) == [1, 2]
    assert got[2].tensors["x"].item() == 2.0


async def test_fast_neighbours_next_round_is_kept_while_this_round_completes() -> None:
    box = Mailbox()
    box.put(share(1, 1))  # node 1 already at round 1
    box.put(share(1, 0))
    box.put(share(2, 0))
    assert sorted(await box.wait_round(0, {1, 2}, timeout=1)) == [1, 2]
    assert box.pending() == 1
    box.put(share(2, 1))
    got = await box.wait_round(1, {1, 2}, timeout=1)
    assert {s: p.tensors["x"].item() for s, p in got.items()} == {1: 1.0, 2: 2.0}
    assert box.pending() == 0


async def test_timeout_names_the_missing_peers() -> None:
    box = Mailbox()
    box.put(share(1, 0))
    with pytest.raises(RoundTimeout, match=r"round 0: no message from node\(s\) \[2, 3\]"):
        await box.wait_round(0, {1, 2, 3}, timeout=0.05)


async def test_late_message_for_a_finished_round_is_dropped() -> None:
    box = Mailbox()
    box.put(share(1, 0))
    await box.wait_round(0, {1}, timeout=1)
    box.put(share(2, 0))
    assert box.pending() == 0


async def test_same_round_twice_from_one_sender_is_a_remote_error() -> None:
    box = Mailbox()
    box.put(share(1, 0))
    with pytest.raises(RemoteProtocolError, match="twice"):
        box.put(share(1, 0))
