"""Checkpoints: what a strategy keeps across rounds is saved in a file that cannot run code,
and a run resumed from any checkpoint ends with the uninterrupted run's models."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dlactor.checkpoint.files import checkpoint_dir, complete_checkpoints, prune
from dlactor.checkpoint.state import CheckpointError, capture, read_state, restore, write_state
from dlactor.cli import app
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, run_nodes
from tests.conftest import small_plan


class _Part:
    checkpointed = ("weights", "gen", "rng", "opt", "count", "table", "pair", "none")

    def __init__(self, seed: int) -> None:
        self.weights = torch.nn.Parameter(torch.arange(4.0) + seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.opt = torch.optim.SGD([self.weights], lr=0.1, momentum=0.9)
        self.count, self.table, self.pair, self.none = seed, {1: "a", "k": [1, 2]}, (3, 4.5), None

    def step(self) -> list[float]:
        self.weights.grad = torch.ones(4)
        self.opt.step()
        return [torch.rand(1, generator=self.gen).item(), float(self.rng.random())]


def test_state_round_trips_through_a_safetensors_file(tmp_path: Path) -> None:
    a = _Part(1)
    a.step()
    tensors, tree = capture({"part": a})
    write_state(tmp_path / "a.safetensors", tensors, tree)
    b = _Part(2)
    tensors, tree = read_state(tmp_path / "a.safetensors")
    restore(b, tree["part"]["$obj"], tensors, "part")
    assert b.step() == a.step()  # generators, momentum and all: the same next step
    assert torch.equal(a.weights, b.weights)
    assert (b.count, b.table, b.pair, b.none) == (1, {1: "a", "k": [1, 2]}, (3, 4.5), None)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x80\x04K\x01.", "not a readable safetensors file"),  # a pickle
        (None, "not a dlactor checkpoint"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    path = tmp_path / "x.safetensors"
    if content is None:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "other"})
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=why):
        read_state(path)


async def _run(plan: object, run_dir: Path) -> list[torch.Tensor]:
    _, nodes = build_network(plan, run_dir=run_dir)  # type: ignore[arg-type]
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    return [flatten(node.model.parameters()) for node in nodes]


async def test_a_run_resumed_from_any_checkpoint_ends_with_the_same_models(
    tmp_path: Path,
) -> None:
    # momentum, top-k with error feedback, and sampled batches: state in every part
    plan = small_plan(
        "rounds=7",
        "checkpoint.every=3",
        "training.momentum=0.9",
        'sharing.kind="topk"',
        "sharing.budget=0.3",
    )
    whole = await _run(plan, tmp_path / "whole")
    savers = list(range(plan.config.nodes))
    assert complete_checkpoints(tmp_path / "whole", savers) == [3, 6, 7]  # and after the last
    for start in (3, 6):
        run_dir = tmp_path / f"from{start}"
        shutil.copytree(checkpoint_dir(tmp_path / "whole", start), checkpoint_dir(run_dir, start))
        resumed = await _run(dataclasses.replace(plan, resume_round=start), run_dir)
        for a, b in zip(whole, resumed, strict=True):
            assert torch.equal(a, b)
    fresh = await _run(plan, tmp_path / "again")  # the comparison can fail: other seeds differ
    other = await _run(
        dataclasses.replace(plan, config=plan.config.model_copy(update={"seed": 9})),
        tmp_path / "seed9",
    )
    assert all(torch.equal(a, b) for a, b in zip(whole, fresh, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(whole, other, strict=True))


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    for r, processes in ((5, [0, 1]), (10, [0, 1]), (15, [0, 1]), (20, [0])):
        for p in processes:
            (checkpoint_dir(tmp_path, r)).mkdir(parents=True, exist_ok=True)
            (checkpoint_dir(tmp_path, r) / f"{p}.safetensors").write_bytes(b"x")
    prune(tmp_path, [0, 1], keep=2)
    assert complete_checkpoints(tmp_path, [0, 1]) == [10, 15]
    assert checkpoint_dir(tmp_path, 20).is_dir()  # newer, incomplete: being written


def test_resume_needs_a_run_directory_with_a_complete_checkpoint(tmp_path: Path) -> None:
    runner = CliRunner()

    def said(*args: str) -> str:
        result = runner.invoke(app, ["launch", *args])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert "not a run directory" in said("--resume", str(tmp_path))
    (tmp_path / "config.toml").write_text('name = "x"\nnodes = 6\nrounds = 3\n')
    (tmp_path / "manifest.json").write_text("{}")
    assert "no complete checkpoint" in said("--resume", str(tmp_path))
    config = str(Path(__file__).parents[2] / "configs" / "quickstart.toml")
    assert "takes the run directory alone" in said(config, "--resume", str(tmp_path))


async def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_file(tmp_path: Path) -> None:
    plan = small_plan("rounds=2", "checkpoint.every=1")
    await _run(plan, tmp_path / "run")
    path = checkpoint_dir(tmp_path / "run", 1) / "0.safetensors"
    tensors, tree = read_state(path)
    tree["trainer"]["$obj"]["_cursor"] = {"$d": [[1]]}  # a malformed entry
    write_state(path, tensors, tree)
    resumed = dataclasses.replace(plan, resume_round=1)
    with pytest.raises(CheckpointError, match=r"0\.safetensors"):
        build_network(resumed, run_dir=tmp_path / "run")
