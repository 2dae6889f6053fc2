"""The built-in datasets' and partitions' settings (``[data]``, ``[partition]``), registered
like any plugin's: the loaders of this package and the splits of ``partition.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from dlactor.config import MAX_SAMPLES, DataSettings, PartitionSettings
from dlactor.plugins import register

if TYPE_CHECKING:
    from dlactor.data.base import Dataset

__all__ = [
    "Cifar10Settings",
    "DigitsSettings",
    "DirichletSettings",
    "FashionMnistSettings",
    "IIDSettings",
    "MnistSettings",
    "MovieLensSettings",
    "NaturalSettings",
    "ShakespeareSettings",
    "ShardsSettings",
]


def _labels(dataset: Dataset) -> np.ndarray:
    if dataset.task != "classification":
        raise ValueError(f"{dataset.name} has no class labels: use iid or natural")
    return dataset.y_train.numpy()


@register("partition")
class IIDSettings(PartitionSettings):
    kind: Literal["iid"] = "iid"

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import iid

        return iid(np.zeros(len(dataset.y_train), dtype=np.int64), nodes, seed)


@register("partition")
class ShardsSettings(PartitionSettings):
    kind: Literal["shards"] = "shards"
    shards_per_node: int = Field(2, ge=1, le=1 << 16, description="at most 65,536")

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import shards

        return shards(_labels(dataset), nodes, self.shards_per_node, seed)


@register("partition")
class DirichletSettings(PartitionSettings):
    kind: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(0.5, gt=0.0)
    min_size: int = Field(1, ge=1, lt=MAX_SAMPLES, description="samples per node, at least")

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import dirichlet

        return dirichlet(_labels(dataset), nodes, self.alpha, seed, self.min_size)


@register("partition")
class NaturalSettings(PartitionSettings):
    """Each writer, speaking role or user goes whole to one node."""

    kind: Literal["natural"] = "natural"

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import natural

        if dataset.groups is None:
            raise ValueError(f"{dataset.name} has no natural groups (shakespeare and movielens do)")
        return natural(dataset.groups, nodes, seed)


@register("data")
class DigitsSettings(DataSettings):
    kind: Literal["digits"] = "digits"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    def load(self, seed: int) -> Dataset:
        from dlactor.data.digits import load_digits

        return load_digits(test_fraction=self.test_fraction, seed=seed)


def _stored(name: str) -> Path:
    """The dataset's directory in the data store, or MissingDataset naming the fetch command."""
    from dlactor.data.store import require

    return require(name)


@register("data")
class MnistSettings(DataSettings):
    kind: Literal["mnist"] = "mnist"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.idx import load_mnist

        return load_mnist(_stored("mnist"))


@register("data")
class FashionMnistSettings(DataSettings):
    kind: Literal["fashion_mnist"] = "fashion_mnist"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.idx import load_mnist

        return load_mnist(_stored("fashion_mnist"), fashion=True)


@register("data")
class Cifar10Settings(DataSettings):
    kind: Literal["cifar10"] = "cifar10"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.cifar import load_cifar10

        return load_cifar10(_stored("cifar10"))


@register("data")
class ShakespeareSettings(DataSettings):
    """LEAF-style next-character prediction, one group per (play, speaking role)."""

    kind: Literal["shakespeare"] = "shakespeare"
    seq_len: int = Field(80, ge=1, le=4096, description="characters of context (<= 4,096)")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_samples: int = Field(64, ge=1, lt=MAX_SAMPLES, description="drop roles with fewer samples")
    max_roles: int | None = Field(
        None, ge=1, lt=MAX_SAMPLES, description="keep only the largest N roles"
    )

    def load(self, seed: int) -> Dataset:
        from dlactor.data.shakespeare import load_shakespeare

        return load_shakespeare(
            _stored("shakespeare"),
            seq_len=self.seq_len,
            test_fraction=self.test_fraction,
            seed=seed,
            min_samples=self.min_samples,
            max_roles=self.max_roles,
        )


@register("data")
class MovieLensSettings(DataSettings):
    """Ratings regression from (user, item) pairs, one group per user."""

    kind: Literal["movielens"] = "movielens"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    def load(self, seed: int) -> Dataset:
        from dlactor.data.movielens import load_movielens

        return load_movielens(_stored("movielens"), test_fraction=self.test_fraction, seed=seed)
