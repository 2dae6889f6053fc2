"""The digits dataset: shapes, dtypes, ranges, a stratified seeded split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sklearn.datasets
import torch

from dlactor.data.base import Dataset
from dlactor.data.digits import load_digits

SAMPLES = 1797  # scikit-learn's digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def test_digits_has_flat_float_pixels_and_int64_labels(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (64,)
    for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape == (len(y), 64)
        assert x.is_contiguous()
        assert y.is_contiguous()


def test_digits_pixels_are_scaled_to_the_unit_interval(digits: Dataset) -> None:
    assert digits.x_train.min().item() == 0.0
    assert digits.x_train.max().item() == 1.0
    assert digits.x_test.min().item() >= 0.0
    assert digits.x_test.max().item() <= 1.0
    # Raw pixels are 0..16, so every scaled value is a multiple of 1/16.
    assert torch.equal(digits.x_train * 16, torch.round(digits.x_train * 16))


def test_digits_split_uses_every_sample_once_in_the_requested_fraction(digits: Dataset) -> None:
    raw = sklearn.datasets.load_digits()
    expected = sorted(zip(map(tuple, raw.data / 16), raw.target.tolist(), strict=True))

    x = torch.cat([digits.x_train, digits.x_test]).double().numpy()
    y = torch.cat([digits.y_train, digits.y_test]).tolist()
    assert sorted(zip(map(tuple, x), y, strict=True)) == expected
    assert len(digits.y_test) == pytest.approx(0.2 * SAMPLES, abs=1)


def test_digits_split_is_stratified(digits: Dataset) -> None:
    train = np.bincount(digits.y_train.numpy(), minlength=10) / len(digits.y_train)
    test = np.bincount(digits.y_test.numpy(), minlength=10) / len(digits.y_test)

    assert set(digits.y_train.tolist()) == set(range(10))
    np.testing.assert_allclose(train, test, atol=0.01)


def test_digits_split_is_a_function_of_its_seed() -> None:
    first, again, other = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)

    assert torch.equal(first.x_train, again.x_train)
    assert torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.y_train, other.y_train)


def test_test_fraction_sets_the_test_size() -> None:
    assert len(load_digits(test_fraction=0.5).y_test) in (SAMPLES // 2, SAMPLES // 2 + 1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_test_fraction_outside_the_open_unit_interval_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_dataset_is_frozen(digits: Dataset) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "other"  # type: ignore[misc]


def test_dataset_refuses_inputs_that_do_not_match_input_shape(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        dataclasses.replace(digits, input_shape=(8, 8))
