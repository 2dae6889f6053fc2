"""How close each run's round graphs come to uniformly random d-regular ones, and what the
topology's own messages cost: a markdown table from run directories.

    python experiments/topologies/uniformity.py RUN_DIR... [--out FILE]

Per run: mean degree and the share of node-rounds with the run's most common degree;
rounds whose graph was disconnected (spectral gap 0); the mean spectral gap of a round's
mixing matrix; how many distinct peers a node met over the run (mean), against what a
fresh uniformly random graph of the same mean degree each round would give,
``(n - 1) (1 - (1 - d / (n - 1))^R)``; and the overlay (sampler or gossip) messages and
bytes per node and round.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from dlactor.metrics.report import load_run
from dlactor.metrics.topology import round_stats, round_topologies


def row(path: Path) -> dict[str, str]:
    run = load_run(path)
    n = int(run.manifest.get("nodes") or len(run.records))
    stats = round_stats(run.records, n)
    degrees = np.asarray(stats["degrees"])
    values, counts = np.unique(degrees, return_counts=True)
    mode = int(values[counts.argmax()])
    met: dict[int, set[int]] = {i: set() for i in range(n)}
    rounds = 0
    for topo, _ in round_topologies(run.records, n):
        rounds += 1
        for i, peers in topo.rows.items():
            met[i] |= set(peers)
    d = float(degrees.mean())
    uniform = (n - 1) * (1 - (1 - d / (n - 1)) ** rounds)
    recs = [r for rs in run.records.values() for r in rs]
    overlay = [r for r in recs if "overlay_msgs_sent" in r]
    msgs = statistics.fmean(r["overlay_msgs_sent"] for r in overlay) if overlay else 0.0
    nbytes = statistics.fmean(r["overlay_bytes_sent"] for r in overlay) if overlay else 0.0
    return {
        "run": run.name,
        "mean degree": f"{d:.2f}",
        "share at the common degree": f"{mode}: {counts.max() / counts.sum():.1%}",
        "disconnected rounds": str(sum(1 for g in stats["gap"] if g < 1e-9)),
        "mean spectral gap": f"{statistics.fmean(stats['gap']):.3f}",
        "distinct peers met (uniform)": f"{statistics.fmean(len(m) for m in met.values()):.1f} "
        f"({uniform:.1f})",
        "overlay msgs / node / round": f"{msgs:.1f}",
        "overlay bytes / node / round": f"{nbytes:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [row(p) for p in args.runs]
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
