"""The files a ``[network]`` table names: a latency matrix, a trace, per-node speed factors.

Each is small text (CSV), read whole after a size check, and every error names the file and
line. A file's content is never quoted in an error (a path may name any file).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dlactor.topology.graphs import GraphFileError, open_regular

__all__ = [
    "TRACE_HEADER",
    "NetworkFileError",
    "TraceRow",
    "read_latency_matrix",
    "read_speeds",
    "read_trace",
]

#: The first line of a trace file: its columns.
TRACE_HEADER = ("time_s", "target", "uplink_mbps", "downlink_mbps", "latency_ms")
#: The longest trace file accepted (about a million rows).
MAX_TRACE_BYTES = 64 << 20
#: The largest latency (ms) and bandwidth (Mbit/s) a file may give.
MAX_LATENCY_MS = 600_000.0
MAX_MBPS = 10_000_000.0
MAX_SPEED = 1e6


class NetworkFileError(ValueError):
    """A network file that cannot be used: which file, which line, what was expected."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = path if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One change: from ``time_s`` on, ``target`` (``"*"``: every process; a node id; or a
    link ``(i, j)``, both directions) has these values (None: unchanged)."""

    time_s: float
    target: str | int | tuple[int, int]
    uplink_mbps: float | None
    downlink_mbps: float | None
    latency_ms: float | None
    line: int


def _lines(path: str, limit: int) -> list[tuple[int, str]]:
    """(line number, text) of every line that is not blank or a ``#`` comment."""
    try:
        handle = open_regular(path)
    except GraphFileError as exc:
        raise NetworkFileError(path, None, exc.message) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise NetworkFileError(path, None, f"{size:,} bytes, more than {limit:,} allowed")
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise NetworkFileError(path, None, f"more than {limit:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise NetworkFileError(path, line, "not UTF-8 text") from None
    out = []
    for number, content in enumerate(text.splitlines(), start=1):
        stripped = content.split("#", 1)[0].strip()
        if stripped:
            out.append((number, stripped))
    return out


def _number(path: str, line: int, cell: str, what: str, low: float, high: float) -> float:
    """``cell`` as a finite number in [low, high] (low itself excluded when it is 0 and
    ``what`` is a bandwidth or speed: those must be positive)."""
    try:
        value = float(cell)
    except ValueError:
        raise NetworkFileError(path, line, f"{what}: expected a number") from None
    positive = what.startswith(("uplink", "downlink", "speed"))
    if not math.isfinite(value) or value > high or value < low or (positive and value <= 0):
        bound = f"in (0, {high:g}]" if positive else f"in [{low:g}, {high:g}]"
        raise NetworkFileError(path, line, f"{what}: expected a number {bound}")
    return value


def read_latency_matrix(path: str, nodes: int) -> np.ndarray:
    """An ``nodes`` x ``nodes`` CSV of one-way latencies in milliseconds (row i, column j:
    from node i to node j; the diagonal is not used), as seconds."""
    rows = _lines(path, (1 << 20) + nodes * nodes * 16)
    if len(rows) != nodes:
        where = rows[-1][0] if rows else None
        raise NetworkFileError(path, where, f"{len(rows)} rows, expected {nodes} (one per node)")
    matrix = np.zeros((nodes, nodes))
    for i, (line, text) in enumerate(rows):
        cells = text.split(",")
        if len(cells) != nodes:
            raise NetworkFileError(path, line, f"{len(cells)} columns, expected {nodes}")
        for j, cell in enumerate(cells):
            ms = _number(path, line, cell.strip(), f"column {j + 1}", 0.0, MAX_LATENCY_MS)
            matrix[i, j] = ms / 1000.0
    return matrix


def _target(path: str, line: int, cell: str, nodes: int) -> str | int | tuple[int, int]:
    if cell == "*":
        return "*"
    ends = cell.split("-")
    if len(ends) > 2 or not all(e.strip().isascii() and e.strip().isdigit() for e in ends):
        raise NetworkFileError(
            path, line, "target: expected *, a node id, or a link i-j between two node ids"
        )
    ids = [int(e) for e in ends]
    for node in ids:
        if node >= nodes:
            raise NetworkFileError(
                path, line, f"target names node {node}: the run has nodes 0 to {nodes - 1}"
            )
    if len(ids) == 1:
        return ids[0]
    if ids[0] == ids[1]:
        raise NetworkFileError(path, line, "target: a link joins two different nodes")
    return (min(ids), max(ids))


def read_trace(path: str, nodes: int) -> list[TraceRow]:
    """A trace: a header line ``time_s,target,uplink_mbps,downlink_mbps,latency_ms``, then
    one change per line, in non-decreasing ``time_s`` (docs/network.md)."""
    rows = _lines(path, MAX_TRACE_BYTES)
    if not rows:
        raise NetworkFileError(path, None, "empty: expected the header " + ",".join(TRACE_HEADER))
    line, text = rows[0]
    if tuple(c.strip() for c in text.split(",")) != TRACE_HEADER:
        raise NetworkFileError(path, line, "expected the header " + ",".join(TRACE_HEADER))
    out: list[TraceRow] = []
    last = 0.0
    for line, text in rows[1:]:
        cells = [c.strip() for c in text.split(",")]
        if len(cells) != len(TRACE_HEADER):
            raise NetworkFileError(
                path, line, f"{len(cells)} columns, expected {len(TRACE_HEADER)}"
            )
        t = _number(path, line, cells[0], "time_s", 0.0, 1e9)
        if t < last:
            raise NetworkFileError(
                path, line, f"time_s {t:g} is before the line above's {last:g}: sort the trace"
            )
        last = t
        target = _target(path, line, cells[1], nodes)
        up, down, latency = (
            None if not cell else _number(path, line, cell, name, 0.0, high)
            for cell, name, high in zip(
                cells[2:], TRACE_HEADER[2:], (MAX_MBPS, MAX_MBPS, MAX_LATENCY_MS), strict=True
            )
        )
        if up is None and down is None and latency is None:
            raise NetworkFileError(path, line, "changes nothing: give a bandwidth or a latency")
        if isinstance(target, tuple) and (up is not None or down is not None):
            raise NetworkFileError(
                path, line, "a link has a latency only: bandwidths belong to nodes (or *)"
            )
        out.append(TraceRow(t, target, up, down, latency, line))
    return out


def read_speeds(path: str, nodes: int) -> np.ndarray:
    """One compute speed factor per line, line i for node i (1: as measured; 0.5: half as
    fast, so its compute takes twice as long)."""
    rows = _lines(path, (1 << 20) + nodes * 32)
    if len(rows) != nodes:
        where = rows[-1][0] if rows else None
        raise NetworkFileError(path, where, f"{len(rows)} speeds, expected {nodes} (one per node)")
    return np.array([_number(path, line, text, "speed", 0.0, MAX_SPEED) for line, text in rows])
