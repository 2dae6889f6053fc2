"""What the FedAvg and parameter-server tests share: the small digits run without the
[topology] a server algorithm refuses, and a run that keeps every process's records."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dlactor.config import RunConfig, apply_overrides, validate_config
from dlactor.launch.plan import Plan
from dlactor.node.node import Node, Record
from dlactor.testing import build_network, run_nodes
from tests.conftest import SMALL

BASE: dict[str, Any] = {k: v for k, v in SMALL.items() if k != "topology"}


def server_config(kind: str, *overrides: str, base: dict[str, Any] = BASE) -> RunConfig:
    return validate_config(apply_overrides(base, [f"algorithm.kind={kind}", *overrides]))


async def run(plan: Plan) -> tuple[dict[int, list[Record]], list[Node]]:
    """Every process's records, and the processes (the server last) with their final models."""
    records: dict[int, list[Record]] = defaultdict(list)
    _, nodes = build_network(plan, on_round=lambda rec: records[rec["node"]].append(rec))
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    return records, nodes
