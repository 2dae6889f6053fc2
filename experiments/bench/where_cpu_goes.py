"""Where a node's CPU goes in a round, besides training: a launched run, measured from outside.

    .venv/bin/python experiments/bench/where_cpu_goes.py [--config C] [--rounds R]

1. CPU per node-round, the start-up left out: the same config launched for 40 rounds and
   for ``40 + R``, evaluations off; the difference of the two runs' CPU (the launcher and
   every node, from ``getrusage`` of the children) over ``R`` rounds and the nodes. Beside
   it, the floor: node 0's training steps of one round run alone in this process, one
   torch thread, timed by their CPU.
2. Who uses it, by thread: while each of the same two runs goes on, every thread of the
   launcher and of the nodes is read from /proc every 0.2 s, and the shorter run's figures
   are taken from the longer's; a node's main thread runs its event loop (the protocol, the codec,
   the sockets, and training and evaluation short enough to run there: ``Handoff``), its
   other thread what is handed off (a function's first run, and runs of 10 ms and more).
3. In the loop thread, by function: the run again with ``DLACTOR_PROFILE_DIR`` (cProfile on
   each node's loop thread, timed by that thread's CPU); node 0's functions by their own
   time per round outside training (``besides_training``). cProfile slows Python code about
   2x: read this part as shares.

Prints a markdown report; the numbers describe this machine under whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DLACTOR = [sys.executable, "-m", "dlactor"]
WARM = 40  # the shorter run's rounds: start-up and the first rounds, subtracted
TICKS = os.sysconf("SC_CLK_TCK")


def command(config: Path, nodes: int, rounds: int, out: Path) -> list[str]:
    return [*DLACTOR, "launch", str(config), "--set", f"nodes={nodes}", "--set",
            f"rounds={rounds}", "--set", "evaluation.every=1000000", "--out", str(out),
            "--no-progress"]  # fmt: skip


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` so far (none if it is gone)."""
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return out


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def launch(
    config: Path, nodes: int, rounds: int, out: Path, env: dict[str, str] | None = None
) -> tuple[float, dict[str, float]]:
    """Launch ``config`` for ``rounds`` rounds: the CPU seconds it took, all processes (from
    ``getrusage``), and the launcher's and the nodes' threads' CPU seconds by kind (read
    from /proc every 0.2 s; each thread's last reading, so what a thread used after it,
    before it ended, is not counted)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        command(config, nodes, rounds, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    last: dict[tuple[int, int], float] = {}
    kinds: dict[tuple[int, int], str] = {}
    while proc.poll() is None:
        for pid, role in [(proc.pid, "launcher"), *((c, "node") for c in children(proc.pid))]:
            for tid, cpu in thread_cpu(pid).items():
                last[(pid, tid)] = cpu
                kinds[(pid, tid)] = f"{role} {'main thread' if tid == pid else 'other threads'}"
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.args)} exited {proc.returncode}")  # type: ignore[arg-type]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals: dict[str, float] = defaultdict(float)
    for key, cpu in last.items():
        totals[kinds[key]] += cpu
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, dict(totals)


def training_alone(config: Path, nodes: int, steps: int = 200) -> float:
    """CPU seconds of node 0's training steps of one round, run alone in this process with
    one torch thread (the compute a round cannot do without)."""
    import copy

    import torch

    from dlactor.config import load_config
    from dlactor.launch.plan import make_plan, node_env

    torch.set_num_threads(1)
    plan = make_plan(load_config(config, [f"nodes={nodes}"]))
    trainer: Any = plan.config.training.build(node_env(plan, 0, copy.deepcopy(plan.model)))
    for _ in range(20):
        trainer.train_steps()
    start = time.thread_time()
    for _ in range(steps):
        trainer.train_steps()
    return (time.thread_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.toml")
    parser.add_argument("--rounds", type=int, default=200, help="rounds measured (after 40)")
    parser.add_argument("--nodes", type=int, default=16)
    args = parser.parse_args()
    config, n, rounds = args.config, args.nodes, args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        short, warm = launch(config, n, WARM, out / "a")
        long, threads = launch(config, n, WARM + rounds, out / "b")
        per_node_round = (long - short) / (rounds * n)
        threads = {kind: cpu - warm.get(kind, 0.0) for kind, cpu in threads.items()}
        profile_dir = out / "profile"
        launch(config, n, WARM + rounds, out / "c", {"DLACTOR_PROFILE_DIR": str(profile_dir)})
        stats = pstats.Stats(str(profile_dir / "process-0.prof"))
    alone = training_alone(config, n)

    print(f"# Where a node's CPU goes: {config.name}, {n} nodes\n")
    print(f"Measured {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} after the runs.\n")  # fmt: skip
    print(f"1. CPU per node-round (launcher and nodes, over {rounds} rounds, start-up left "
          f"out): **{per_node_round * 1e3:.2f} ms**; node 0's training steps of a round, "
          f"alone in one thread: {alone * 1e3:.2f} ms\n")  # fmt: skip
    print(f"2. By thread, over the same {rounds} rounds (the same two run lengths):\n")
    print("| threads | CPU s | ms per node-round |\n|---|---:|---:|")
    for kind, cpu in sorted(threads.items()):
        print(f"| {kind} | {cpu:.2f} | {cpu / (rounds * n) * 1e3:.3f} |")
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = stats.stats  # type: ignore[attr-defined]
    besides = besides_training(rows)
    loop_own = sum(besides.values())
    print(f"\n3. Node 0's loop thread under cProfile: {total:.2f} s of CPU, of which "
          f"{total - loop_own:.2f} s training and evaluation run on the loop (`Handoff`) and "
          f"{loop_own:.2f} s the rest; the rest's functions by their own time outside "
          "training (share of the rest, and µs per round):\n")  # fmt: skip
    print("| function | share | µs per round |\n|---|---:|---:|")
    top = sorted(besides.items(), key=lambda kv: kv[1], reverse=True)[:20]
    for (file, line, name), own in top:
        where = f"{Path(file).name}:{line} {name}" if line else name
        print(f"| `{where}` | {own / loop_own:.1%} | {own / (WARM + rounds) * 1e6:.0f} |")


#: The trainer's synchronous work, which runs on the loop when it is short (``Handoff``).
TRAINING = {"train_steps", "evaluate_now", "gradient_steps", "evaluate_model"}


def besides_training(rows: dict[Any, Any], passes: int = 50) -> dict[Any, float]:
    """Each function's own time outside training: its own time less the part of it spent in
    calls made from inside ``TRAINING``'s functions.

    cProfile records, for each function and each caller, the own and the cumulative time of
    the calls from that caller. What share of a function's activity is inside training is
    the cumulative-time-weighted share of its callers' (a thin wrapper called from both
    sides counts by the work under it, not by its own few microseconds); worked out by
    repeating that over every function until it settles (call cycles included). A
    function's own time from a caller then counts as inside training by that caller's
    share."""
    inside = {func: 1.0 if func[2] in TRAINING else 0.0 for func in rows}
    for _ in range(passes):
        changed = False
        for func, (_, _, _, cumtime, callers) in rows.items():
            if func[2] in TRAINING or cumtime <= 0:
                continue
            weighted = sum(
                entry[3] * inside[caller] for caller, entry in callers.items() if caller in rows
            )
            share = min(1.0, weighted / cumtime)
            if abs(share - inside[func]) > 1e-9:
                inside[func], changed = share, True
        if not changed:
            break
    out = {}
    for func, (_, _, tottime, _, callers) in rows.items():
        if func[2] in TRAINING:
            out[func] = 0.0
            continue
        from_training = sum(
            entry[2] * inside[caller] for caller, entry in callers.items() if caller in rows
        )
        out[func] = max(0.0, tottime - min(tottime, from_training))
    return out


if __name__ == "__main__":
    main()
