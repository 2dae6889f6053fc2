"""An algorithm from a plugin file runs like a built-in one, on the in-memory transport."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from dlactor import Plan, make_plan, run_in_memory, validate_config
from dlactor.config import apply_overrides
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, run_nodes
from tests.conftest import SMALL

PLUGINS = Path(__file__).parents[1] / "plugins"


def plan_with(*overrides: str) -> Plan:
    data = apply_overrides(
        {**SMALL, "plugins": ["periodic_gossip.py"]},
        ["algorithm.kind=periodic_gossip", "rounds=4", *overrides],
    )
    return make_plan(validate_config(data, base_dir=PLUGINS))


async def test_a_plugin_algorithm_exchanges_only_in_its_rounds() -> None:
    records = await run_in_memory(plan_with("algorithm.period=2"))
    for rows in records.values():
        assert [r["round"] for r in rows] == [0, 1, 2, 3]
        assert [r["degree"] for r in rows] == [0, 3, 0, 3]  # 3-regular, every 2nd round
        assert rows[0]["bytes_sent"] == 0 and rows[1]["bytes_sent"] > 0
        assert "test_acc" in rows[1] and "test_acc" in rows[3]


async def test_with_lr_0_its_one_exchange_keeps_the_average_and_shrinks_the_spread() -> None:
    plan = plan_with("algorithm.period=4", "training.lr=0.0")
    models = [copy.deepcopy(plan.model) for _ in range(plan.config.nodes)]
    for i, model in enumerate(models):  # different starting models
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(i + 1)
    before = torch.stack([flatten(m.parameters()) for m in models])
    _, nodes = build_network(plan, models=models)
    for node in nodes:
        await node.start()
    await run_nodes(nodes)  # 4 rounds: one exchange, in the last
    after = torch.stack([flatten(node.model.parameters()) for node in nodes])
    # Metropolis-Hastings weights are doubly stochastic: the average stays, the spread shrinks
    torch.testing.assert_close(after.mean(0), before.mean(0), rtol=1e-5, atol=1e-6)
    spread = lambda x: (x - x.mean(0)).norm()  # noqa: E731
    assert spread(after) < 0.9 * spread(before)
