"""The in-memory transport fails the way TCP does, so protocol tests on it mean something."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import torch

from dlactor.messages import Message, Payload, Share
from dlactor.testing import credentials
from dlactor.transport.base import (
    PeerUnreachable,
    Transport,
    TransportClosed,
    UnknownPeer,
)
from dlactor.transport.memory import MemoryNetwork
from dlactor.transport.tcp import TcpTransport
from dlactor.wire.errors import RemoteProtocolError

Received = list[tuple[Message, int]]
Make = Callable[[int, Received], Transport]


def picky(inbox: Received) -> Callable[[Message, int], None]:
    """A deliver callback that refuses payloads without a tensor named "ok", as a node refuses
    payloads that do not fit its model."""

    def deliver(msg: Message, nbytes: int) -> None:
        if isinstance(msg, Share) and "crash" in msg.payload.tensors:
            raise KeyError("a bug in the receiver's own check")
        if isinstance(msg, Share) and "ok" not in msg.payload.tensors:
            raise RemoteProtocolError("payload does not fit")
        inbox.append((msg, nbytes))

    return deliver


@pytest.fixture(params=["tcp", "memory", "memory-nocodec"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    made: list[Transport] = []
    network = MemoryNetwork(codec=request.param != "memory-nocodec")
    creds = credentials(8, run_id="r")  # node 7 has keys but never an address

    def make_one(node: int, inbox: Received) -> Transport:
        t: Transport
        if request.param == "tcp":
            t = TcpTransport(credentials=creds[node], deliver=picky(inbox))
        else:
            t = network.transport(node, picky(inbox))
        made.append(t)
        return t

    yield make_one
    for t in made:
        await t.stop()


async def connected(make: Make, n: int) -> tuple[list[Transport], list[Received]]:
    inboxes: list[Received] = [[] for _ in range(n)]
    transports = [make(i, inboxes[i]) for i in range(n)]
    book = {i: await t.start() for i, t in enumerate(transports)}
    for t in transports:
        t.set_peers(book)
    return transports, inboxes


def share(tensor: str = "ok", sender: int = 0) -> Share:
    return Share(sender, 0, Payload({tensor: torch.ones(3)}))


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_sending_to_a_node_with_no_address_is_unknown_peer(make: Make) -> None:
    (t0, _), _ = await connected(make, 2)

    with pytest.raises(UnknownPeer, match="no address for node 7"):
        await t0.send(7, share())
    with pytest.raises(UnknownPeer):
        await t0.send_all([1, 7], share())


async def test_sending_to_a_stopped_node_is_peer_unreachable(make: Make) -> None:
    (t0, t1), _ = await connected(make, 2)
    await t1.stop()

    with pytest.raises(PeerUnreachable, match="node 1 is unreachable"):
        await t0.send(1, share())


async def test_sending_after_stop_is_transport_closed(make: Make) -> None:
    (t0, _), _ = await connected(make, 2)
    await t0.stop()

    with pytest.raises(TransportClosed):
        await t0.send_all([1], share())


@pytest.mark.parametrize(
    ("tensor", "logged", "traceback"),
    [
        ("bad", "payload does not fit", False),  # refused: a RemoteProtocolError
        ("crash", "a bug in the receiver's own check", True),  # anything else: a bug, shown
    ],
    ids=["refused", "handler-bug"],
)
async def test_a_message_the_receiver_cannot_take_drops_that_link_and_the_node_carries_on(
    make: Make, caplog: pytest.LogCaptureFixture, tensor: str, logged: str, traceback: bool
) -> None:
    (t0, t1, t2), inboxes = await connected(make, 3)

    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        await t0.send(2, share(tensor))
        await wait_until(lambda: t2.stats.dropped_connections == 1)
    await t1.send(2, share(sender=1))
    await wait_until(lambda: len(inboxes[2]) == 1)

    assert "dropped connection from node 0" in caplog.text
    assert logged in caplog.text
    assert any(r.exc_info for r in caplog.records) == traceback
    ((msg, _),) = inboxes[2]
    assert isinstance(msg, Share) and msg.sender == 1
    assert t2.stats.dropped_connections == 1


async def test_close_peer_delivers_what_was_sent_then_both_sides_forget_the_link(
    make: Make,
) -> None:
    (t0, t1), inboxes = await connected(make, 2)
    await t0.send(1, share())
    assert t0.open_connections == 1

    t0.close_peer(1)
    await wait_until(lambda: t0.open_connections == 0 and t1.open_connections == 0)

    assert len(inboxes[1]) == 1  # sent before the close: delivered
    await t0.send(1, share())  # a later send opens a new link
    await wait_until(lambda: len(inboxes[1]) == 2)
    assert t0.open_connections == 1 and t1.open_connections == 1
    t0.close_peer(7)  # no link: nothing to do


async def test_after_stop_no_link_is_left_on_either_side(make: Make) -> None:
    (t0, t1, t2), inboxes = await connected(make, 3)
    await t0.send_all([1, 2], share())
    await wait_until(lambda: len(inboxes[1]) == len(inboxes[2]) == 1)
    assert (t0.open_connections, t1.open_connections, t2.open_connections) == (2, 1, 1)

    await t0.stop()

    await wait_until(
        lambda: (t0.open_connections, t1.open_connections, t2.open_connections) == (0, 0, 0)
    )
