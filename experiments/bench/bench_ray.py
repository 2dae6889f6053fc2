"""Section 11: Ray at the density of one machine. The quickstart at 16 and 64 nodes under the
local launcher, under Ray with a worker process per node (``placement = "workers"``) and
under Ray with one agent per machine forking its nodes (``placement = "agents"``, the
default): start-up and PSS per node.

Each run is ``dlactor launch configs/quickstart.toml --set nodes=N --set rounds=30`` (plus
``launcher.kind=ray`` and the placement), on a local Ray cluster that the launcher starts
itself (one machine: this one). TLS is on under Ray by default and off for the local
launcher on loopback, so the local launcher runs twice, as it is by default and with
``security.tls=on``: the targets compare the agents with the latter, like with like.
Start-up is the summary's ``launch_to_barrier_s``: from just before the launcher forks
the nodes or asks Ray for their actors (under agents: for their keys; the agents were
placed as the launcher connected), to the start barrier (a Ray cluster's own start,
before it, is in the whole command's time). PSS per node is the summary's
``peak_pss_bytes`` (the launcher's own sampler: the launcher, the nodes on this machine
and, under agents, the agent) over the nodes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launches import quickstart_summary
from report import Section, Table, Verdict, mib

NODE_COUNTS = (16, 64)
LOCAL, LOCAL_TLS = "local", "local, TLS on"
WORKERS, AGENTS = "Ray, a worker per node", "Ray, an agent per machine"
MODES: dict[str, tuple[str, ...]] = {
    LOCAL: (),
    # TLS is on by default under Ray (security.tls = "auto": nodes may be on other
    # machines) and off for the local launcher on loopback: the agents are compared with
    # a local run that has it too, so that the ratio is what placement costs.
    LOCAL_TLS: ("security.tls=on",),
    WORKERS: ("launcher.kind=ray", "launcher.placement=workers"),
    AGENTS: ("launcher.kind=ray", "launcher.placement=agents"),
}
ROUNDS = 30  # a few of the sampler's 1 s PSS readings at steady state, even at 16 nodes
#: The targets: the agents' memory per node and start-up against the local launcher's.
MEMORY_TARGET, STARTUP_TARGET = 1.5, 2.0


@dataclass(frozen=True)
class RayRun:
    mode: str
    nodes: int
    command_s: float
    startup_s: float | None
    pss_per_node: float | None
    status: str
    waited_s: float | None = None  # agents: the start-up's wait for them to be ready


def run_ray(
    progress: Callable[[str], None], node_counts: tuple[int, ...] = NODE_COUNTS
) -> list[RayRun]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="dlactor-bench-ray-") as tmp:
        for nodes in node_counts:
            for mode, sets in MODES.items():
                progress(f"ray: {mode}, {nodes} nodes")
                started = time.perf_counter()
                summary = quickstart_summary(
                    Path(tmp) / "out", f"nodes={nodes}", f"rounds={ROUNDS}", *sets
                )
                took = time.perf_counter() - started
                pss = summary.get("peak_pss_bytes") or None
                per_node = None if pss is None else pss / nodes
                startup = summary.get("launch_to_barrier_s")
                runs.append(
                    RayRun(
                        mode,
                        nodes,
                        took,
                        startup,
                        per_node,
                        summary.get("status", "?"),
                        summary.get("agents_waited_s"),
                    )
                )
                progress(
                    f"ray: {mode}, {nodes} nodes: {summary.get('status')}, {took:.1f} s in all, "
                    f"start-up {runs[-1].startup_s or 0:.2f} s, PSS per node "
                    f"{mib(runs[-1].pss_per_node)} MiB"
                )
    return runs


def ray_section(runs: list[RayRun]) -> tuple[Section, list[Verdict]]:
    counts = sorted({r.nodes for r in runs})
    by = {(r.mode, r.nodes): r for r in runs}
    table = Table(["figure", *(f"{mode}, {n} nodes" for n in counts for mode in MODES)])

    def row(label: str, cell: Callable[[RayRun], str]) -> None:
        table.add(
            label, *(cell(by[(m, n)]) if (m, n) in by else "-" for n in counts for m in MODES)
        )

    row("status", lambda r: r.status)
    row("**start-up**: launch to start barrier (s)", lambda r: _s(r.startup_s))
    row(
        "of it, the launcher waiting for the agents to be ready (s)",
        lambda r: _s(r.waited_s) if r.mode == AGENTS else "",
    )
    row(
        "whole command, a local Ray cluster's start and stop included (s)",
        lambda r: f"{r.command_s:.1f}",
    )
    row("**PSS per node**: peak PSS of the run / nodes (MiB)", lambda r: mib(r.pss_per_node))
    verdicts, notes = [], []
    for n in counts:
        a, loc, plain = by.get((AGENTS, n)), by.get((LOCAL_TLS, n)), by.get((LOCAL, n))
        if a is None or loc is None:
            continue
        memory = _ratio(a.pss_per_node, loc.pss_per_node)
        startup = _ratio(a.startup_s, loc.startup_s)
        for what, ratio, target in [
            ("PSS per node", memory, MEMORY_TARGET),
            ("start-up", startup, STARTUP_TARGET),
        ]:
            shown = "-" if ratio is None else f"{ratio:.2f}x"
            met = None if ratio is None else ratio <= target
            goal = (
                f"Ray agents' {what} within {target}x the local launcher's at {n} nodes "
                "(both with TLS)"
            )
            verdicts.append(Verdict(goal, shown, met))
        w = by.get((WORKERS, n))
        if w is not None:
            notes.append(
                f"{n} nodes: per node, a Ray worker took {mib(w.pss_per_node)} MiB of PSS and an "
                f"agent's forked node {mib(a.pss_per_node)} MiB "
                f"({_times(w.pss_per_node, a.pss_per_node)} less); start-up "
                f"{_s(w.startup_s)} s against {_s(a.startup_s)} s "
                f"(local with TLS: {_s(loc.startup_s)} s, {mib(loc.pss_per_node)} MiB)."
            )
        if plain is not None:
            notes.append(
                f"{n} nodes, against the local launcher as it runs by default (no TLS on "
                f"loopback): start-up {_times(a.startup_s, plain.startup_s)}, PSS per node "
                f"{_times(a.pss_per_node, plain.pss_per_node)}."
            )
    intro = (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip()
    return Section("11. Ray at the density of one machine", intro, [table], notes), verdicts


def _command(run: RayRun) -> str:
    return f"{run.command_s:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _times(a: float | None, b: float | None) -> str:
    ratio = _ratio(a, b)
    return "-" if ratio is None else f"{ratio:.1f}x"
