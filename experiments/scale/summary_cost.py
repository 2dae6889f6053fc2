"""What the launcher's end of a run costs it: reading every node's records and summarizing
them, as ``dlactor launch`` does after the last node is done (CPU and resident memory).

    .venv/bin/python experiments/scale/summary_cost.py runs/figure6/n1024-d5-*

The records are held in memory at once, so both grow with nodes x rounds: docs/scaling.md
extrapolates from this to clusters of many machines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dlactor.metrics.summary import load_node_records, summarize


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run's directory")
    run_dir = parser.parse_args().run_dir
    nodes = json.loads((run_dir / "summary.json").read_text())["nodes"]
    on_disk = sum(p.stat().st_size for p in (run_dir / "nodes").glob("*.jsonl"))
    before, t0 = rss_mib(), time.process_time()
    by_node = load_node_records(run_dir)
    loaded, t1 = rss_mib(), time.process_time()
    summarize(run_dir, nodes=nodes, status="ok", wall_s=0.0, by_node=by_node)
    t2 = time.process_time()
    records = sum(len(rs) for rs in by_node.values())
    held = loaded - before
    print(f"{nodes} nodes, {records:,} records, {on_disk / 2**20:,.0f} MiB on disk")
    print(f"read: {t1 - t0:.2f} s of CPU ({(t1 - t0) / records * 1e6:.1f} µs a record)")
    print(f"summarize: {t2 - t1:.2f} s of CPU")
    print(f"held in memory: {held:,.0f} MiB ({held * 2**20 / records:,.0f} bytes a record)")


if __name__ == "__main__":
    main()
