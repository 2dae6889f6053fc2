"""scikit-learn's 8x8 handwritten digits, as a small real dataset that needs no download.

``sklearn.datasets.load_digits`` reads a csv shipped inside scikit-learn: 1797 images of the
digits 0-9, 64 pixels each with values 0..16.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as _sklearn_load_digits
from sklearn.model_selection import train_test_split

from dlactor.data.base import Dataset

__all__ = ["Dataset", "load_digits"]


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
