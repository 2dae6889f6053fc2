"""The Figure 6 study's table, one row per run directory given.

    python experiments/scale/table.py RUN_DIR...

Per run: nodes, degree and the spectral gap of its graph's mixing matrix (Metropolis-
Hastings), the final test accuracy's mean and range over the nodes, the virtual time of the
run and to each accuracy target, the MiB each node sent, and the median wall-clock round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlactor.topology.graphs import read_edge_list
from dlactor.topology.mixing import mixing_matrix, spectral_gap


def row(run: Path) -> str:
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    graph = read_edge_list(run / "topology.edges", summary["nodes"])
    degrees = sorted({d for _, d in graph.degree})
    gap = spectral_gap(mixing_matrix(graph))
    sent = summary["bytes_sent_per_node_per_round"] * summary["rounds"] / 2**20
    hits = summary.get("time_to_accuracy", {})
    to = " | ".join("-" if hit is None else f"{hit['t_virtual_s']:.2f}" for hit in hits.values())
    return (
        f"| {summary['nodes']} | {'/'.join(map(str, degrees))} | {gap:.4f} | "
        f"{final['test_acc_mean']:.4f} ({final['test_acc_min']:.4f}-{final['test_acc_max']:.4f})"
        f" | {summary['virtual_s']:.2f} | {to} | {sent:.1f} | "
        f"{summary['round_s_median'] * 1000:,.0f} |"
    )


def main(runs: list[str]) -> None:
    first = json.loads((Path(runs[0]) / "summary.json").read_text())
    targets = list(first.get("time_to_accuracy", {}))
    heads = " | ".join(f"virtual s to {t}" for t in targets)
    print(f"| nodes | degree | spectral gap | final accuracy, mean (min-max) | virtual s | {heads} "
          "| MiB sent per node | median wall round (ms) |")  # fmt: skip
    print("|---:|---:|---:|---|---:|" + "---:|" * len(targets) + "---:|---:|")
    for run in runs:
        print(row(Path(run)))


if __name__ == "__main__":
    main(sys.argv[1:])
