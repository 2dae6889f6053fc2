"""The node actor: built without a network, keeps receiving while it trains, stops cleanly."""

import asyncio
import logging
import time
from collections.abc import Mapping

import pytest
import torch

from dlactor.context import EvalStats, RoundContext, TrainStats
from dlactor.launch.plan import Plan, build_node
from dlactor.messages import Payload, Share
from dlactor.node.mailbox import RoundTimeout
from dlactor.node.node import Node, SendStalled
from dlactor.security.credentials import Credentials
from dlactor.security.handshake import Responder
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, open_as
from dlactor.transport.base import Deliver
from dlactor.transport.tcp import TcpTransport, read_handshake_frame
from dlactor.wire.codec import encode
from tests.conftest import small_plan


class SlowTrainer:
    """Blocks its worker thread the way a long local-training step does."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _block(self) -> TrainStats:
        time.sleep(self.seconds)
        return TrainStats(loss=0.0, steps=1, samples=1)

    async def train(self, ctx: RoundContext) -> TrainStats:
        return await asyncio.to_thread(self._block)

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        return EvalStats(loss=0.0, accuracy=0.0, samples=0)


async def test_a_node_is_built_without_a_socket_and_listens_only_once_started() -> None:
    plan = small_plan()

    def tcp(deliver: Deliver) -> TcpTransport:
        return TcpTransport(credentials=creds(plan, 0), deliver=deliver)

    node = build_node(plan, 0, tcp)
    assert isinstance(node.transport, TcpTransport)
    assert node.transport.address is None
    host, port = await node.start()
    assert node.transport.address == (host, port) and port > 0
    await node.stop()


async def test_a_training_node_keeps_receiving_its_neighbours_messages() -> None:
    plan = small_plan("nodes=4", "topology.kind=complete", "rounds=1")
    _, nodes = build_network(plan)
    slow = nodes[0]
    slow.trainer = SlowTrainer(0.5)
    for node in nodes:
        await node.start()
    rounds = [asyncio.ensure_future(node.run_round(0)) for node in nodes]
    await asyncio.sleep(0.3)  # node 0 is still inside its training step...
    assert not rounds[0].done()
    assert slow.mailbox.pending() == 3  # ...and its loop has received all three neighbours
    await asyncio.gather(*rounds)
    for node in nodes:
        await node.stop()


async def test_a_missing_neighbour_times_the_round_out_naming_it() -> None:
    plan = small_plan("nodes=4", "topology.kind=complete", "launcher.round_timeout_s=0.2")
    _, nodes = build_network(plan)
    for node in nodes:
        await node.start()
    with pytest.raises(RoundTimeout, match=r"node\(s\) \[3\]"):
        await asyncio.gather(*(node.run_round(0) for node in nodes[:3]))
    for node in nodes:
        await node.stop()


class HugeSharing:
    """Sends 32 MB per round: enough to fill the socket buffers of a peer that never reads."""

    async def outgoing(self, ctx: RoundContext) -> Payload:
        return Payload({"params": torch.zeros(8 << 20)})

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        pass


def creds(plan: Plan, process: int) -> Credentials:
    """``process``'s credentials, every other key kept (several processes in one test)."""
    return plan.keys.credentials(process, plan.run_id, keep_others=True)


def tcp_node(plan: Plan, node: int = 0) -> Node:
    def tcp(deliver: Deliver) -> TcpTransport:
        return TcpTransport(credentials=creds(plan, node), deliver=deliver, close_timeout=0.2)

    return build_node(plan, node, tcp)


async def test_a_neighbour_that_stops_reading_fails_the_round_naming_it_in_time() -> None:
    plan = small_plan("nodes=2", "topology.kind=complete", "launcher.round_timeout_s=0.5")
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the handshake as node 1, then reads nothing more."""
        held.append(writer)
        me = creds(plan, 1)
        responder = Responder(plan.run_id, me.identity, me.ring)
        writer.writelines(encode(responder.on_hello(await read_handshake_frame(reader))))
        responder.on_proof(await read_handshake_frame(reader))

    stalled = await asyncio.start_server(never_read, "127.0.0.1", 0)
    node = tcp_node(plan)
    node.sharing = HugeSharing()
    await node.start()
    node.connect({1: stalled.sockets[0].getsockname()[:2]})

    with pytest.raises(SendStalled, match=r"round 0: node\(s\) \[1\] did not take"):
        async with asyncio.timeout(10):
            await node.run_round(0)

    async with asyncio.timeout(5):
        await node.stop()
    for writer in held:
        writer.transport.abort()
    stalled.close()
    await stalled.wait_closed()


def wire(msg: Share) -> bytes:
    return b"".join(bytes(b) for b in encode(msg))


@pytest.mark.parametrize(
    ("case", "tensors"),
    [
        ("wrong name", {"weights": torch.zeros(1210)}),
        ("wrong shape", {"params": torch.zeros(1209)}),
        ("wrong dtype", {"params": torch.zeros(1210, dtype=torch.float64)}),
        ("extra tensor", {"params": torch.zeros(1210), "x": torch.zeros(1)}),
        ("NaN", {"params": torch.zeros(1210).index_fill(0, torch.tensor([7]), float("nan"))}),
        ("Inf", {"params": torch.zeros(1210).index_fill(0, torch.tensor([7]), float("-inf"))}),
    ],
)
async def test_a_payload_that_does_not_fit_the_model_drops_that_peer_and_the_node_carries_on(
    case: str, tensors: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    plan = small_plan("nodes=4", "topology.kind=complete")
    assert plan.model_params == 1210
    node = tcp_node(plan)
    addr = await node.start()
    reader, writer = await open_as(addr, creds(plan, 1), 0)  # node 1, proven

    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        writer.write(wire(Share(1, 0, Payload(tensors))))
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # dropped on arrival

    assert "node 1 sent an unusable payload" in caplog.text
    assert node.mailbox.pending() == 0
    good = Share(2, 0, Payload({"params": flatten(plan.model.parameters())}))
    honest = tcp_node(plan, 2).transport
    honest.set_peers({0: addr})
    await honest.send(0, good)
    async with asyncio.timeout(5):
        while node.mailbox.pending() == 0:
            await asyncio.sleep(0.01)
    writer.close()
    await honest.stop()
    await node.stop()


async def test_an_unusable_payload_on_the_memory_network_is_dropped_too() -> None:
    plan = small_plan("nodes=4", "topology.kind=complete")
    _, nodes = build_network(plan, codec=False)
    for node in nodes:
        await node.start()

    await nodes[1].transport.send(0, Share(1, 0, Payload({"params": torch.zeros(3)})))
    await asyncio.sleep(0.01)

    assert nodes[0].transport.stats.dropped_connections == 1
    assert nodes[0].mailbox.pending() == 0
    for node in nodes:
        await node.stop()
