"""The dataset every loader returns: train and test tensors, plus what a partitioner needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["Dataset", "Task"]

Task = Literal["classification", "regression"]

_X_DTYPES = (torch.float32, torch.int64)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset already split into train and test tensors.

    - ``x_*``: float32 features (images, pixels) or int64 indices (characters of a sequence,
      ``(user, item)`` pairs), shaped ``(samples, *input_shape)``.
    - ``y_*``: int64 class ids in ``0..num_classes-1`` for ``task = "classification"``;
      float32 targets for ``task = "regression"`` (``num_classes`` is then 0).
    - ``groups``: for datasets with a natural owner of each training sample (a writer, a
      speaking role, a user), its group id per training sample; ``group_names[g]`` names it.
      The ``natural`` partitioner needs it.
    - ``vocab``: the size of the index space of int64 inputs (characters, users+items...).

    Equality is identity (comparing tensors element-wise has no bool).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    task: Task = "classification"
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    vocab: int = 0

    def __post_init__(self) -> None:
        y_dtype = torch.int64 if self.task == "classification" else torch.float32
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype not in _X_DTYPES or y.dtype != y_dtype:
                raise ValueError(
                    f"{split}: expected float32 or int64 inputs and {y_dtype} targets, "
                    f"got {x.dtype} and {y.dtype}"
                )
            if tuple(x.shape[1:]) != self.input_shape or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                    f"input_shape {self.input_shape}"
                )
        if self.groups is not None and self.groups.shape != (self.x_train.shape[0],):
            raise ValueError("groups must give one group id per training sample")
