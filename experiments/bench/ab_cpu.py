"""CPU per node-round of two or more revisions of dlactor, side by side, in one sitting.

    .venv/bin/python experiments/bench/ab_cpu.py REV [REV ...] [--nodes N] [--reps K]

Each revision (``.`` is the working tree; anything else is checked out into a temporary git
worktree) launches the config for 40 and for ``40 + R`` rounds, evaluations off; the
difference of the two launches' CPU (the launcher and every node, ``getrusage`` of the
children) over ``R`` rounds and the nodes is its CPU per node-round, start-up left out.
The revisions take turns, ``--reps`` times, so that a change of the machine's load in
between falls on all of them alike; the report gives each one's runs and median, and each
median against the first revision's. On a shared machine one run moves by several percent:
read a difference smaller than the runs' spread as none.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_before_after import baseline_tree, revision_of
from where_cpu_goes import REPO, WARM, command


def cpu_of_launch(tree: Path, config: Path, nodes: int, rounds: int, out: Path) -> float:
    """CPU seconds of one launch of ``config`` by the dlactor in ``tree`` (every process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command(config, nodes, rounds, out), cwd=tree,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"the launch in {tree} exited {done.returncode}:\n{tail}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def per_node_round(tree: Path, config: Path, nodes: int, rounds: int, out: Path) -> float:
    """Milliseconds of CPU per node-round, start-up left out (two launches' difference)."""
    short = cpu_of_launch(tree, config, nodes, WARM, out / "short")
    long = cpu_of_launch(tree, config, nodes, WARM + rounds, out / "long")
    return (long - short) / (rounds * nodes) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("revisions", nargs="+", help="git revisions; . is the working tree")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.toml")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200, help="rounds measured (after 40)")
    parser.add_argument("--reps", type=int, default=3, help="turns each revision takes")
    args = parser.parse_args()
    config = args.config.resolve()
    names = [("working tree" if r == "." else revision_of(r)) for r in args.revisions]
    names = [
        name if names.count(name) == 1 else f"{name} ({i + 1})" for i, name in enumerate(names)
    ]
    runs: dict[str, list[float]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        trees = [
            REPO if rev == "." else stack.enter_context(baseline_tree(rev))
            for rev in args.revisions
        ]
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlactor-ab-")))
        for rep in range(args.reps):
            for name, tree in zip(names, trees, strict=True):
                value = per_node_round(tree, config, args.nodes, args.rounds, tmp / f"{rep}")
                runs[name].append(value)
                print(f"  {name}, turn {rep + 1}: {value:.3f} ms", flush=True)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"\n# CPU per node-round: {config.name}, {args.nodes} nodes, {args.rounds} rounds, "
        f"evaluations off\n\nMeasured {time.strftime('%Y-%m-%d %H:%M')}, load average {load} "
        "after the runs.\n"
    )
    print("| revision | runs (ms) | median (ms) | against the first |")
    print("|---|---|---:|---:|")
    first = statistics.median(runs[names[0]])
    for name in names:
        median = statistics.median(runs[name])
        shown = ", ".join(f"{v:.3f}" for v in runs[name])
        print(f"| {name} | {shown} | {median:.3f} | {median / first:.3f}x |")


if __name__ == "__main__":
    main()
