"""JsonlRecorder: a results file only ever ends on a complete line, even on a full disk."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlactor.metrics import recorder as recorder_module
from dlactor.metrics.recorder import JsonlRecorder, read_jsonl
from dlactor.metrics.summary import load_node_records
from tests.conftest import strict_json
from tests.tinyfs import PAGE, mount_mode, mounted_tmpfs

REAL_WRITE = os.write  # monkeypatching recorder's os.write replaces os.write itself


def _strict(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as strict JSON; the last one complete."""
    assert text == "" or text.endswith("\n"), f"torn last line: {text[-80:]!r}"
    return [strict_json(line) for line in text.splitlines()]


def _record(r: int, **extra: object) -> dict[str, object]:
    return {"node": 0, "round": r, "train_loss": 0.5, "peers": list(range(20))} | extra


class HalfWrites:
    """os.write stand-in: the first ``good`` calls write everything, then one writes half
    its bytes and every call after raises ENOSPC (a disk filling up mid-line)."""

    def __init__(self, good: int) -> None:
        self.good, self.calls = good, 0

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        self.calls += 1
        if self.calls <= self.good:
            return REAL_WRITE(fd, data)
        if self.calls == self.good + 1:
            return REAL_WRITE(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_records_are_written_one_line_each_and_read_back(tmp_path: Path) -> None:
    rec = JsonlRecorder(tmp_path / "nodes" / "0.jsonl")
    for r in range(3):
        rec.write(_record(r))
    rec.close()
    text = (tmp_path / "nodes" / "0.jsonl").read_text()
    assert _strict(text) == [_record(r) for r in range(3)]
    assert read_jsonl(tmp_path / "nodes" / "0.jsonl") == [_record(r) for r in range(3)]


def test_a_write_that_fails_halfway_leaves_only_complete_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "3.jsonl"
    rec = JsonlRecorder(path)
    monkeypatch.setattr(recorder_module.os, "write", HalfWrites(good=2))
    rec.write(_record(0))
    rec.write(_record(1))
    with pytest.raises(OSError, match=r"No space left on device: .*3\.jsonl") as failed:
        rec.write(_record(2))
    assert failed.value.errno == errno.ENOSPC
    assert _strict(path.read_text()) == [_record(0), _record(1)]
    monkeypatch.undo()  # the disk has room again: the next record follows on a line of its own
    rec.write(_record(3))
    rec.close()
    assert [r["round"] for r in _strict(path.read_text())] == [0, 1, 3]


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel taking part of a line is not an error while the rest still goes in."""
    writes: list[int] = []

    def short(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return REAL_WRITE(fd, bytes(data)[: max(1, len(data) // 2)])

    path = tmp_path / "0.jsonl"
    rec = JsonlRecorder(path)
    monkeypatch.setattr(recorder_module.os, "write", short)
    rec.write(_record(0))
    rec.close()
    assert _strict(path.read_text()) == [_record(0)] and len(writes) > 1


def test_a_torn_tail_left_by_an_earlier_writer_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "0.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n" + '{"node": 0, "rou')
    rec = JsonlRecorder(path)
    rec.write(_record(1))
    rec.close()
    assert [r["round"] for r in _strict(path.read_text())] == [0, 1]


def test_load_node_records_skips_a_torn_last_line(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "0.jsonl").write_text(json.dumps(_record(0)) + "\n" + '{"node": 0, "round": 1, "tr')
    (nodes / "1.jsonl").write_bytes(json.dumps(_record(0)).encode() + b"\n\x80\xff{")
    assert load_node_records(tmp_path) == {0: [_record(0)], 1: [_record(0)]}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of four pages, mounted for this test only."""
    if mount_mode(tmp_path / "probe") != "mount":
        pytest.skip("mounting needs root here; the monkeypatched tests above cover the logic")
    with mounted_tmpfs(tmp_path / "disk", 4 * PAGE) as disk:
        yield disk


def test_on_a_full_filesystem_the_file_ends_on_its_last_complete_line(tiny_disk: Path) -> None:
    path = tiny_disk / "0.jsonl"
    rec = JsonlRecorder(path)
    written = 0
    with pytest.raises(OSError, match="No space left on device") as failed:
        for r in range(10_000):
            rec.write(_record(r, weights=[0.1] * 20))
            written += 1
    rec.close()
    assert failed.value.errno == errno.ENOSPC and str(path) in str(failed.value)
    records = _strict(path.read_text())
    assert written > 10 and [r["round"] for r in records] == list(range(written))
