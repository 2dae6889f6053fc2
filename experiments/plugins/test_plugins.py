"""Tests of the two example plugins, written as a plugin author would (docs/plugins.md).

Protocol tests run every node in this one process on the in-memory transport (the same
nodes, strategies and wire codec as a launched run, no sockets); the last test launches real
processes. Run them with ``pytest experiments/plugins``; they are part of dlactor's suite.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlactor import load_config, make_plan, run_in_memory
from dlactor.sharing.ops import flatten
from experiments.plugins.rotating_ring import RotatingRing

HERE = Path(__file__).parent
CONFIG = HERE / "rotating.toml"


@pytest.mark.asyncio
async def test_every_round_is_one_ring_that_both_ends_agree_on() -> None:
    nodes = 9
    ring = RotatingRing(nodes=nodes, seed=4)
    for r in range(5):
        peers = {i: await ring.neighbors(i, r) for i in range(nodes)}
        assert all(len(p) == 2 and i not in p for i, p in peers.items())
        assert all(i in peers[j] for i, p in peers.items() for j in p)  # symmetric
        weights = await ring.weights(0, r)
        assert set(weights) == {0, *peers[0]}
        assert sum(weights.values()) == pytest.approx(1.0)
    assert len({await ring.neighbors(0, r) for r in range(5)}) > 1  # a new ring each round


@pytest.mark.asyncio
async def test_damped_sharing_keeps_the_networks_average_model() -> None:
    # lr 0: models move only by sharing. Start them apart, so that there is something to mix.
    plan = make_plan(load_config(CONFIG, ["nodes=8", "rounds=3", "training.lr=0"]))
    models = []
    for i in range(8):
        model = copy.deepcopy(plan.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        models.append(model)
    before = torch.stack([flatten(m.parameters()) for m in models])
    await run_in_memory(plan, models=models)
    after = torch.stack([flatten(m.parameters()) for m in models])
    assert torch.allclose(before.mean(0), after.mean(0), atol=1e-5)  # the average is kept
    assert after.std(0).mean() < before.std(0).mean()  # and the models came closer


@pytest.mark.asyncio
async def test_the_example_run_learns() -> None:
    plan = make_plan(load_config(CONFIG, ["rounds=20"]))
    records = await run_in_memory(plan)  # {node: [one record per round]}
    assert all(len(r) == 20 for r in records.values())
    mean = sum(r[-1]["test_acc"] for r in records.values()) / len(records)
    assert mean > 0.6


def test_the_example_runs_in_real_processes(tmp_path: Path) -> None:
    launched = subprocess.run(
        [sys.executable, "-m", "dlactor", "launch", str(CONFIG), "--set", "rounds=3",
         "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["rounds"] == 3
