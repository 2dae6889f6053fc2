"""The node actor: built without a network, keeps receiving while it trains, stops cleanly."""

import asyncio
import time

import pytest

from dlactor.launch.plan import build_node
from dlactor.node.context import EvalStats, RoundContext, TrainStats
from dlactor.node.mailbox import RoundTimeout
from dlactor.testing import build_network
from dlactor.transport.base import Deliver
from dlactor.transport.tcp import TcpTransport
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
        return TcpTransport(node=0, run_id=plan.run_id, secret=plan.secret, deliver=deliver)

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
