"""Per-node JSONL results: one object per round, on disk as soon as it is written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from dlactor.metrics.jsonio import dumps, loads

__all__ = ["JsonlRecorder", "read_jsonl"]

_TAIL_CHUNK = 1 << 16


class JsonlRecorder:
    """Appends one strict-JSON line per record, so a crash loses nothing written and the
    file only ever ends on a complete line.

    Each line goes out in one ``os.write`` to an ``O_APPEND`` descriptor (no buffer in
    between that could hold half a line). A write that fails part-way (a full disk) is cut
    back to the last complete line before the error is raised, so what a reader finds is
    every record up to the failed one and nothing of it.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o644)
        self._end = _complete_end(self._fd)
        if self._end < os.fstat(self._fd).st_size:  # a torn tail an earlier writer left
            os.ftruncate(self._fd, self._end)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line; OSError naming the file if it cannot all be written
        (the file then ends where it did before)."""
        line = (dumps(record) + "\n").encode("utf-8")
        try:
            _write_all(self._fd, line)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
            why = exc.strerror or str(exc)
            raise OSError(
                exc.errno,
                f"{why}: could not append a record to {self.path} "
                "(the file keeps every complete line before it)",
            ) from exc
        self._end += len(line)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: one ``os.write`` unless the kernel takes less (a disk filling
    up), then the rest; a write that takes nothing is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _complete_end(fd: int) -> int:
    """Where the file's last complete line ends (its size, unless a line is torn)."""
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a results file: a torn line (from a node killed mid-write
    before records were written whole) or anything else that is not a JSON object is
    skipped. Non-finite numbers come back as floats (``jsonio``)."""
    records = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
