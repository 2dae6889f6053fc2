"""The topology a run really used, round by round, rebuilt from the nodes' records.

Each node records its neighbours and their mixing weights (``peers``, ``weights``) in the
first round and whenever they change. Carried forward, they give every round's mixing
matrix: the same object for static, scheduled, sampled and gossip topologies.
:func:`write_round_topology` stores it in the run directory (``topology_rounds.jsonl``: one
line per round whose graph changed, with its edges); :func:`round_stats` gives the degrees
and the spectral gap ``1 - |lambda_2(W)|`` of every round for ``dlactor report``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlactor.metrics.jsonio import dumps, write_atomic
from dlactor.topology.mixing import spectral_gap

__all__ = ["RoundTopology", "round_stats", "round_topologies", "write_round_topology"]

Records = dict[int, list[dict[str, Any]]]

#: Above this many nodes the spectral gap (a dense eigenvalue problem per round) is skipped.
MAX_GAP_NODES = 2048


@dataclass(frozen=True)
class RoundTopology:
    """One round's graph as the nodes used it."""

    round: int
    rows: dict[int, dict[int, float]]  # node -> {neighbour: weight}

    def edges(self) -> list[tuple[int, int]]:
        """Undirected edges, each once; an edge only one end recorded is included."""
        return sorted({(min(i, j), max(i, j)) for i, row in self.rows.items() for j in row})

    def asymmetric(self) -> int:
        """Pairs where one node lists the other but not the other way round (0 when the
        topology is consistent, as every built-in one is)."""
        return sum(1 for i, row in self.rows.items() for j in row if i not in self.rows.get(j, {}))

    def degrees(self) -> list[int]:
        return [len(row) for _, row in sorted(self.rows.items())]

    def matrix(self, nodes: int) -> np.ndarray:
        w = np.zeros((nodes, nodes))
        for i, row in self.rows.items():
            for j, weight in row.items():
                w[i, j] = weight
            w[i, i] = 1.0 - sum(row.values())
        return w


def round_topologies(records: Records, nodes: int) -> Iterator[tuple[RoundTopology, bool]]:
    """Every round some node completed, in order, with whether its graph changed from the
    previous round's. A node that sat a round out (``online: false``) or has no record of
    it (lost) has no neighbours in it; its row comes back when it does."""
    changes: dict[int, dict[int, dict[int, float]]] = {}
    absent: dict[int, set[int]] = {}  # round -> nodes offline in it
    counts: set[int] = set()
    last_round = -1
    for node, recs in records.items():
        counts.add(len(recs))
        for rec in recs:
            last_round = max(last_round, rec["round"])
            if rec.get("online") is False:
                absent.setdefault(rec["round"], set()).add(node)
            if "peers" in rec:
                weights = rec.get("weights") or [0.0] * len(rec["peers"])
                row = dict(zip(rec["peers"], weights, strict=True))
                changes.setdefault(rec["round"], {})[node] = row
    ends = {node: recs[-1]["round"] if recs else -1 for node, recs in records.items()}
    churned = bool(absent) or len(counts) > 1
    current: dict[int, dict[int, float]] = {}
    previous: dict[int, dict[int, float]] | None = None
    for r in range(last_round + 1):
        changed = r in changes
        if changed:
            current = {**current, **changes[r]}
        rows = {n: current[n] for n in sorted(current) if n < nodes}
        if churned:  # rows of nodes away this round are empty, and so is any edge to them
            away = absent.get(r, set()) | {n for n, end in ends.items() if end < r}
            rows = {n: ({} if n in away else {j: w for j, w in row.items() if j not in away})
                    for n, row in rows.items()}  # fmt: skip
            changed = rows != previous
            previous = rows
        yield RoundTopology(r, rows), changed


def write_round_topology(run_dir: Path, records: Records, nodes: int) -> Path:
    """``topology_rounds.jsonl``: ``{"round": r, "edges": [[u, v], ...]}`` for round 0 and
    every round whose graph differs from the one before. Written whole or not at all: a
    failure (a full disk) leaves no partial file behind."""
    path = run_dir / "topology_rounds.jsonl"
    write_atomic(path, (dumps(row) + "\n" for row in _changed_rounds(records, nodes)))
    return path


def _changed_rounds(records: Records, nodes: int) -> Iterator[dict[str, Any]]:
    """The rows of ``topology_rounds.jsonl``, one per round whose edges changed."""
    previous: list[tuple[int, int]] | None = None
    for topo, changed in round_topologies(records, nodes):
        if not changed:
            continue
        edges = topo.edges()
        if edges != previous:
            row: dict[str, Any] = {"round": topo.round, "edges": [list(e) for e in edges]}
            if asym := topo.asymmetric():
                row["asymmetric_pairs"] = asym
            yield row
            previous = edges


def round_stats(records: Records, nodes: int) -> dict[str, list[float]]:
    """Per round: the round, the mean / min / max degree, and the spectral gap of the
    round's mixing matrix (NaN above MAX_GAP_NODES nodes). Also ``degrees``: every
    node's degree in every round, pooled, for a histogram."""
    out: dict[str, list[float]] = {
        k: [] for k in ("round", "degree_mean", "degree_min", "degree_max", "gap", "degrees")
    }
    gap = float("nan")
    for topo, changed in round_topologies(records, nodes):
        degrees = topo.degrees()
        if not degrees:
            continue
        if changed:
            gap = spectral_gap(topo.matrix(nodes)) if nodes <= MAX_GAP_NODES else float("nan")
        out["round"].append(topo.round)
        out["degree_mean"].append(float(np.mean(degrees)))
        out["degree_min"].append(min(degrees))
        out["degree_max"].append(max(degrees))
        out["gap"].append(gap)
        out["degrees"].extend(degrees)
    return out
