"""Models for emulation runs, and their sizes.

``logistic_regression`` and ``mlp`` take a batch shaped ``(batch, *input_shape)``, flatten it,
and return logits of shape ``(batch, num_classes)``. The reference paper's models take their
natural inputs: images ``(batch, channels, height, width)`` for ``lenet5`` and ``gn_lenet``,
character indices ``(batch, seq_len)`` for ``char_lstm``, ``[user, item]`` index pairs
``(batch, 2)`` for ``matrix_factorization`` (which returns ratings, not logits). Initial weights
come from torch's global generator: seed it (``torch.manual_seed``) before building a model to
get the same weights on every node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "char_lstm",
    "count_parameters",
    "gn_lenet",
    "lenet5",
    "logistic_regression",
    "matrix_factorization",
    "mlp",
    "parameter_bytes",
]


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


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _conv_gn_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 5, padding="same"),
        nn.GroupNorm(2, out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
    ]


def gn_lenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The reference paper's CIFAR-10 model: a LeNet with GroupNorm, for 32x32 images.

    Layer for layer decentralizepy's ``LeNet`` (``src/decentralizepy/datasets/CIFAR10.py`` in
    sacs-epfl/decentralizepy): three blocks of conv 5x5 ("same" padding; 32, 32, 64 channels),
    GroupNorm with 2 groups, ReLU and 2x2 max pooling, then one linear layer from 64*4*4
    features to the logits. 89,834 parameters for 3 channels and 10 classes.
    """
    _check_sizes(in_channels, num_classes)
    return nn.Sequential(
        *_conv_gn_block(in_channels, 32),
        *_conv_gn_block(32, 32),
        *_conv_gn_block(32, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, num_classes),
    )


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-5 for 28x28 images: conv 5x5 (6, padding 2), pool, conv 5x5 (16), pool, then
    linear layers of 120 and 84 (ReLU, max pooling). 61,706 parameters for MNIST's 10 classes.
    """
    _check_sizes(in_channels, num_classes)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class CharLSTM(nn.Module):
    """Embedding, a stacked LSTM, and a linear layer on the last time step's output."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.head(out[:, -1, :])


def char_lstm(vocab: int = 80, embed: int = 8, hidden: int = 256, layers: int = 2) -> nn.Module:
    """LEAF's Shakespeare baseline: next-character logits ``(batch, vocab)`` from character
    indices ``(batch, seq_len)``.

    As in LEAF's ``models/shakespeare/stacked_lstm.py`` (TalwalkarLab/leaf): an embedding of 8,
    two LSTM layers of 256, a dense layer on the last time step. 819,920 parameters with the
    defaults; LEAF's TensorFlow cells have one bias per gate where torch has two, so LEAF
    counts 2 * 4 * 256 = 2,048 fewer (817,872). decentralizepy's ``LSTM`` instead feeds all
    80 time steps to the dense layer (1.6M more parameters); this follows LEAF.
    """
    _check_positive(embed=embed, hidden=hidden, layers=layers)
    if vocab < 2:
        raise ValueError(f"vocab must be >= 2, got {vocab}")
    return CharLSTM(vocab, embed, hidden, layers)


class MatrixFactorization(nn.Module):
    """Predicted rating = <user factors, item factors> + user bias + item bias + global bias."""

    def __init__(self, n_users: int, n_items: int, dim: int, item_offset: int, mean: float):
        super().__init__()
        self.item_offset = item_offset
        self.user_factors = nn.Embedding(n_users, dim)
        self.item_factors = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.tensor(float(mean)))
        nn.init.uniform_(self.user_factors.weight, -0.05, 0.05)
        nn.init.uniform_(self.item_factors.weight, -0.05, 0.05)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        users, items = x[:, 0], x[:, 1] - self.item_offset
        dot = (self.user_factors(users) * self.item_factors(items)).sum(dim=1)
        bias = self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        return dot + bias + self.global_bias


def matrix_factorization(
    n_users: int,
    n_items: int,
    dim: int = 20,
    *,
    item_offset: int = 0,
    mean_rating: float = 0.0,
) -> nn.Module:
    """Matrix factorization for rating prediction: ``(batch, 2)`` int64 ``[user, item]`` pairs
    in, ``(batch,)`` float32 predicted ratings out.

    Users are indexed 0..n_users-1; items ``x[:, 1] - item_offset`` index the item table (use
    ``item_offset=n_users`` when items are numbered after the users). Follows decentralizepy's
    ``MatrixFactorization`` (``src/decentralizepy/datasets/MovieLens.py``: 20 factors drawn
    from U(-0.05, 0.05), (n_users + n_items) * 20 parameters, 206,680 for its 610 users and
    9,724 items) and adds a bias per user, per item and a global bias (starting at
    ``mean_rating``), the usual biased MF: (n_users + n_items) * (dim + 1) + 1 parameters.
    """
    _check_positive(n_users=n_users, n_items=n_items, dim=dim)
    if item_offset < 0:
        raise ValueError(f"item_offset must be >= 0, got {item_offset}")
    return MatrixFactorization(n_users, n_items, dim, item_offset, mean_rating)


def count_parameters(model: nn.Module) -> int:
    """The number of scalars in the model's parameters (what full sharing sends)."""
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_bytes(model: nn.Module) -> int:
    """The size in bytes of the model's parameters (buffers not included)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
