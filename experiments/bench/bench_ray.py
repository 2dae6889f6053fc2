"""Section 11: Ray at the density of one machine. The quickstart at 16 and 64 nodes under the
local launcher, under Ray with a worker process per node (``placement = "workers"``) and
under Ray with one agent per machine forking its nodes (``placement = "agents"``, the
default): start-up and PSS per node.

Each run is ``dlactor launch configs/quickstart.toml --set nodes=N --set rounds=R`` (R = 150
at 16 nodes, 40 at 64: several of the PSS sampler's 1 s readings at steady state; plus
``launcher.kind=ray`` and the placement), on a local Ray cluster that the launcher starts
itself (one machine: this one). TLS is on under Ray by default and off for the local
launcher on loopback, so the local launcher runs twice, as it is by default and with
``security.tls=on``: the targets compare the agents with the latter, like with like.
Start-up is the time from just before the command starts to the start barrier (the
manifest's start plus the summary's ``launch_to_barrier_s``), less the local Ray cluster's
own start (the summary's ``cluster_start_s``) when the launcher starts one. It is measured
from the command because that is where both launchers begin the same work: the local
launcher imports torch and torch._dynamo and makes the plan before its own clock
(``launch_to_barrier_s``) starts, while an agent does the same imports as a fresh Ray
worker, beside the driver's plan, and what the plan does not hide falls after that clock's
start (docs/decisions.md). ``launch_to_barrier_s`` is shown too. The agents run twice: on
the cluster the launcher starts, and joining one that `ray start --head` started (a CPU
per core, left 5 s to settle) before the command, from which nothing is left out. PSS per
node is the summary's ``peak_pss_bytes`` (the launcher's own sampler: the launcher, the
nodes on this machine and, under agents, the agent) over the nodes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from launches import quickstart_run
from report import Section, Table, Verdict, mib

from dlactor.testing import ray_environment, ray_head

NODE_COUNTS = (16, 64)
LOCAL, LOCAL_TLS = "local", "local, TLS on"
WORKERS, AGENTS = "Ray, a worker per node", "Ray, an agent per machine"
RUNNING = "Ray, an agent per machine, on a cluster started beforehand"
MODES: dict[str, tuple[str, ...]] = {
    LOCAL: (),
    # TLS is on by default under Ray (security.tls = "auto": nodes may be on other
    # machines) and off for the local launcher on loopback: the agents are compared with
    # a local run that has it too, so that the ratio is what placement costs.
    LOCAL_TLS: ("security.tls=on",),
    WORKERS: ("launcher.kind=ray", "launcher.placement=workers"),
    AGENTS: ("launcher.kind=ray", "launcher.placement=agents"),
    # The same, joining a cluster that `ray start --head` started before the command (its
    # address is added): nothing is left out of its start-up.
    RUNNING: ("launcher.kind=ray", "launcher.placement=agents"),
}
#: How long a cluster started beforehand is left before the command: as a user's cluster,
#: its own processes have finished starting.
SETTLE_S = 5.0
#: Rounds by node count: ~5 s of rounds or more, so that the peak of the launcher's 1 s PSS
#: readings is taken at steady state (30 rounds of 16 nodes last ~1.5 s: one or two readings).
ROUNDS = {16: 150, 64: 40}
#: The targets: the agents' memory per node and start-up against the local launcher's.
MEMORY_TARGET, STARTUP_TARGET = 1.5, 2.0
#: The agents' runs whose start-up is held to the target: the mode, how it is measured, and
#: where it ran (for the notes).
STARTUPS = (
    (AGENTS, "(the command to the barrier; the cluster it starts left out)", ""),
    (
        RUNNING,
        "on a cluster started beforehand (the command to the barrier)",
        " on a running cluster",
    ),
)


@dataclass(frozen=True)
class RayRun:
    mode: str
    nodes: int
    command_s: float
    startup_s: float | None  # the command to the barrier, less a local cluster's start
    launcher_s: float | None  # launch_to_barrier_s: the launcher's clock to the barrier
    pss_per_node: float | None
    status: str
    waited_s: float | None = None  # agents: the launcher's wait for them to be ready
    cluster_s: float | None = None  # Ray: the local cluster's own start, left out


def run_ray(
    progress: Callable[[str], None], node_counts: tuple[int, ...] = NODE_COUNTS
) -> list[RayRun]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="dlactor-bench-ray-") as tmp:
        for nodes in node_counts:
            rounds = f"rounds={ROUNDS.get(nodes, 40)}"
            for mode, sets in MODES.items():
                progress(f"ray: {mode}, {nodes} nodes")
                with _cluster(mode) as (joined, env):
                    out = Path(tmp) / "out"
                    run = quickstart_run(out, f"nodes={nodes}", rounds, *sets, *joined, env=env)
                summary = run.summary
                pss = summary.get("peak_pss_bytes") or None
                cluster = summary.get("cluster_start_s")
                whole = run.command_to_barrier_s
                runs.append(
                    RayRun(
                        mode,
                        nodes,
                        run.command_s,
                        None if whole is None else whole - (cluster or 0.0),
                        summary.get("launch_to_barrier_s"),
                        None if pss is None else pss / nodes,
                        summary.get("status", "?"),
                        summary.get("agents_waited_s"),
                        cluster,
                    )
                )
                progress(
                    f"ray: {mode}, {nodes} nodes: {summary.get('status')}, "
                    f"{run.command_s:.1f} s in all, start-up {_s(runs[-1].startup_s)} s "
                    f"(launcher's clock {_s(runs[-1].launcher_s)} s), PSS per node "
                    f"{mib(runs[-1].pss_per_node)} MiB"
                )
    return runs


@contextlib.contextmanager
def _cluster(mode: str) -> Iterator[tuple[tuple[str, ...], dict[str, str] | None]]:
    """For ``RUNNING``: a one-machine Ray cluster started before the command (`ray start
    --head`, a CPU per core, token authentication), left ``SETTLE_S``; the override that
    joins it and the environment with its token. Nothing for the other modes."""
    if mode != RUNNING:
        yield (), None
        return
    ray_tmp = tempfile.mkdtemp(prefix="dlb-", dir="/tmp")  # short: Ray's sockets live there
    env = ray_environment(ray_tmp)
    try:
        with ray_head(env, cpus=os.cpu_count() or 1) as (address, _):
            time.sleep(SETTLE_S)
            yield (f"launcher.address={address}",), env
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_section(runs: list[RayRun]) -> tuple[Section, list[Verdict]]:
    counts = sorted({r.nodes for r in runs})
    by = {(r.mode, r.nodes): r for r in runs}
    table = Table(["figure", *(f"{mode}, {n} nodes" for n in counts for mode in MODES)])

    def row(label: str, cell: Callable[[RayRun], str]) -> None:
        table.add(
            label, *(cell(by[(m, n)]) if (m, n) in by else "-" for n in counts for m in MODES)
        )

    row("status", lambda r: r.status)
    row(
        "**start-up**: the command to the start barrier, less a Ray cluster's start if the "
        "launcher started it (s)",
        lambda r: _s(r.startup_s),
    )
    row(
        "of it, on the launcher's clock (`launch_to_barrier_s`): forking the nodes or asking "
        "Ray for them, to the barrier (s)",
        lambda r: _s(r.launcher_s),
    )
    row(
        "of that, the launcher waiting for the agents to be ready (s)",
        lambda r: _s(r.waited_s) if r.mode in (AGENTS, RUNNING) else "",
    )
    row(
        "left out: the local Ray cluster's own start (`cluster_start_s`, s)",
        lambda r: _s(r.cluster_s) if r.cluster_s is not None else "",
    )
    row(
        "whole command, a Ray cluster's start and stop included if the launcher started it (s)",
        lambda r: f"{r.command_s:.1f}",
    )
    row("**PSS per node**: peak PSS of the run / nodes (MiB)", lambda r: mib(r.pss_per_node))
    verdicts, notes = [], []
    for n in counts:
        a, loc, plain = by.get((AGENTS, n)), by.get((LOCAL_TLS, n)), by.get((LOCAL, n))
        if a is None or loc is None:
            continue
        checks = [("PSS per node", a.pss_per_node, loc.pss_per_node, MEMORY_TARGET)]
        added = []
        for mode, how, where in STARTUPS:
            r = by.get((mode, n))
            if r is not None:
                checks.append((f"start-up {how}", r.startup_s, loc.startup_s, STARTUP_TARGET))
                added.append(f"{_less(r.startup_s, loc.startup_s)} s{where}")
        for what, mine, theirs, target in checks:
            ratio = _ratio(mine, theirs)
            shown = "-" if ratio is None else f"{ratio:.2f}x"
            met = None if ratio is None else ratio <= target
            goal = (
                f"Ray agents' {what} within {target}x the local launcher's at {n} nodes "
                "(both with TLS)"
            )
            verdicts.append(Verdict(goal, shown, met))
        notes.append(
            f"{n} nodes: the agents add {' and '.join(added)} to the local launcher's start-up "
            "with TLS."
        )
        w = by.get((WORKERS, n))
        if w is not None:
            notes.append(
                f"{n} nodes: per node, a Ray worker took {mib(w.pss_per_node)} MiB of PSS and an "
                f"agent's forked node {mib(a.pss_per_node)} MiB "
                f"({_times(w.pss_per_node, a.pss_per_node)} less); start-up "
                f"{_s(w.startup_s)} s against {_s(a.startup_s)} s "
                f"(local with TLS: {_s(loc.startup_s)} s, {mib(loc.pss_per_node)} MiB)."
            )
        notes.append(
            f"{n} nodes, on the launcher's clock alone (`launch_to_barrier_s`), which starts "
            "after the local launcher's imports and plan but runs through whatever of an "
            f"agent's own imports the driver's plan did not hide: the agents took "
            f"{_times(a.launcher_s, loc.launcher_s)} the local launcher's (with TLS)."
        )
        if plain is not None:
            notes.append(
                f"{n} nodes, against the local launcher as it runs by default (no TLS on "
                f"loopback): start-up {_times(a.startup_s, plain.startup_s)}, PSS per node "
                f"{_times(a.pss_per_node, plain.pss_per_node)}."
            )
    intro = (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip()
    return Section("11. Ray at the density of one machine", intro, [table], notes), verdicts


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _less(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:.2f}"


def _times(a: float | None, b: float | None) -> str:
    ratio = _ratio(a, b)
    return "-" if ratio is None else f"{ratio:.1f}x"
