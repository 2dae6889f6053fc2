"""Write the wide-area latency matrix of the topology study on an emulated network (wan.sh).

The 64 nodes sit in four cloud regions, node i in region i % 4: Virginia, Oregon, Ireland
and Tokyo. One-way latency between two nodes is half the round-trip time between their
regions, rounded from public inter-region measurements (AWS region-to-region ping medians
as published by cloudping.co, which vary by a few ms from day to day): within a region
5 ms (nodes in different data centres of one region), Virginia-Oregon 33, Virginia-Ireland
37, Oregon-Ireland 65, Virginia-Tokyo 75, Oregon-Tokyo 50, Ireland-Tokyo 105.

    python experiments/topologies/wan_matrix.py [OUT] [NODES]
"""

from __future__ import annotations

import sys
from pathlib import Path

REGIONS = ("virginia", "oregon", "ireland", "tokyo")
ONE_WAY_MS = {
    ("virginia", "oregon"): 33,
    ("virginia", "ireland"): 37,
    ("oregon", "ireland"): 65,
    ("virginia", "tokyo"): 75,
    ("oregon", "tokyo"): 50,
    ("ireland", "tokyo"): 105,
}
WITHIN_MS = 5


def latency_ms(a: str, b: str) -> int:
    if a == b:
        return WITHIN_MS
    return ONE_WAY_MS.get((a, b)) or ONE_WAY_MS[(b, a)]


def matrix(nodes: int) -> list[list[int]]:
    region = [REGIONS[i % len(REGIONS)] for i in range(nodes)]
    return [[0 if i == j else latency_ms(region[i], region[j]) for j in range(nodes)]
            for i in range(nodes)]  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("wan_latency.csv")
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    header = f"# one-way latency (ms), {nodes} nodes in 4 regions: written by wan_matrix.py\n"
    out.write_text(header + "".join(",".join(map(str, row)) + "\n" for row in matrix(nodes)))
    print(out)


if __name__ == "__main__":
    main()
