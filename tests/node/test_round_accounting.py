"""A round's bytes_recv/msgs_recv are exactly what the neighbours sent this node for that
round, also when the nodes are not in lockstep and over TCP (handshakes included: a
connection's hello and proof from the node that opened it, its challenge from the other)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterable

import pytest

from dlactor.context import EvalStats, RoundContext, TrainStats
from dlactor.launch.plan import Plan, build_node
from dlactor.node.node import Node, Record
from dlactor.testing import build_network, run_nodes
from dlactor.training.base import Trainer
from dlactor.transport.base import Deliver
from dlactor.transport.tcp import TcpTransport
from tests.conftest import small_plan

SLOW_NODE, DELAY_S = 0, 0.15


class Late:
    """Trains like ``inner`` after a pause: the node falls behind its neighbours' neighbours."""

    def __init__(self, inner: Trainer) -> None:
        self.inner = inner

    async def train(self, ctx: RoundContext) -> TrainStats:
        await asyncio.sleep(DELAY_S)
        return await self.inner.train(ctx)

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        return await self.inner.evaluate(ctx)


def collector() -> tuple[dict[int, list[Record]], Callable[[Record], None]]:
    records: dict[int, list[Record]] = {}

    def collect(record: Record) -> None:
        records.setdefault(record["node"], []).append(record)

    return records, collect


async def run_all(nodes: list[Node], addresses: dict | None = None) -> None:
    nodes[SLOW_NODE].trainer = Late(nodes[SLOW_NODE].trainer)
    await run_nodes(nodes, addresses)


def assert_received_is_what_neighbours_sent(
    plan: Plan, records: dict[int, list[Record]], rounds: Iterable[int] | None = None
) -> None:
    """Full sharing sends the same frame to every neighbour, so what j sent i in round r is
    j's bytes_sent / degree (in the round they connected: j's hello and proof to i, and j's
    challenge to i's hello, included)."""
    for i in range(plan.config.nodes):
        for r in range(plan.config.rounds) if rounds is None else rounds:
            sent_to_i = [records[j][r] for j in plan.graph[i]]
            assert all(rec["bytes_sent"] % rec["degree"] == 0 for rec in sent_to_i)
            expected_bytes = sum(rec["bytes_sent"] // rec["degree"] for rec in sent_to_i)
            expected_msgs = sum(rec["msgs_sent"] // rec["degree"] for rec in sent_to_i)
            got = records[i][r]
            assert (got["bytes_recv"], got["msgs_recv"]) == (expected_bytes, expected_msgs), (i, r)


def assert_out_of_lockstep(plan: Plan, records: dict[int, list[Record]]) -> None:
    """Some node finished a round well before the slow node did: neighbours of the slow node
    received that node's next-round share while still in the current round."""
    slow_end = [rec["t_wall"] for rec in records[SLOW_NODE]]
    ahead = [
        (i, r)
        for i in range(plan.config.nodes)
        for r, rec in enumerate(records[i][:-1])
        if records[i][r + 1]["t_wall"] < slow_end[r + 1] - DELAY_S / 2 and i != SLOW_NODE
    ]
    assert ahead, "the run stayed in lockstep: this test would not test anything"


async def test_bytes_recv_is_per_message_round_on_the_in_memory_network() -> None:
    plan = small_plan("nodes=8", "topology.degree=3", "rounds=4")
    records, collect = collector()
    _, nodes = build_network(plan, on_round=collect)
    for node in nodes:
        await node.start()

    await run_all(nodes)

    assert_out_of_lockstep(plan, records)
    assert_received_is_what_neighbours_sent(plan, records)


@pytest.fixture(scope="module")
def tcp_run() -> tuple[Plan, dict[int, list[Record]]]:
    """One run over TCP (every node connects to its neighbours in round 0), for the tests
    below to look at."""
    plan = small_plan("nodes=6", "topology.degree=3", "rounds=4")
    records, collect = collector()

    def tcp(node: int) -> Callable[[Deliver], TcpTransport]:
        creds = plan.keys.credentials(node, plan.run_id, keep_others=True)
        return lambda deliver: TcpTransport(credentials=creds, deliver=deliver)

    async def run() -> None:
        nodes = [
            build_node(plan, i, tcp(i), model=copy.deepcopy(plan.model), on_round=collect)
            for i in range(plan.config.nodes)
        ]
        addresses = {node.node: await node.start() for node in nodes}
        await run_all(nodes, addresses)

    asyncio.run(run())
    return plan, records


def test_bytes_recv_is_per_message_round_over_tcp(
    tcp_run: tuple[Plan, dict[int, list[Record]]],
) -> None:
    plan, records = tcp_run
    assert_out_of_lockstep(plan, records)
    assert_received_is_what_neighbours_sent(plan, records, range(1, plan.config.rounds))


def test_over_tcp_the_handshakes_count_in_the_round_they_happen_on_both_sides(
    tcp_run: tuple[Plan, dict[int, list[Record]]],
) -> None:
    plan, records = tcp_run
    assert_received_is_what_neighbours_sent(plan, records, [0])
    # from each of its 3 neighbours: its share, and the hello, the proof and the challenge
    # of the two connections between them
    assert all(records[i][0]["msgs_recv"] == 3 * 4 for i in records)
