"""Small classifiers for emulation runs, and their sizes.

Every model takes a batch shaped ``(batch, *input_shape)``, flattens it, and returns logits of
shape ``(batch, num_classes)``. Initial weights come from torch's global generator: seed it
(``torch.manual_seed``) before building a model to get the same weights on every node.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["count_parameters", "logistic_regression", "mlp", "parameter_bytes"]


def _check_sizes(in_features: int, num_classes: int, hidden: Sequence[int] = ()) -> None:
    if in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if any(width < 1 for width in hidden):
        raise ValueError(f"hidden layer widths must be >= 1, got {tuple(hidden)}")


def logistic_regression(in_features: int, num_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten, then one linear layer to the logits."""
    _check_sizes(in_features, num_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """Flatten, then a Linear-ReLU stack of widths ``hidden``, then a linear layer to logits."""
    _check_sizes(in_features, num_classes, hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for next_width in hidden:
        layers += [nn.Linear(width, next_width), nn.ReLU()]
        width = next_width
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """The number of scalars in the model's parameters (what full sharing sends)."""
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_bytes(model: nn.Module) -> int:
    """The size in bytes of the model's parameters (buffers not included)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
