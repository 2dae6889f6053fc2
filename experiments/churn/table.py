"""The churn study's table: per topology, each scenario against the run without churn.

    python experiments/churn/table.py runs/churn/regular runs/churn/dynamic_regular

Each argument is a variants.sh output directory (its compare/runs.txt lists the run without
churn first). Per run: the final test accuracy's mean and range over the nodes that finished
(lost nodes left out), its distance from the run without churn, the share of node-rounds
spent offline, the nodes lost, the node-rounds trained, the bytes each node sent per round
it was online, and the median round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def records(run: Path) -> dict[int, list[dict]]:
    return {
        int(path.stem): [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in sorted((run / "nodes").glob("[0-9]*.jsonl"))
    }


def main(dirs: list[str]) -> None:
    print("| topology | run | final accuracy, mean (min-max) | vs no churn | offline | lost "
          "| node-rounds trained | bytes per online node-round | median round (ms) |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for d in dirs:
        runs = [Path(line) for line in (Path(d) / "compare" / "runs.txt").read_text().split()]
        base = None
        for run in runs:
            summary = json.loads((run / "summary.json").read_text())
            final = summary["final"]
            mean = final["test_acc_mean"]
            base = mean if base is None else base
            rows = [r for rs in records(run).values() for r in rs]
            online = [r for r in rows if r.get("online", True)]
            trained = sum(1 for r in online if "train_loss" in r)
            sent = sum(r["bytes_sent"] for r in online) / max(1, len(online))
            offline = (summary.get("availability") or {}).get("offline_share", 0.0)
            lost = len(summary.get("lost", []))
            name = run.name.rsplit("-", 2)[0]
            print(
                f"| {Path(d).name} | {name} | {mean:.4f} ({final['test_acc_min']:.4f}-"
                f"{final['test_acc_max']:.4f}) | {mean - base:+.4f} | {offline:.1%} | {lost} | "
                f"{trained:,} | {sent:,.0f} | {summary['round_s_median'] * 1000:,.0f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
