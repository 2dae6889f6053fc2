"""What make_plan builds before forking, and the config errors it can only find by building."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlactor.config import ConfigError
from dlactor.data.base import Dataset
from dlactor.launch import plan as plan_module
from dlactor.launch.plan import warm_up_node
from dlactor.training.base import TrainStats
from dlactor.training.sgd import SGDTrainer
from tests.conftest import small_config, small_plan


def tiny_images(side: int) -> Dataset:
    """Single-channel images too small for LeNet-5's two 5x5 convolutions at side 8."""
    x = torch.zeros(20, 1, side, side)
    y = torch.arange(20) % 10
    return Dataset("tiny", x, y, x[:10], y[:10], num_classes=10, input_shape=(1, side, side))


def test_a_model_whose_shapes_do_not_fit_the_inputs_is_a_config_error_naming_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = small_config("model.kind=lenet5", "partition.kind=iid")
    monkeypatch.setattr(type(config.data), "load", lambda self, seed: tiny_images(8))

    with pytest.raises(ConfigError, match=r"model: lenet5 does not fit tiny's inputs"):
        plan_module.make_plan(config)


def test_a_model_that_fits_is_built_and_left_in_training_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = small_config("model.kind=lenet5", "partition.kind=iid", "nodes=4")
    monkeypatch.setattr(type(config.data), "load", lambda self, seed: tiny_images(28))

    plan = plan_module.make_plan(config)

    assert plan.model.training
    assert plan.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_warming_up_a_node_leaves_the_plan_and_every_random_generator_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train_steps = SGDTrainer.train_steps

    def drawing(trainer: SGDTrainer) -> TrainStats:  # as a model with dropout would
        torch.rand(1), np.random.rand(), random.random()
        return train_steps(trainer)

    monkeypatch.setattr(SGDTrainer, "train_steps", drawing)
    plan = small_plan("model.kind=mlp")
    before = [p.detach().clone() for p in plan.model.parameters()]
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)

    warm_up_node(plan)

    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert all(torch.equal(a, b) for a, b in zip(before, plan.model.parameters(), strict=True))


# A fresh interpreter: what a node would still import after the launcher has warmed up.
IMPORTED_BY_A_NODE = """
import sys
from tests.conftest import small_plan
from dlactor.launch import local  # the launcher's side, as `dlactor launch` has it
from dlactor.launch.plan import build_node, warm_up_node
from dlactor.transport.memory import MemoryNetwork

plan = small_plan()
warm_up_node(plan)
before = set(sys.modules)
net = MemoryNetwork()
node = build_node(plan, 1, lambda deliver: net.transport(1, deliver))
node.trainer.train_steps()
print("uvloop" in before)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_after_the_warm_up_a_node_imports_nothing_to_build_and_train() -> None:
    """A module a forked node imports itself is memory of its own (4.4 MiB for uvloop)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY_A_NODE], capture_output=True, text=True, check=True
    )
    uvloop_first, *imported = out.stdout.split()
    assert uvloop_first == "True"
    assert imported == []


# A fresh interpreter: whether making the plan imported torch._dynamo.
DYNAMO_AFTER_THE_PLAN = """
import sys
from tests.conftest import small_plan

small_plan(*sys.argv[1:])
print("torch._dynamo" in sys.modules)
"""


@pytest.mark.parametrize(("kind", "imported"), [("local", "True"), ("ray", "False")])
def test_only_a_plan_the_nodes_fork_from_imports_torch_dynamo(kind: str, imported: str) -> None:
    """The local launcher forks the nodes from the process that made the plan: it imports
    torch._dynamo there, once for all of them. Ray's driver forks nothing, and leaves it to
    the agents (or workers) that do."""
    out = subprocess.run(
        [sys.executable, "-c", DYNAMO_AFTER_THE_PLAN, f"launcher.kind={kind}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [imported]
