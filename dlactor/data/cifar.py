"""CIFAR-10 from its standard binary distribution (``cifar-10-binary.tar.gz``).

The archive holds ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``: each
a run of 3073-byte records, one label byte (0..9) then 3072 pixel bytes, the red, green and
blue 32x32 planes in row-major order; 10000 records per file in the real release. The loader
reads the extracted directory, or the files directly in ``root``, or the ``.tar.gz`` itself
(members are read in one streaming pass, nothing is written to disk).
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from dlactor.data.base import Dataset

__all__ = [
    "CIFAR10_FILES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SUBDIR",
    "load_cifar10",
    "parse_cifar_records",
    "read_cifar10",
]

CIFAR10_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
SUBDIR = "cifar-10-batches-bin"
# Per-channel mean and standard deviation of the 50000 training images, pixels in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_RECORD = 1 + 3 * 32 * 32
# A batch file of the real release holds 10,000 records (30,730,000 bytes); a tarball member
# that says it is bigger, or a tarball of more members than this, is refused before it is read.
_BATCH_BYTES = 10_000 * _RECORD
_MAX_MEMBERS = 1_000


def parse_cifar_records(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 (N, 3, 32, 32), labels int64 (N,))`` from a batch file's bytes."""
    if len(raw) == 0 or len(raw) % _RECORD:
        raise ValueError(
            f"{where}: {len(raw)} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{where}: label {labels.max()} is out of 0..9 (not CIFAR-10 records?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_dir(root: Path) -> dict[str, bytes]:
    base = root / SUBDIR if (root / SUBDIR).is_dir() else root
    missing = [name for name in CIFAR10_FILES if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{base}: CIFAR-10 batch files missing: {', '.join(missing)}")
    return {name: (base / name).read_bytes() for name in CIFAR10_FILES}


def _read_tar(archive: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with tarfile.open(archive, mode="r:*") as tar:
        for count, member in enumerate(tar, 1):
            if count > _MAX_MEMBERS:
                raise ValueError(f"{archive}: more than {_MAX_MEMBERS:,} members")
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in CIFAR10_FILES and name not in found:
                if member.size > _BATCH_BYTES:
                    raise ValueError(
                        f"{archive}: {member.name} is {member.size:,} bytes, more than a "
                        f"CIFAR-10 batch file ({_BATCH_BYTES:,})"
                    )
                stream = tar.extractfile(member)
                if stream is not None:
                    found[name] = stream.read()
    missing = [name for name in CIFAR10_FILES if name not in found]
    if missing:
        raise FileNotFoundError(f"{archive}: CIFAR-10 batch files missing: {', '.join(missing)}")
    return found


def read_cifar10(root: Path) -> dict[str, bytes]:
    """The six batch files' bytes, from a directory or a ``.tar.gz``, by file name."""
    root = Path(root)
    return _read_tar(root) if root.is_file() else _read_dir(root)


def _normalized(pixels: np.ndarray) -> torch.Tensor:
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    scaled -= mean
    scaled /= std
    return torch.from_numpy(scaled)


def _split(files: Mapping[str, bytes], names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [parse_cifar_records(files[name], name) for name in names]
    pixels = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return _normalized(pixels), torch.from_numpy(labels)


def load_cifar10(root: Path) -> Dataset:
    """CIFAR-10: float32 images ``(N, 3, 32, 32)`` normalized per channel with
    ``CIFAR10_MEAN``/``CIFAR10_STD``, int64 labels 0..9; the five data batches are the
    training set (50000), ``test_batch.bin`` the test set (10000)."""
    files = read_cifar10(root)
    x_train, y_train = _split(files, CIFAR10_FILES[:5])
    x_test, y_test = _split(files, CIFAR10_FILES[5:])
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=(3, 32, 32),
    )
