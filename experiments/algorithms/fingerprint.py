"""Every deterministic figure of short in-memory runs, as JSON: run it before and after a
refactor and compare the two files (they must be equal to the last digit).

    python experiments/algorithms/fingerprint.py > before.json
    ... change the code ...
    python experiments/algorithms/fingerprint.py > after.json && cmp before.json after.json

The runs: the quickstart (16 nodes, 40 rounds, digits) and four rounds of 8 nodes for every
built-in topology and sharing kind. Times and memory readings are left out (they are the
machine's). With the peer sampler, which round a node's request and its answer are counted
in depends on timing: there only the learning figures and the graph are kept. Gossip's
graph itself depends on timing: it is not in the list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from dlactor.config import load_config
from dlactor.launch.plan import make_plan
from dlactor.testing import run_in_memory

ROOT = Path(__file__).parents[2]
TIMING = ("t_", "rss_bytes")
SHORT = ["nodes=8", "rounds=4", "evaluation.every=2", "training.local_steps=2"]
VARIANTS: dict[str, list[str]] = {
    "quickstart": [],
    **{
        f"topology={kind}": [*SHORT, f"topology.kind={kind}", *extra]
        for kind, extra in [
            ("ring", []),
            ("regular", ["topology.degree=3"]),
            ("complete", []),
            ("small_world", ["topology.k=2"]),
            ("erdos_renyi", ["topology.p=0.5"]),
            ("dynamic_regular", ["topology.degree=3"]),
            ("peer_sampler", ["topology.degree=3"]),
        ]
    },
    "topology=static+schedule": [
        *SHORT,
        "topology.kind=ring",
        "topology.schedule=[{round = 2, add = [[0, 4]], remove = [[0, 1]]}]",
    ],
    **{
        f"sharing={kind}": [*SHORT, "topology.degree=3", f"sharing.kind={kind}", *extra]
        for kind, extra in [
            ("full", []),
            ("full+lz4", ["sharing.compression='lz4'"]),
            ("random", []),
            ("topk", []),
            ("quantize", ["sharing.bits=4"]),
            ("choco", []),
        ]
    },
}


COUNTS = ("bytes_", "msgs_", "overlay_")


def _kept(record: dict[str, Any], timed_counts: bool) -> dict[str, Any]:
    drop = TIMING + COUNTS if timed_counts else TIMING
    return {k: v for k, v in sorted(record.items()) if not k.startswith(drop)}


async def fingerprint(overrides: list[str]) -> dict[str, Any]:
    sets = [o.replace("full+lz4", "full") for o in overrides]
    config = load_config(ROOT / "configs" / "quickstart.toml", sets)
    records = await run_in_memory(make_plan(config))
    timed = config.topology.kind == "peer_sampler"
    return {str(node): [_kept(r, timed) for r in rows] for node, rows in sorted(records.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="one variant's name")
    args = parser.parse_args()
    out = {}
    for name, overrides in VARIANTS.items():
        if args.only and name != args.only:
            continue
        out[name] = asyncio.run(fingerprint(overrides))
        print(name, file=sys.stderr)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
