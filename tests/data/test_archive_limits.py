"""IDX and CIFAR-10 files from a user: a gzip bomb, a damaged stream or an oversized tarball
member is a ValueError naming the file, read with bounded memory (as for MovieLens)."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from dlactor.data import cifar
from dlactor.data.cifar import CIFAR10_FILES, SUBDIR, read_cifar10
from dlactor.data.idx import read_idx

MiB = 1 << 20


def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: with a gzip header
    zeros = bytes(MiB)
    return b"".join([compressor.compress(zeros) for _ in range(size // MiB)]) + (compressor.flush())


def test_a_gzip_bomb_idx_file_is_refused_past_64_mib(tmp_path: Path) -> None:
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip_of_zeros(200 * MiB))
    assert bomb.stat().st_size < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{bomb}: inflates to more than 67,108,864 bytes"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * MiB, f"{peak / MiB:.1f} MiB"  # it was 200 MiB and more


def test_a_damaged_deflate_stream_in_an_idx_file_is_a_value_error(tmp_path: Path) -> None:
    raw = bytearray(gzip_of_zeros(2 * MiB))
    raw[20:40] = b"\xff" * 20  # the deflate stream, past the gzip header
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path}: corrupt gzip data"):
        read_idx(path)  # zlib.error went through before


def cifar_tar(path: Path, records: int, extra_members: int = 0) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for k in range(extra_members):
            tar.addfile(tarfile.TarInfo(f"{SUBDIR}/extra{k}"), io.BytesIO(b""))
        for name in CIFAR10_FILES:
            raw = (bytes([3]) + bytes(3072)) * records
            info = tarfile.TarInfo(f"{SUBDIR}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_a_cifar_member_bigger_than_a_batch_file_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = cifar_tar(tmp_path / "cifar-10-binary.tar.gz", records=3)
    assert len(read_cifar10(archive)["test_batch.bin"]) == 3 * 3073
    monkeypatch.setattr(cifar, "_BATCH_BYTES", 2 * 3073)
    with pytest.raises(ValueError, match=r"data_batch_1\.bin is 9,219 bytes, more than"):
        read_cifar10(archive)


def test_a_cifar_tarball_of_too_many_members_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = cifar_tar(tmp_path / "cifar-10-binary.tar.gz", records=1, extra_members=5)
    monkeypatch.setattr(cifar, "_MAX_MEMBERS", 4)
    with pytest.raises(ValueError, match="more than 4 members"):
        read_cifar10(archive)
