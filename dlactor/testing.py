"""Run a whole network of nodes inside one process, on the in-memory transport.

This is how protocol tests run (and how users test their strategy plugins with
pytest-asyncio): the same Node, strategies and codec as a launched run, without
processes or sockets::

    plan = make_plan(config)
    records = await run_in_memory(plan)
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch

from dlactor.launch.plan import Plan, build_node, build_service
from dlactor.node.context import Service
from dlactor.node.node import Node, Record
from dlactor.transport.base import Address
from dlactor.transport.memory import MemoryNetwork

__all__ = ["build_network", "build_services", "run_in_memory", "run_nodes"]


def build_network(
    plan: Plan,
    *,
    codec: bool = True,
    models: Sequence[torch.nn.Module] | None = None,
    on_round: Callable[[Record], None] | None = None,
) -> tuple[MemoryNetwork, list[Node]]:
    """One node per id on a fresh in-memory network; each gets its own copy of the model
    (``models[i]`` when given)."""
    net = MemoryNetwork(codec=codec)
    nodes = [
        build_node(
            plan,
            i,
            partial(net.transport, i),
            model=copy.deepcopy(plan.model) if models is None else models[i],
            on_round=on_round,
        )
        for i in range(plan.config.nodes)
    ]
    return net, nodes


def build_services(plan: Plan, net: MemoryNetwork) -> list[Service]:
    """The topology's service processes (the peer sampler), on the same network."""
    return [
        build_service(plan, process, partial(net.transport, process))
        for process in range(plan.config.nodes, plan.processes)
    ]


async def run_in_memory(
    plan: Plan,
    *,
    codec: bool = True,
    models: Sequence[torch.nn.Module] | None = None,
    on_round: Callable[[Record], None] | None = None,
) -> dict[int, list[Record]]:
    """Run every round of every node concurrently; returns each node's records."""
    records: dict[int, list[Record]] = {i: [] for i in range(plan.config.nodes)}

    def collect(record: Record) -> None:
        records[record["node"]].append(record)
        if on_round is not None:
            on_round(record)

    net, nodes = build_network(plan, codec=codec, models=models, on_round=collect)
    actors: list[Node | Service] = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await run_nodes(actors)
    return records


async def run_nodes(
    nodes: Sequence[Node | Service], addresses: Mapping[int, Address] | None = None
) -> None:
    """Connect started nodes (``addresses``: the TCP address book; the memory network needs
    none), run all their rounds concurrently, and stop every one of them however it ends."""
    for node in nodes:
        node.connect(addresses or {})
    try:
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(node.run())
    finally:
        for node in nodes:
            await node.stop()
