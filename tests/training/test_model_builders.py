"""Model builders: forward shapes, layer structure, parameter counts and bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from dlactor.training.models import count_parameters, logistic_regression, mlp, parameter_bytes


@pytest.mark.parametrize("input_shape", [(64,), (8, 8), (1, 8, 8)])
def test_models_flatten_any_input_shape_to_logits(input_shape: tuple[int, ...]) -> None:
    batch = torch.rand(5, *input_shape)

    for model in (logistic_regression(64, 10), mlp(64, 10), mlp(64, 10, hidden=(32, 16))):
        assert model(batch).shape == (5, 10)


def test_logistic_regression_has_weights_and_biases_for_each_class() -> None:
    model = logistic_regression(64, 10)

    assert count_parameters(model) == 64 * 10 + 10
    assert parameter_bytes(model) == (64 * 10 + 10) * 4


def test_mlp_parameter_count_is_the_sum_of_its_linear_layers() -> None:
    model = mlp(64, 10, hidden=(32, 16))

    assert count_parameters(model) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)


def test_mlp_default_has_one_hidden_layer_of_64() -> None:
    assert count_parameters(mlp(64, 10)) == (64 * 64 + 64) + (64 * 10 + 10)


def test_mlp_is_a_linear_relu_stack() -> None:
    model = mlp(20, 3, hidden=(8, 4))

    kinds = [type(layer) for layer in model.modules() if not isinstance(layer, nn.Sequential)]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_mlp_without_hidden_layers_is_logistic_regression() -> None:
    assert count_parameters(mlp(64, 10, hidden=())) == count_parameters(logistic_regression(64, 10))


def test_parameter_bytes_follows_the_dtype() -> None:
    model = mlp(64, 10).to(torch.float64)

    assert parameter_bytes(model) == count_parameters(model) * 8


def test_same_torch_seed_gives_the_same_initial_weights() -> None:
    torch.manual_seed(0)
    first = mlp(64, 10)
    torch.manual_seed(0)
    again = mlp(64, 10)

    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: logistic_regression(0, 10), "in_features"),
        (lambda: mlp(64, 1), "num_classes"),
        (lambda: mlp(64, 10, hidden=(32, 0)), "hidden"),
    ],
)
def test_nonsensical_sizes_are_refused(build: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()
