"""scikit-learn's 8x8 handwritten digits, as a small real dataset that needs no download.

``sklearn.datasets.load_digits`` reads a csv shipped inside scikit-learn: 1797 images of the
digits 0-9, 64 pixels each with values 0..16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits as _sklearn_load_digits
from sklearn.model_selection import train_test_split

__all__ = ["Dataset", "load_digits"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset already split into train and test tensors.

    ``x_*`` are float32 of shape ``(samples, *input_shape)``; ``y_*`` are int64 class ids in
    ``0..num_classes-1``. Equality is identity (comparing tensors element-wise has no bool).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ValueError(f"{split}: expected float32 inputs and int64 labels")
            if tuple(x.shape[1:]) != self.input_shape or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                    f"input_shape {self.input_shape}"
                )


def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype).contiguous()


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The digits dataset: pixels scaled to [0, 1], 64 features, a stratified seeded split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sklearn_load_digits()
    features = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Dataset(
        name="digits",
        x_train=_as_tensor(x_train, torch.float32),
        y_train=_as_tensor(y_train, torch.int64),
        x_test=_as_tensor(x_test, torch.float32),
        y_test=_as_tensor(y_test, torch.int64),
        num_classes=10,
        input_shape=(features.shape[1],),
    )
