"""What make_plan builds before forking, and the config errors it can only find by building."""

from __future__ import annotations

import pytest
import torch

from dlactor.config import ConfigError
from dlactor.data.base import Dataset
from dlactor.launch import plan as plan_module
from tests.conftest import small_config


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
