"""CIFAR-10 binary batches: records, channel planes, normalization, directory or tar.gz."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dlactor.data.cifar import (
    CIFAR10_FILES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    SUBDIR,
    load_cifar10,
    parse_cifar_records,
)

PER_TRAIN_FILE, TEST = 3, 4


def records(labels: np.ndarray, pixels: np.ndarray) -> bytes:
    """CIFAR-10 records: one label byte, then the R, G, B planes of 32x32 bytes."""
    rows = [
        bytes([int(label)]) + image.tobytes() for label, image in zip(labels, pixels, strict=True)
    ]
    return b"".join(rows)


def batch_files(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    files = {}
    for name in CIFAR10_FILES:
        n = TEST if name == "test_batch.bin" else PER_TRAIN_FILE
        pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        files[name] = (rng.integers(0, 10, n, dtype=np.uint8), pixels)
    return files


def write_dir(base: Path, files: dict) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for name, (labels, pixels) in files.items():
        (base / name).write_bytes(records(labels, pixels))
    return base


def write_tar(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        readme = tarfile.TarInfo(f"{SUBDIR}/readme.html")
        tar.addfile(readme, io.BytesIO(b""))
        for name, (labels, pixels) in files.items():
            raw = records(labels, pixels)
            info = tarfile.TarInfo(f"{SUBDIR}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def expected_train(files: dict) -> tuple[np.ndarray, np.ndarray]:
    names = CIFAR10_FILES[:5]
    pixels = np.concatenate([files[n][1] for n in names])
    labels = np.concatenate([files[n][0] for n in names])
    return pixels, labels


def test_cifar10_from_its_directory_has_normalized_images_and_labels(tmp_path: Path) -> None:
    files = batch_files()
    ds = load_cifar10(write_dir(tmp_path / SUBDIR, files).parent)
    assert ds.name == "cifar10"
    assert ds.num_classes == 10
    assert ds.input_shape == (3, 32, 32)
    assert ds.x_train.shape == (5 * PER_TRAIN_FILE, 3, 32, 32)
    assert ds.x_test.shape == (TEST, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    pixels, labels = expected_train(files)
    assert ds.y_train.tolist() == labels.tolist()
    assert ds.y_test.tolist() == files["test_batch.bin"][0].tolist()
    mean = np.array(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    restored = ds.x_train.numpy() * std + mean
    np.testing.assert_allclose(restored, pixels / 255.0, atol=1e-5)


def test_cifar10_keeps_the_red_green_blue_planes_in_order(tmp_path: Path) -> None:
    files = batch_files()
    image = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image[0, 0], image[0, 1], image[0, 2] = 255, 0, 51
    files["data_batch_1.bin"] = (np.array([7], dtype=np.uint8), image)
    ds = load_cifar10(write_dir(tmp_path, files))
    first = ds.x_train[0]
    for channel, value in enumerate((1.0, 0.0, 0.2)):
        level = (value - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]
        assert torch.allclose(first[channel], torch.full((32, 32), level), atol=1e-5)
    assert ds.y_train[0].item() == 7


def test_cifar10_reads_the_tar_gz_without_extracting_and_matches_the_directory(
    tmp_path: Path,
) -> None:
    files = batch_files(seed=3)
    from_tar = load_cifar10(write_tar(tmp_path / "cifar-10-binary.tar.gz", files))
    from_dir = load_cifar10(write_dir(tmp_path / "unpacked" / SUBDIR, files).parent)
    assert torch.equal(from_tar.x_train, from_dir.x_train)
    assert torch.equal(from_tar.y_test, from_dir.y_test)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz", "unpacked"]


def test_cifar10_names_a_batch_file_that_is_missing(tmp_path: Path) -> None:
    files = batch_files()
    del files["data_batch_4.bin"]
    with pytest.raises(FileNotFoundError, match=r"data_batch_4\.bin"):
        load_cifar10(write_dir(tmp_path, files))
    with pytest.raises(FileNotFoundError, match=r"data_batch_4\.bin"):
        load_cifar10(write_tar(tmp_path / "c.tar.gz", files))


def test_a_batch_that_is_not_whole_records_is_rejected_by_name(tmp_path: Path) -> None:
    write_dir(tmp_path, batch_files())
    (tmp_path / "test_batch.bin").write_bytes(b"\x01" * 3072)
    with pytest.raises(ValueError, match=r"test_batch\.bin.*3073-byte"):
        load_cifar10(tmp_path)


def test_a_label_outside_0_to_9_is_rejected() -> None:
    raw = bytes([10]) + bytes(3072)
    with pytest.raises(ValueError, match=r"out of 0\.\.9"):
        parse_cifar_records(raw, "data_batch_1.bin")
