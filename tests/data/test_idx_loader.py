"""IDX files (MNIST, Fashion-MNIST): the format, plain and gzipped, and what a bad file says."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dlactor.data.idx import IDX_FILES, load_mnist, read_idx

TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dtype: str) -> bytes:
    """An IDX file's bytes, written from the format's definition."""
    header = bytes([0, 0, TYPE_CODES[dtype], array.ndim])
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1", *, gz: bool = False) -> Path:
    raw = idx_bytes(array, dtype)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_mnist(root: Path, train: int, test: int, *, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, train, dtype=np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / name, array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", sorted(TYPE_CODES))
def test_read_idx_returns_the_stored_array_for_every_element_type(
    tmp_path: Path, dtype: str, gz: bool
) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.float64)
    if dtype == "u1":
        array = np.abs(array)
    path = write_idx(tmp_path / "a-idx3", array, dtype, gz=gz)
    got = read_idx(path)
    assert got.shape == (2, 3, 4)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, array.astype(dtype))


def test_read_idx_recognises_gzip_by_its_magic_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], dtype=np.uint8), "u1")))
    np.testing.assert_array_equal(read_idx(path), [3, 1, 4])


GOOD = idx_bytes(np.zeros((2, 3), dtype=np.uint8), "u1")
MALFORMED = {
    "empty": b"",
    "bad magic": b"\x01\x02" + GOOD[2:],
    "unknown type": b"\x00\x00\x07\x02" + GOOD[4:],
    "truncated header": GOOD[:6],
    "too short": GOOD[:-1],
    "trailing bytes": GOOD + b"\x00",
    "corrupt gzip": gzip.compress(GOOD)[:-6],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_idx_raises_value_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "broken-idx2-ubyte"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(ValueError, match="broken-idx2-ubyte"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_load_mnist_gives_unit_interval_images_and_int64_labels(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, train=7, test=3, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist"
    assert ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (7, 1, 28, 28)
    assert ds.x_test.shape == (3, 1, 28, 28)
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == torch.float32
        assert x.is_contiguous()
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    expected = arrays[IDX_FILES[0]].astype(np.float32) / 255.0
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), expected, rtol=0, atol=1e-7)
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays[IDX_FILES[1]].tolist()
    assert ds.y_test.tolist() == arrays[IDX_FILES[3]].tolist()


def test_load_mnist_reads_a_mix_of_plain_and_gzipped_files_and_names_fashion(
    tmp_path: Path,
) -> None:
    write_mnist(tmp_path, train=4, test=2, gz=False)
    (tmp_path / IDX_FILES[2]).unlink()
    write_idx(tmp_path / IDX_FILES[2], np.full((2, 28, 28), 255, dtype=np.uint8), gz=True)
    ds = load_mnist(tmp_path, fashion=True)
    assert ds.name == "fashion_mnist"
    assert torch.equal(ds.x_test, torch.ones(2, 1, 28, 28))


def test_load_mnist_names_a_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, train=4, test=2, gz=True)
    (tmp_path / f"{IDX_FILES[3]}.gz").unlink()
    with pytest.raises(FileNotFoundError, match=IDX_FILES[3]):
        load_mnist(tmp_path)


def test_load_mnist_rejects_labels_that_do_not_match_the_images(tmp_path: Path) -> None:
    write_mnist(tmp_path, train=4, test=2, gz=False)
    write_idx(tmp_path / IDX_FILES[1], np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=IDX_FILES[1]):
        load_mnist(tmp_path)


def test_load_mnist_rejects_images_that_are_not_28_by_28(tmp_path: Path) -> None:
    write_mnist(tmp_path, train=4, test=2, gz=False)
    write_idx(tmp_path / IDX_FILES[0], np.zeros((4, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="28x28"):
        load_mnist(tmp_path)
