"""MNIST and Fashion-MNIST from their standard IDX files (plain or gzipped).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the values in big-endian order, C-contiguous. Both datasets ship four
of them: ``train-images-idx3-ubyte`` (60000 x 28 x 28 uint8), ``train-labels-idx1-ubyte``
(60000 uint8), and the ``t10k-*`` test pair (10000), each possibly with a ``.gz`` suffix.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from dlactor.data.base import Dataset

__all__ = ["IDX_FILES", "find_idx", "load_mnist", "read_idx"]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SHAPE = (28, 28)
# What a gzipped IDX file may inflate to: the largest real one, MNIST's training images, is
# 47,040,016 bytes. A gzip bomb stops here instead of filling memory.
_MAX_IDX_BYTES = 64 << 20


def _parse_idx(raw: bytes | bytearray, where: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{where}: not an IDX file (bad magic {raw[:4].hex() or 'empty'})")
    dtype, ndim = _DTYPES.get(raw[2]), raw[3]
    if dtype is None:
        raise ValueError(f"{where}: unknown IDX element type 0x{raw[2]:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{where}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{where}: IDX header says shape {shape} of {dtype.name} ({expected} bytes in all), "
            f"but the file holds {len(raw)} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an IDX file, plain or gzipped (by its ``.gz`` suffix or magic).

    Raises ``ValueError`` naming the file when it is malformed: a bad magic number, an unknown
    element type, a size that does not match the dimensions in its header, or gzip data that
    is corrupt or inflates past ``_MAX_IDX_BYTES``.
    """
    path = Path(path)
    raw = path.read_bytes()
    return _parse_idx(_gunzip(raw, path) if raw[:2] == b"\x1f\x8b" else raw, str(path))


def _gunzip(raw: bytes, path: Path) -> bytearray:
    """Inflate a step at a time into one buffer, stopping past ``_MAX_IDX_BYTES``."""
    inflated = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while chunk := stream.read(1 << 20):
                inflated += chunk
                if len(inflated) > _MAX_IDX_BYTES:
                    raise ValueError(f"{path}: inflates to more than {_MAX_IDX_BYTES:,} bytes")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    return inflated


def find_idx(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``, whichever exists (FileNotFoundError otherwise)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: neither {name} nor {name}.gz is there")


def _images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(f"{path}: expected uint8 images of 28x28, got {array.dtype} {array.shape}")
    pixels = torch.from_numpy(array.astype(np.float32) / np.float32(255.0))
    return pixels.reshape(len(array), 1, *_IMAGE_SHAPE).contiguous()


def _labels(path: Path, count: int) -> torch.Tensor:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.shape != (count,) or (count and array.max() > 9):
        raise ValueError(
            f"{path}: expected {count} labels in 0..9, got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array.astype(np.int64))


def load_mnist(root: Path, *, fashion: bool = False) -> Dataset:
    """MNIST (or Fashion-MNIST) from the four IDX files in ``root``.

    Pixels become float32 in [0, 1], shaped ``(N, 1, 28, 28)``; labels int64 in 0..9.
    The standard split: 60000 training and 10000 test images.
    """
    root = Path(root)
    x_train = _images(find_idx(root, IDX_FILES[0]))
    y_train = _labels(find_idx(root, IDX_FILES[1]), len(x_train))
    x_test = _images(find_idx(root, IDX_FILES[2]))
    y_test = _labels(find_idx(root, IDX_FILES[3]), len(x_test))
    return Dataset(
        name="fashion_mnist" if fashion else "mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=(1, *_IMAGE_SHAPE),
    )
