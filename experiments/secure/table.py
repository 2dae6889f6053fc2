"""The secure study's table: for each task, plain and secure sharing side by side.

    python experiments/secure/table.py runs/secure/fmnist runs/secure/movielens

Each argument is a variants.sh output directory (its compare/runs.txt lists the plain run
first, then the secure one and the float64 control). Per run: the final test metric's mean
and range over the nodes, its distance from the plain run's (the mean's, and the largest of
one node's), the bytes each node sent per round (and the ratio to the plain run's), and the
median round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def last_metrics(run: Path) -> tuple[str, dict[int, float]]:
    """Each node's last evaluated metric (accuracy, or RMSE for MovieLens)."""
    out: dict[int, float] = {}
    metric = "test_acc"
    for path in sorted((run / "nodes").glob("[0-9]*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        evaluated = [r for r in rows if "test_acc" in r or "test_rmse" in r]
        metric = "test_acc" if "test_acc" in evaluated[-1] else "test_rmse"
        out[int(path.stem)] = evaluated[-1][metric]
    return metric, out


def mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values)


def main(dirs: list[str]) -> None:
    print("| task | run | final metric, mean (min-max) | mean vs plain | largest node vs plain "
          "| bytes per node per round | vs plain | median round (ms) |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for d in dirs:
        runs = [Path(line) for line in (Path(d) / "compare" / "runs.txt").read_text().split()]
        summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
        metrics = [last_metrics(r) for r in runs]
        reference, base = metrics[0][1], summaries[0]["bytes_sent_per_node_per_round"]
        for run, summary, (metric, values) in zip(runs, summaries, metrics, strict=True):
            v = sorted(values.values())
            name = run.name.rsplit("-", 2)[0]
            sent = summary["bytes_sent_per_node_per_round"]
            print(
                f"| {Path(d).name} ({metric}) | {name} | {mean(values):.4f} "
                f"({v[0]:.4f}-{v[-1]:.4f}) | {mean(values) - mean(reference):+.4f} | "
                f"{max(abs(values[n] - reference[n]) for n in reference):.4f} | {sent:,.0f} | "
                f"{sent / base:.4f}x | {summary['round_s_median'] * 1000:,.0f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
