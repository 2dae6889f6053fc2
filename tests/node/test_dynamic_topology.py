"""A topology that changes every round: connections follow it without piling up, and no
message is lost to a connection being closed (gossip still reaches the exact average).

Bound on a node's connections: in a round of a ``d``-regular graph a node sends on ``d``
connections it opened and receives on ``d`` its neighbours opened, so ``2 d`` once the
round's closes have gone through (each is two sockets in this process, one per end). While
they go through, a node may still hold the connections to and from last round's former
neighbours: at most ``d`` more each way, ``4 d`` in all, when the nodes are in the same
round. Nodes running freely are up to ``lag`` rounds apart, and each round they span can add
``d`` each way: ``2 d (lag + 1)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import pytest
import torch
import uvloop

from dlactor.context import EvalStats, RoundContext, TrainStats
from dlactor.launch.plan import Plan, build_node
from dlactor.node.node import Node
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network
from dlactor.topology.dynamic import RandomRegularDynamic
from dlactor.training.base import Trainer
from dlactor.transport.base import Deliver
from dlactor.transport.tcp import TcpTransport
from tests.conftest import small_plan

NODES, DEGREE, ROUNDS = 12, 3, 100
SETTLED = 2 * DEGREE  # connections per node once a round's closes have gone through
TRANSIENT = 4 * DEGREE  # at most, at any moment, when the nodes are in the same round


def plan_and_models() -> tuple[Plan, list[torch.nn.Module]]:
    plan = small_plan(
        f"nodes={NODES}", f"topology.degree={DEGREE}", "training.lr=0", f"rounds={ROUNDS}"
    )
    models = [plan.config.model.build(plan.dataset, seed=100 + i) for i in range(NODES)]
    return plan, models


def dynamic(plan: Plan) -> RandomRegularDynamic:
    return RandomRegularDynamic(nodes=NODES, degree=DEGREE, seed=plan.config.seed)


def tcp_nodes(plan: Plan, models: list[torch.nn.Module]) -> list[Node]:
    def tcp(node: int, deliver: Deliver) -> TcpTransport:
        creds = plan.keys.credentials(node, plan.run_id, keep_others=True)
        return TcpTransport(credentials=creds, deliver=deliver)

    nodes = [build_node(plan, i, partial(tcp, i), model=models[i]) for i in range(NODES)]
    for node in nodes:
        node.topology = dynamic(plan)  # each node its own instance, as in a run
    return nodes


async def start_tcp(nodes: list[Node]) -> None:
    book = {node.node: await node.start() for node in nodes}
    for node in nodes:
        node.connect(book)


def socket_fds() -> int:
    """Sockets open in this process (each end of a loopback connection is one)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while listing
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def settled(nodes: list[Node], peers: list[frozenset[int]]) -> bool:
    """Every node holds exactly its connections of this round: ``d`` out, ``d`` in."""
    return all(
        node.transport.open_connections == SETTLED
        and node.transport.connected_peers == peers[node.node]  # type: ignore[attr-defined]
        for node in nodes
    )


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def averages(models: list[torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the models' parameters, and each model's parameters (float64)."""
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    return x.mean(dim=0), x


class Jittery:
    """Trains as ``inner`` after a random pause, so that nodes drift apart and close their
    connections while former neighbours are still behind, with messages unread."""

    def __init__(self, inner: Trainer, seed: int) -> None:
        self.inner = inner
        self.rng = random.Random(seed)

    async def train(self, ctx: RoundContext) -> TrainStats:
        await asyncio.sleep(self.rng.choice([0, 0, 0.001, 0.004]))
        return await self.inner.train(ctx)

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        return EvalStats(loss=0.0, accuracy=0.0, samples=0)


def run_on(loop: str, scenario: Coroutine[Any, Any, None]) -> None:
    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario)


# ---------------------------------------------------------------- TCP, round by round


async def lockstep_on_tcp() -> None:
    plan, models = plan_and_models()
    nodes = tcp_nodes(plan, models)
    await start_tcp(nodes)
    listening = socket_fds()
    peak = 0
    for r in range(ROUNDS):
        await asyncio.gather(*(node.run_round(r) for node in nodes))
        peak = max(peak, *(node.transport.open_connections for node in nodes))
        peers = [await node.topology.neighbors(node.node, r) for node in nodes]

        await wait_until(partial(settled, nodes, peers))
        assert socket_fds() == listening + NODES * SETTLED, f"round {r}"

    assert peak <= TRANSIENT
    for node in nodes:
        await node.stop()
    await wait_until(lambda: all(node.transport.open_connections == 0 for node in nodes))
    assert socket_fds() == listening - NODES  # the listeners are closed too


# uvloop only, as nodes run (the in-memory exact-average test runs on asyncio's loop)
@pytest.mark.parametrize("loop", ["uvloop"])
def test_over_100_rounds_of_a_changing_topology_each_node_holds_2d_tcp_connections(
    loop: str,
) -> None:
    run_on(loop, lockstep_on_tcp())


# ---------------------------------------------------------------- free-running, lr = 0


class Peak:
    """The most connections any node held, and how many rounds apart the nodes were."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.connections = 0
        self.lag = 0

    def sample(self) -> None:
        held = max(node.transport.open_connections for node in self.nodes)
        rounds = [node.mailbox.current_round for node in self.nodes]
        self.connections = max(self.connections, held)
        self.lag = max(self.lag, max(rounds) - min(rounds))

    @property
    def bound(self) -> int:
        return 2 * DEGREE * (self.lag + 1)


async def free_run(nodes: list[Node], sample: Callable[[], None]) -> None:
    """Every node runs all its rounds at its own pace while ``sample`` watches."""

    async def watch() -> None:
        while True:
            sample()
            await asyncio.sleep(0.001)

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch())
        await asyncio.gather(*(node.run() for node in nodes))
        watcher.cancel()


def assert_exact_average(models: list[torch.nn.Module], mean0: torch.Tensor) -> None:
    mean, x = averages(models)
    assert torch.allclose(mean, mean0, atol=1e-6), "the average moved: a message was lost"
    assert (x - mean0).abs().max().item() < 1e-5, "the nodes did not reach the average"


async def consensus_on_tcp() -> None:
    plan, models = plan_and_models()
    mean0, _ = averages(models)
    nodes = tcp_nodes(plan, models)
    for node in nodes:
        node.trainer = Jittery(node.trainer, seed=node.node)
    await start_tcp(nodes)
    listening = socket_fds()
    peak = Peak(nodes)
    sockets = 0

    def sample() -> None:
        nonlocal sockets
        peak.sample()
        sockets = max(sockets, socket_fds() - listening)

    await free_run(nodes, sample)

    assert_exact_average(models, mean0)
    assert all(node.transport.stats.dropped_connections == 0 for node in nodes)
    assert peak.connections <= peak.bound
    assert sockets <= NODES * peak.bound
    for node in nodes:
        await node.stop()
    await wait_until(lambda: all(node.transport.open_connections == 0 for node in nodes))
    assert socket_fds() == listening - NODES


@pytest.mark.parametrize("loop", ["uvloop"])
def test_with_lr_0_a_changing_topology_reaches_the_exact_average_on_tcp(loop: str) -> None:
    run_on(loop, consensus_on_tcp())


async def test_with_lr_0_a_changing_topology_reaches_the_exact_average_in_memory() -> None:
    plan, models = plan_and_models()
    mean0, _ = averages(models)
    _, nodes = build_network(plan, models=models)  # the real codec on every message
    for node in nodes:
        node.topology = dynamic(plan)
        node.trainer = Jittery(node.trainer, seed=node.node)
        await node.start()
    peak = Peak(nodes)

    await free_run(nodes, peak.sample)

    assert_exact_average(models, mean0)
    assert peak.connections <= peak.bound
    for node in nodes:
        await node.stop()
    assert all(node.transport.open_connections == 0 for node in nodes)
