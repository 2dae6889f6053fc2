"""What a forked node's private memory is: pages of the launcher's template it copied on
write, or pages of its own.

    sudo .venv/bin/python experiments/bench/node_memory.py [CONFIG] [--nodes N] [--round R]

Launches CONFIG (default: the quickstart) with N nodes (default 16), waits until the nodes
have finished round R (default 20), and then, for 4 nodes, compares every private page of
the node with the launcher's page at the same address (/proc/<pid>/pagemap, which shows
page frame numbers to root only): a page the launcher has too, in another frame, is a copy
the node made by writing to the template; a page the launcher does not have is the node's
own. Printed in MiB per node, by kind of mapping (the malloc heap, anonymous mappings:
Python's object arenas, torch's and numpy's larger blocks, thread stacks; files: the
writable data of shared libraries).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT, EXCLUSIVE, PFN_MASK = 1 << 63, 1 << 56, (1 << 55) - 1


def writable_mappings(pid: int) -> list[tuple[int, int, str]]:
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        name = parts[5] if len(parts) > 5 else "[anon]"
        if "w" in parts[1]:
            out.append((start, end, name if name.startswith("[") else "file (writable data)"))
    return out


def entries(pagemap: BinaryIO, start: int, end: int) -> tuple[int, ...]:
    pagemap.seek(start // PAGE * 8)
    data = pagemap.read((end - start) // PAGE * 8)
    return struct.unpack(f"{len(data) // 8}Q", data)


def classify(launcher: int, node: int) -> collections.Counter[tuple[str, str]]:
    """Bytes of the node's private pages by (mapping kind, copied or own)."""
    kinds: collections.Counter[tuple[str, str]] = collections.Counter()
    with (
        open(f"/proc/{launcher}/pagemap", "rb") as launcher_map,
        open(f"/proc/{node}/pagemap", "rb") as node_map,
    ):
        for start, end, kind in writable_mappings(node):
            try:
                mine, theirs = entries(node_map, start, end), entries(launcher_map, start, end)
            except OSError:
                continue
            for n, t in zip(mine, theirs, strict=False):
                if not (n & PRESENT and n & EXCLUSIVE):
                    continue  # not present, or shared with another process
                copied = t & PRESENT and (t & PFN_MASK) != (n & PFN_MASK)
                kinds[(kind, "copied from the template" if copied else "its own")] += PAGE
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "quickstart.toml"))
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--round", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: /proc/<pid>/pagemap shows page frame numbers to root only")
        return 2
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "dlactor", "launch", args.config, "--out", out,
               "--no-progress", "--set", f"nodes={args.nodes}",
               "--set", f"rounds={args.round + 100}"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            while not _reached(out, args.round):
                if proc.poll() is not None:
                    print(f"the run ended (exit {proc.returncode}) before round {args.round}")
                    return 1
                time.sleep(0.2)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            picked = [int(c) for c in children[:: max(1, len(children) // 4)][:4]]
            total: collections.Counter[tuple[str, str]] = collections.Counter()
            for pid in picked:
                total.update(classify(proc.pid, pid))
        finally:
            proc.kill()
            proc.wait()
    print(f"# A node's private memory at round {args.round}, {args.nodes} nodes of "
          f"{Path(args.config).name} (mean of {len(picked)} nodes)\n")  # fmt: skip
    print("| mapping | pages | MiB |\n|---|---|---:|")
    for (kind, how), nbytes in total.most_common():
        print(f"| {kind} | {how} | {nbytes / len(picked) / 2**20:.2f} |")
    print(f"| all | | {sum(total.values()) / len(picked) / 2**20:.2f} |")
    return 0


def _reached(out: str, rnd: int) -> bool:
    files = glob.glob(f"{out}/*/nodes/*.jsonl")
    if not files:
        return False
    try:
        return all(sum(1 for _ in open(f)) > rnd for f in files[:4])
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
