"""Benchmarks 3 and 4: real `dlactor launch` runs at 16 to 1024 nodes, their rounds and
evaluations. The same runs feed the memory and start-up sections (bench_memory.py,
bench_startup.py) and the round-overhead section (bench_overhead.py).

Each run is the CLI as a user types it, in a subprocess. While it runs, a sampler thread
here (sampler.py) follows the launcher and its children (the node processes): memory of the
machine, CPU time and creation time of every node, and PSS/USS of a subset of them.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launches import Started
from machine import CpuTimes, others_cpu
from procfs import MemInfo, boot_clock
from report import MIB, Section, Table, Verdict, ms
from sampler import ROLLUP_NICE, SAMPLER_NICE, Rollup, RunSampler, Tick

from dlactor.metrics.summary import load_node_records

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/quickstart.toml"
NODE_COUNTS = (16, 64, 256, 1024)
#: digits has 1,437 training samples: 2 shards per node cannot feed more than 718 nodes.
TRAIN_SAMPLES = 1437
#: Runs this large do 20 rounds instead of 40, to keep `make bench` near 10 minutes.
BIG_RUN_NODES, BIG_RUN_ROUNDS = 256, 20
#: Refuse to start a run unless this much memory per node (plus the guard) is available.
NEED_PER_NODE = 16 * MIB
DPY = {
    "start": "~20 s (launch to first round)",
    "round": "44-48",
    "pss": "~176",
    "eval": "~1 s",
}
#: Column header for the quoted figures.
DPY_HEADER = "decentralizepy, 16 nodes (quoted, not measured here)"
DPY_NOTE = (
    "The decentralizepy column quotes reference measurements (16 nodes, same MLP on digits, "
    "4-regular, full sharing, this machine kind); they were not measured by this script."
)


def overrides_for(nodes: int) -> tuple[str, ...]:
    """The `--set` overrides of a run at ``nodes`` nodes (besides ``nodes`` itself)."""
    out = []
    if nodes >= BIG_RUN_NODES:
        out.append(f"rounds={BIG_RUN_ROUNDS}")
    if 2 * nodes > TRAIN_SAMPLES:
        out.append("partition.kind=iid")
    return tuple(out)


@dataclass
class Watch:
    """What the sampler saw during one run."""

    ticks: list[Tick]
    rollups: list[Rollup]
    forks: list[float]  # wall-clock creation time of every node process, sorted
    niced: bool
    sampler_cpu_s: float


@dataclass
class Run(Started):
    """One finished `dlactor launch`: what it wrote, and what was measured around it."""

    nodes: int
    overrides: tuple[str, ...]
    t_command: float  # wall-clock time just before the command was started
    process_wall_s: float
    summary: dict[str, Any]
    manifest: dict[str, Any]
    records: dict[int, list[dict[str, Any]]]
    watch: Watch
    mem_before: MemInfo
    mem_after: MemInfo
    t_after: float  # when mem_after was read
    others_share: float  # other processes' CPU during the run, share of the machine
    steal_share: float  # CPU time the hypervisor stole meanwhile, share of the machine

    @property
    def rounds(self) -> int:
        return int(self.manifest["rounds"])

    @property
    def t_eval(self) -> list[float]:
        return [r["t_eval"] for rs in self.records.values() for r in rs if "t_eval" in r]

    @property
    def degree(self) -> float:
        return statistics.median(r["degree"] for rs in self.records.values() for r in rs)

    @property
    def bytes_ratio(self) -> float:
        expected = self.degree * self.summary["model_bytes"]
        return self.summary["bytes_sent_per_node_per_round"] / expected

    def plain_rounds(self) -> list[float]:
        """Every node's round durations (between consecutive `t_wall`), leaving out round 0
        (it starts at the barrier) and each round that follows an evaluation (its duration
        includes that evaluation)."""
        out = []
        for rs in self.records.values():
            for prev, cur in itertools.pairwise(rs):
                if "t_eval" not in prev:
                    out.append(cur["t_wall"] - prev["t_wall"])
        return out

    @property
    def plain_round_median(self) -> float | None:
        durations = self.plain_rounds()
        return statistics.median(durations) if durations else None


@dataclass(frozen=True)
class Failure:
    nodes: int
    reason: str


def dlactor_command() -> list[str]:
    exe = Path(sys.executable).parent.resolve() / "dlactor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dlactor"]


def launch_command(nodes: int, out: str, source: Path = REPO) -> list[str]:
    """The run's command; from another ``source`` tree (an earlier revision), that tree's
    package through ``python -m dlactor``, run in that tree."""
    sets = [x for o in (f"nodes={nodes}", *overrides_for(nodes)) for x in ("--set", o)]
    args = ["launch", CONFIG, *sets, "--out", out, "--no-progress"]
    command = dlactor_command() if source == REPO else [sys.executable, "-m", "dlactor"]
    return [*command, *args]


def shown_command(nodes: int, source: Path = REPO) -> str:
    """The command as it appears in BENCHMARKS.md (paths relative to the repository)."""
    cmd = launch_command(nodes, "<tmpdir>", source)
    exe = Path(cmd[0])
    if exe.is_absolute() and exe.is_relative_to(REPO):
        cmd[0] = str(exe.relative_to(REPO))
    return shlex.join(cmd).replace("'<tmpdir>'", "<tmpdir>")


def run_timeout_s(nodes: int) -> float:
    return 120.0 + 0.6 * nodes


def make_sampler(pid: int, nodes: int) -> RunSampler:
    """Small runs are the round-overhead runs: few PSS reads (8 nodes, ~70 ms of CPU) so as
    to take little from them, every 0.5 s at 16 nodes (whose rounds last 2 s in all) and
    every second at 64. Large runs: 16 nodes every 2 s."""
    small = nodes <= 64
    return RunSampler(
        pid,
        nodes,
        tick_s=0.2 if small else 0.5,
        rollup_every_s=0.5 if nodes <= 16 else 1.0 if small else 2.0,
        rollup_nodes=8 if small else 16,
    )


def launch(nodes: int, out: Path, source: Path = REPO) -> Run:
    """Run the quickstart config with ``nodes`` nodes into ``out``, watching it; with
    another ``source`` tree, that tree's dlactor runs it."""
    mem_before, cpu_before = MemInfo.now(), CpuTimes.now()
    t0 = time.time()
    boot_offset = t0 - boot_clock()
    proc = subprocess.Popen(
        launch_command(nodes, str(out), source),
        cwd=source,  # `python -m` imports the dlactor of the directory it runs in
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = make_sampler(proc.pid, nodes)
    sampler.start()
    timeout = run_timeout_s(nodes)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()  # the nodes die with it (PR_SET_PDEATHSIG)
        proc.communicate()
        raise RuntimeError(f"over {timeout:g} s") from exc
    finally:
        sampler.stop()
    wall = time.time() - t0
    if sampler.aborted:
        raise RuntimeError(f"aborted by the benchmark: {sampler.aborted}")
    if proc.returncode != 0:
        raise RuntimeError(f"exited with {proc.returncode}:\n{stderr[-3000:]}")
    time.sleep(1.0)  # let the kernel finish freeing the nodes' memory
    mem_after, cpu_after = MemInfo.now(), CpuTimes.now()
    others, steal = others_cpu(cpu_before, cpu_after)
    elapsed = time.time() - t0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    # The last ``nodes`` children created are the nodes: an import in the launcher may run a
    # short-lived subprocess first (at 16 nodes a tick once caught one 2 s before the forks).
    forks = sorted(start + boot_offset for start in sampler.starts.values())[-nodes:]
    watch = Watch(sampler.ticks, sampler.rollups, forks, all(sampler.niced), sampler.cpu_s)
    return Run(
        nodes=nodes,
        overrides=overrides_for(nodes),
        t_command=t0,
        process_wall_s=wall,
        summary=json.loads((run_dir / "summary.json").read_text()),
        manifest=json.loads((run_dir / "manifest.json").read_text()),
        records=load_node_records(run_dir),
        watch=watch,
        mem_before=mem_before,
        mem_after=mem_after,
        t_after=t0 + elapsed,
        others_share=others / (elapsed * cpu_count()),
        steal_share=steal / (elapsed * cpu_count()),
    )


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def raise_fd_limit(nodes: int) -> str | None:
    """A launcher holds ~2 descriptors per node (1024 nodes: ~2,100): raise this process's
    soft limit, which the launcher inherits, as far as the hard limit allows. Returns why a
    run of ``nodes`` nodes cannot be started, or None."""
    need = 4 * nodes + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        return f"the open-file limit ({soft}) is below the ~{need} descriptors needed"
    return None


def cannot_start(nodes: int) -> str | None:
    """Why a run of ``nodes`` nodes should not be started here now, or None."""
    available = MemInfo.now().available
    need = nodes * NEED_PER_NODE + (2 << 30)
    if available < need:
        return (
            f"only {available / MIB:,.0f} MiB available, {need / MIB:,.0f} MiB wanted "
            "(the machine is busy with other work)"
        )
    return raise_fd_limit(nodes)


def run_e2e(
    progress: Callable[[str], None],
    node_counts: Sequence[int] = NODE_COUNTS,
    source: Path = REPO,
    label: str = "e2e",
) -> tuple[list[Run], list[Failure]]:
    """One run per node count (by ``source``'s dlactor); a count that cannot run, or
    fails, is a Failure."""
    runs, failures = [], []
    for nodes in node_counts:
        progress(f"{label}: {shown_command(nodes, source)}")
        reason = cannot_start(nodes)
        if reason is None:
            try:
                with tempfile.TemporaryDirectory(prefix="dlactor-bench-") as tmp:
                    run = launch(nodes, Path(tmp), source)
            except RuntimeError as exc:
                reason = str(exc)
        if reason is not None:
            progress(f"{label}: {nodes} nodes: not measured: {reason}")
            failures.append(Failure(nodes, reason.splitlines()[0]))
            continue
        progress(f"{label}: {nodes} nodes: {_progress_line(run)}")
        runs.append(run)
    return runs, failures


def _progress_line(run: Run) -> str:
    s = run.summary
    drop = run.mem_before.available - min(t.meminfo.available for t in run.watch.ticks)
    return (
        f"{s['status']}, {run.process_wall_s:.1f} s in all, "
        f"{_s(run.command_to_barrier_s)} s to the barrier, "
        f"median round {s['round_s_median'] * 1e3:.1f} ms, "
        f"MemAvailable -{drop / MIB:,.0f} MiB, {len(run.watch.rollups)} PSS samples"
    )


# ---------------------------------------------------------------- the report

BYTES_TARGET = 1.02
EVAL_TARGET_S = 0.1


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


ROWS = [
    ("`--set` overrides besides `nodes`", "", ""),
    ("status, rounds completed", "", ""),
    ("process wall time, command to exit (s)", "", ""),
    ("`wall_s`: start barrier to end (s)", "", ""),
    ("`round_s_median` (ms)", "", DPY["round"]),
    ("median round without an evaluation in it (ms)", "", ""),
    ("`t_train_median` (ms)", "", ""),
    ("`bytes_sent_per_node_per_round`", "", ""),
    ("degree x `model_bytes` (manifest.json)", "", ""),
    ("ratio of the two", f"<= {BYTES_TARGET}", ""),
    ("final `test_acc_mean`", "", ""),
    (
        "other processes' CPU during the run; stolen by the hypervisor (shares of the machine)",
        "",
        "",
    ),
    ("the benchmark's sampler: CPU used during the run (s)", "", ""),
]


def _values(r: Run) -> list[str]:
    s, model_bytes = r.summary, r.manifest["model_bytes"]
    return [
        " ".join(f"`{o}`" for o in r.overrides) or "-",
        f"{s['status']}, {s['rounds']}",
        _s(r.process_wall_s),
        _s(s["wall_s"]),
        ms(s["round_s_median"], 1),
        ms(r.plain_round_median, 1),
        ms(s["t_train_median"], 1),
        f"{s['bytes_sent_per_node_per_round']:,.1f}",
        f"{r.degree:g} x {model_bytes:,} = {r.degree * model_bytes:,.0f}",
        f"{r.bytes_ratio:.4f}",
        _acc(s["final"]["test_acc_mean"]),
        f"{r.others_share:.0%}; {r.steal_share:.0%}",
        f"{r.watch.sampler_cpu_s:.2f}",
    ]


def _verdicts(runs: list[Run]) -> list[Verdict]:
    return [
        Verdict(
            f"bytes sent per node per round <= {BYTES_TARGET} x degree x model bytes "
            f"at {r.nodes} nodes",
            f"{r.bytes_ratio:.4f}",
            r.bytes_ratio <= BYTES_TARGET,
        )
        for r in runs
    ]


def e2e_section(runs: list[Run], failures: list[Failure]) -> tuple[Section, list[Verdict]]:
    table = Table(["figure", *(f"{r.nodes} nodes" for r in runs), "target", DPY_HEADER])
    columns = [_values(r) for r in runs]
    for i, (label, target, reference) in enumerate(ROWS):
        table.add(label, *(values[i] for values in columns), target, reference)
    verdicts = _verdicts(runs)
    section = Section("3. End-to-end runs: `dlactor launch`", _e2e_intro(runs), [table])
    section.notes += _e2e_notes(runs)
    section.notes += [f"{f.nodes} nodes: not measured: {f.reason}" for f in failures]
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    return section, verdicts


def _e2e_intro(runs: list[Run]) -> str:
    commands = "\n".join(shown_command(r.nodes) for r in runs)
    niced = all(r.watch.niced for r in runs)
    priority = (
        f"at nice {SAMPLER_NICE}, its PSS reads at nice {ROLLUP_NICE}"
        if niced
        else "at normal priority (raising it failed)"
    )
    return (
        "The quickstart experiment (D-PSGD, MLP on digits, random 4-regular graph, full "
        "sharing, 2-shard non-IID, 40 rounds, an evaluation every 5), each run once as a "
        f"subprocess. From {BIG_RUN_NODES} nodes on, 20 rounds (to keep the benchmark short); "
        f"beyond {TRAIN_SAMPLES // 2} nodes an IID partition, as digits' {TRAIN_SAMPLES:,} "
        "training samples cannot make 2 shards per node:\n\n"
        f"```\n{commands}\n```\n\n"
        "Figures named in `code` come from the run's summary.json / manifest.json. "
        "`round_s_median` is over every node's intervals between consecutive rounds' "
        "`t_wall`, so one round in five includes an evaluation; the next row leaves those "
        "out, and round 0 (which starts at the barrier). While each run goes on, a sampler "
        f"of the benchmark ({priority}) follows the launcher and every node process "
        "through /proc (sections 5-7)."
    )


def _e2e_notes(runs: list[Run]) -> list[str]:
    notes = []
    for r in runs:
        per_msg = r.summary["bytes_sent_per_node_per_round"] / r.degree - r.manifest["model_bytes"]
        notes.append(
            f"{r.nodes} nodes: on average {per_msg:,.1f} bytes per message beyond the model "
            "(length prefix, msgpack header, padding, and round 0's hello frames)."
        )
    return notes


def eval_section(runs: list[Run]) -> tuple[Section, list[Verdict]]:
    table = Table(["figure", *(f"{r.nodes} nodes" for r in runs), "target", DPY_HEADER])
    t_evals = [sorted(r.t_eval) for r in runs]
    table.add("evaluations recorded", *(f"{len(t):,}" for t in t_evals), "", "")
    for label, pick in (("median", statistics.median), ("90th percentile", _p90), ("max", max)):
        values = (ms(pick(t), 1) if t else "-" for t in t_evals)
        target = f"< {EVAL_TARGET_S * 1e3:g} ms at 16 nodes" if label == "median" else ""
        table.add(f"`t_eval` {label} (ms)", *values, target, DPY["eval"] if target else "")
    verdicts = [
        Verdict(
            "evaluation at 16 nodes: median `t_eval` < 100 ms",
            f"{ms(statistics.median(r.t_eval), 1)} ms",
            statistics.median(r.t_eval) < EVAL_TARGET_S,
        )
        for r in runs
        if r.nodes == 16 and r.t_eval
    ]
    intro = (
        "From the same runs: every node evaluates on the test set after rounds 5, 10, ... "
        "and the last, and records how long that took as `t_eval` in "
        "runs/<run>/nodes/<id>.jsonl. The figures are over every evaluation of every node."
    )
    section = Section("4. Evaluation", intro, [table])
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    return section, verdicts


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
