"""The built-in trainer's and models' settings (``[training]``, ``[model]``), registered
like any plugin's: local SGD steps (``sgd.py``) and the models of ``models.py``."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from dlactor.config import (
    MAX_BATCH,
    MAX_PARAMETERS,
    MAX_STEPS,
    MAX_WIDTH,
    ModelSettings,
    TrainingSettings,
)
from dlactor.plugins import register

if TYPE_CHECKING:
    from dlactor.context import NodeEnv
    from dlactor.data.base import Dataset
    from dlactor.training.base import Trainer

__all__ = [
    "CharLSTMSettings",
    "GNLeNetSettings",
    "LeNet5Settings",
    "LogRegSettings",
    "MFSettings",
    "MLPSettings",
    "SGDSettings",
]


@register("training")
class SGDSettings(TrainingSettings):
    kind: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, ge=0.0, description="learning rate (0: pure gossip averaging)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    local_steps: int = Field(
        10, ge=1, le=MAX_STEPS, description="minibatch steps per round (at most 1,000,000)"
    )
    batch_size: int = Field(
        16,
        ge=1,
        le=MAX_BATCH,
        description="samples per step (at most 65,536; capped at the node's)",
    )

    def build(self, env: NodeEnv) -> Trainer:
        from dlactor.training.sgd import SGDTrainer

        ds = env.dataset
        return SGDTrainer(
            model=env.model,
            x=ds.x_train,
            y=ds.y_train,
            indices=torch.from_numpy(env.train_indices).to(torch.int64),
            x_test=ds.x_test,
            y_test=ds.y_test,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            seed=env.seed * 100_003 + env.node,
            task=ds.task,
        )


def _features(dataset: Dataset) -> int:
    return int(np.prod(dataset.input_shape))


def _check_parameters(count: int, what: str) -> None:
    """Refuse, before anything is allocated, a model beyond MAX_PARAMETERS."""
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{what} make {count:,} parameters, more than the {MAX_PARAMETERS:,} a model may "
            "have (8 GiB of float32 per node)"
        )


def _mlp_parameters(widths: list[int]) -> int:
    return sum(a * b + b for a, b in pairwise(widths))


@register("model")
class MLPSettings(ModelSettings):
    kind: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [64],
        max_length=1024,
        description="hidden layer widths: at most 1,024 layers of at most 2**20 units, and "
        "at most 2**31 parameters in all",
    )

    @field_validator("hidden")
    @classmethod
    def _fits(cls, hidden: list[int]) -> list[int]:
        _check_parameters(_mlp_parameters(hidden), "the hidden layers alone")
        return hidden

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import mlp

        widths = [_features(dataset), *self.hidden, dataset.num_classes]
        _check_parameters(_mlp_parameters(widths), f"hidden = {self.hidden} on {dataset.name}")
        torch.manual_seed(seed)
        return mlp(_features(dataset), dataset.num_classes, self.hidden)


@register("model")
class LogRegSettings(ModelSettings):
    kind: Literal["logreg"] = "logreg"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import logistic_regression

        torch.manual_seed(seed)
        return logistic_regression(_features(dataset), dataset.num_classes)


def _channels(dataset: Dataset) -> int:
    if len(dataset.input_shape) != 3:
        raise ValueError(
            f"a CNN needs (channels, height, width) images; {dataset.name} has "
            f"input shape {dataset.input_shape}"
        )
    return dataset.input_shape[0]


@register("model")
class LeNet5Settings(ModelSettings):
    kind: Literal["lenet5"] = "lenet5"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import lenet5

        torch.manual_seed(seed)
        return lenet5(dataset.num_classes, _channels(dataset))


@register("model")
class GNLeNetSettings(ModelSettings):
    """The reference paper's CIFAR-10 model (GroupNorm LeNet)."""

    kind: Literal["gn_lenet"] = "gn_lenet"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import gn_lenet

        torch.manual_seed(seed)
        return gn_lenet(dataset.num_classes, _channels(dataset))


@register("model")
class CharLSTMSettings(ModelSettings):
    """LEAF's Shakespeare baseline: embedding, stacked LSTM, next-character logits."""

    kind: Literal["char_lstm"] = "char_lstm"
    embed: int = Field(8, ge=1, le=1 << 16, description="at most 65,536")
    hidden: int = Field(256, ge=1, le=1 << 16, description="at most 65,536")
    layers: int = Field(
        2, ge=1, le=1024, description="at most 1,024; at most 2**31 parameters in all"
    )

    def parameters(self, vocab: int) -> int:
        h = self.hidden
        stack = 4 * h * (self.embed + h) + 8 * h + (self.layers - 1) * (8 * h * h + 8 * h)
        return vocab * self.embed + stack + h * vocab + vocab

    @model_validator(mode="after")
    def _fits(self) -> CharLSTMSettings:
        _check_parameters(self.parameters(2), "embed, hidden and layers")
        return self

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import char_lstm

        if dataset.vocab <= 0:
            raise ValueError(f"char_lstm needs character inputs; {dataset.name} has none")
        _check_parameters(
            self.parameters(dataset.vocab), f"embed, hidden, layers on {dataset.name}"
        )
        torch.manual_seed(seed)
        return char_lstm(dataset.vocab, self.embed, self.hidden, self.layers)


@register("model")
class MFSettings(ModelSettings):
    """Rating = <user, item> + biases, for MovieLens."""

    kind: Literal["mf"] = "mf"
    dim: int = Field(20, ge=1, le=1 << 16, description="factors per user and item (<= 65,536)")

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.data.movielens import movielens_sizes
        from dlactor.training.models import matrix_factorization

        n_users, n_items = movielens_sizes(dataset)
        _check_parameters((n_users + n_items) * (self.dim + 1) + 1, f"dim on {dataset.name}")
        torch.manual_seed(seed)
        return matrix_factorization(n_users, n_items, self.dim, item_offset=n_users)
