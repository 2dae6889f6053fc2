"""Run-level figures from the per-node JSONL files (the schema in README.md, "Results")."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dlactor.metrics.recorder import read_jsonl

__all__ = ["load_node_records", "load_server_records", "spread", "summarize"]

SERVER_PREFIX = "server-"


def load_node_records(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """Every learning node's records, by node id (nodes with no file yet are absent). A torn
    last line, from a node killed while writing it, is skipped (``read_jsonl``)."""
    out = {}
    for path in sorted((run_dir / "nodes").glob("*.jsonl")):
        if path.stem.isdigit():
            out[int(path.stem)] = read_jsonl(path)
    return out


def load_server_records(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """The records of the algorithm's servers (``nodes/server-<id>.jsonl``: a FedAvg
    server, a parameter server), by process id; none for D-PSGD and Epidemic Learning."""
    out = {}
    for path in sorted((run_dir / "nodes").glob(f"{SERVER_PREFIX}*.jsonl")):
        number = path.stem.removeprefix(SERVER_PREFIX)
        if number.isdigit():
            out[int(number)] = read_jsonl(path)
    return out


def _round_durations(records: list[dict[str, Any]]) -> list[float]:
    walls = [r["t_wall"] for r in records]
    if not walls:
        return []
    return [b - a for a, b in zip([0.0, *walls[:-1]], walls, strict=True)]


def spread(values: Iterable[float]) -> tuple[float, float, float] | None:
    """Mean, min and max of ``values`` (None if there are none). A NaN among them (a
    diverged node) makes all three NaN: Python's ``min`` and ``max`` would give a finite
    answer or NaN depending on where in the list it is."""
    values = list(values)
    if not values:
        return None
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan, math.nan
    return statistics.fmean(values), min(values), max(values)


def _final(records_by_node: dict[int, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Each node's last evaluation: accuracy for classification, RMSE for regression."""
    last = []
    for records in records_by_node.values():
        evals = [r for r in records if "test_loss" in r]
        if evals:
            last.append(evals[-1])
    final: dict[str, float | None] = {
        f"{metric}_{stat}": None
        for metric in ("test_acc", "test_rmse")
        for stat in ("mean", "min", "max")
    }
    final |= {"test_loss_mean": None, "eval_round": None}
    if not last:
        return final
    for metric in ("test_acc", "test_rmse"):
        stats = spread(r[metric] for r in last if metric in r)
        if stats is not None:
            final[f"{metric}_mean"], final[f"{metric}_min"], final[f"{metric}_max"] = stats
    final["test_loss_mean"] = statistics.fmean(r["test_loss"] for r in last)
    final["eval_round"] = min(r["round"] for r in last)
    return final


def _last_consensus(run_dir: Path) -> float | None:
    path = run_dir / "consensus.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return rows[-1]["consensus_distance"] if rows else None


def _overlay(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in records if "overlay_bytes_sent" in r]
    if not rows:
        return {}
    return {
        "overlay_bytes_sent_total": sum(r["overlay_bytes_sent"] for r in rows),
        "overlay_msgs_sent_total": sum(r["overlay_msgs_sent"] for r in rows),
        "overlay_bytes_recv_total": sum(r["overlay_bytes_recv"] for r in rows),
    }


def _secure(records: list[dict[str, Any]], servers: list[dict[str, Any]]) -> dict[str, Any]:
    """Secure aggregation's own figures, when the run masked: the bytes its rosters cost
    beyond the shares, and the rounds a receiver kept its model (fewer than two senders, or
    an unmasked sum out of range)."""
    rows = [r for r in records if "secure_bytes_sent" in r]
    if not rows:
        return {}
    received = [r for r in [*records, *servers] if "secure_skipped" in r]
    extra = [r["secure_bytes_sent"] for r in rows]
    return {
        "secure": {
            "masked": True,
            "extra_bytes_total": sum(extra),
            "extra_bytes_per_node_per_round": statistics.fmean(extra),
            "rounds_skipped": sum(bool(r["secure_skipped"]) for r in received),
            "sums_rejected": sum(bool(r.get("secure_rejected")) for r in received),
        }
    }


def mean_curve(
    by_process: dict[int, list[dict[str, Any]]], metric: str = "test_acc"
) -> list[tuple[int, float, float, float | None]]:
    """Per evaluated round (every process's value in): the round, the mean of ``metric``,
    and when it was known: the latest ``t_wall`` and ``t_virtual`` (None without a virtual
    clock) of the processes behind the mean."""
    points: dict[int, list[dict[str, Any]]] = {}
    for records in by_process.values():
        for rec in records:
            if rec.get(metric) is not None:
                points.setdefault(rec["round"], []).append(rec)
    out = []
    count = len(by_process)
    for rnd in sorted(points):
        recs = points[rnd]
        if len(recs) < count:
            continue  # a process missed it (a failed run's last round): no mean to trust
        virtual = [r["t_virtual"] for r in recs if "t_virtual" in r]
        out.append(
            (
                rnd,
                statistics.fmean(r[metric] for r in recs),
                max(r["t_wall"] for r in recs),
                max(virtual) if len(virtual) == len(recs) else None,
            )
        )
    return out


def time_to_accuracy(
    by_process: dict[int, list[dict[str, Any]]], targets: Iterable[float]
) -> dict[str, dict[str, Any] | None]:
    """For each target, the first evaluated round whose mean test accuracy reached it, and
    the wall and virtual seconds by which every process had finished it (None: never)."""
    curve = mean_curve(by_process)
    out: dict[str, dict[str, Any] | None] = {}
    for target in targets:
        hit = next((p for p in curve if p[1] >= target), None)
        out[f"{target:g}"] = (
            None if hit is None else {"round": hit[0], "t_wall_s": hit[2], "t_virtual_s": hit[3]}
        )
    return out


def _virtual_s(records: Iterable[dict[str, Any]]) -> float | None:
    times = [r["t_virtual"] for r in records if "t_virtual" in r]
    return max(times) if times else None


def summarize(
    run_dir: Path,
    *,
    nodes: int,
    status: str,
    wall_s: float,
    by_node: dict[int, list[dict[str, Any]]] | None = None,
    targets: Iterable[float] = (),
    lost: Iterable[int] = (),
) -> dict[str, Any]:
    """Run-level figures; ``by_node`` are the nodes' records if already read; ``targets``
    the mean accuracies whose time to reach is given. Nodes ``lost`` (a run that went on
    without them) count in the totals up to their loss, and not in the rounds completed,
    the final accuracy or the time to reach a target (the survivors')."""
    if by_node is None:
        by_node = load_node_records(run_dir)
    servers = load_server_records(run_dir)
    gone = set(lost)
    survivors = {n: rs for n, rs in by_node.items() if n not in gone}
    records = [r for rs in by_node.values() for r in rs]
    trained = [r["t_train"] for r in records if "t_train" in r]
    durations = [d for rs in by_node.values() for d in _round_durations(rs)]
    completed = min((len(by_node.get(n, [])) for n in range(nodes) if n not in gone), default=0)
    return {
        "nodes": nodes,
        "rounds": completed,
        "status": status,
        "wall_s": wall_s,
        # the emulated network's virtual clock at the end (absent without one)
        **_present(
            "virtual_s", _virtual_s([*records, *(r for rs in servers.values() for r in rs)])
        ),
        "round_s_median": statistics.median(durations) if durations else None,
        # rounds a node trained in (a FedAvg client idles in the rounds it is not sampled)
        "t_train_median": statistics.median(trained) if trained else None,
        "bytes_sent_per_node_per_round": (
            statistics.fmean(r["bytes_sent"] for r in records) if records else None
        ),
        "bytes_sent_total": sum(r["bytes_sent"] for r in records),
        # what the topology's own messages cost (peer sampler, gossip); absent otherwise
        **_overlay(records),
        # secure aggregation (absent for a run that did not mask)
        **_secure(records, [r for rs in servers.values() for r in rs]),
        "rss_bytes_max_node": max((r["rss_bytes"] for r in records), default=None),
        # the model that counts is the server's, where there is one (FedAvg, parameter server)
        "final": {**_final(servers or survivors), "consensus_distance": _last_consensus(run_dir)},
        "time_to_accuracy": time_to_accuracy(servers or survivors, targets),
        **_servers(servers),
    }


def _present(key: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {key: value}


def _servers(servers: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """What each server sent and received over the run (downloads and uploads)."""
    if not servers:
        return {}
    return {
        "servers": {
            str(process): {
                "rounds": len(records),
                "bytes_sent_total": sum(r.get("bytes_sent", 0) for r in records),
                "bytes_recv_total": sum(r.get("bytes_recv", 0) for r in records),
            }
            for process, records in servers.items()
        }
    }
