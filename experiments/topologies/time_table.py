"""The topology study's table on an emulated network, from its run directories: final
accuracy, virtual time per round, virtual time to each target mean accuracy, MiB per node.

    python experiments/topologies/time_table.py RUN_DIR... > time_to_accuracy.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _row(run_dir: Path) -> tuple[str, dict[str, Any]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return str(manifest.get("name") or run_dir.name), summary


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f}"


def main(paths: list[str]) -> None:
    rows = [_row(Path(p)) for p in paths]
    targets = sorted({t for _, s in rows for t in s.get("time_to_accuracy", {})}, key=float)
    head = ["topology", "final accuracy, mean (min-max)", "virtual s per round"]
    head += [f"virtual s to {float(t):.0%}" for t in targets]
    head += ["wall s", "MiB sent per node"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for name, s in rows:
        final = s["final"]
        cells = [
            name,
            f"{final['test_acc_mean']:.4f} "
            f"({final['test_acc_min']:.4f}-{final['test_acc_max']:.4f})",
            f"{s['virtual_s'] / s['rounds']:.3f}",
        ]
        for t in targets:
            hit = s["time_to_accuracy"].get(t)
            cells.append(_seconds(None if hit is None else hit["t_virtual_s"]))
        cells += [f"{s['wall_s']:,.0f}", f"{s['bytes_sent_total'] / s['nodes'] / 2**20:,.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
