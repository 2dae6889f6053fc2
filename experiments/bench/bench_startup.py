"""Benchmark 7: start-up, from the command to the start barrier, and where the time goes.

From the end-to-end runs. The kernel records when each node process was created
(/proc/<pid>/stat, to 10 ms), which splits the start-up into: the command until the first
fork (interpreter, imports, config, `make_plan`), the fork loop, and the last fork until the
barrier (the nodes' own initialisation and registration: the launcher's supervisor starts
accepting them only after the last fork). The sampler's CPU readings of the launcher and of
every node say how much of that was computing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench_e2e import DPY, DPY_HEADER, Failure, Run, cpu_count
from report import Section, Verdict, figure_table, mib, ms
from sampler import value_at

START_TARGET_S, START_TARGET_NODES = 5.0, 64
START_NODES = (16, 64, 256, 1024)
START_TARGET_TEXT = f"{START_TARGET_NODES} nodes: < {START_TARGET_S:g} s"


@dataclass(frozen=True)
class Startup:
    nodes: int
    command_to_barrier: float | None
    launch_to_barrier: float | None
    to_first_fork: float | None
    fork_loop: float | None
    after_forks: float | None  # last fork to barrier
    launcher_cpu_forking: float | None  # launcher CPU, first to last fork
    forker_run: float | None  # the launcher's main thread in the fork loop: on a CPU
    forker_wait: float | None  # the same: runnable, waiting for a CPU
    nodes_cpu_at_barrier: float | None  # all nodes' CPU from creation to the barrier
    nodes_faults_at_barrier: float | None  # all nodes' minor page faults, the same span
    launcher_cpu_after_forks: float | None  # launcher CPU, last fork to barrier
    template_anon: int | None  # the launcher's anonymous memory, last sample before forking

    @property
    def per_fork(self) -> float | None:
        return None if self.fork_loop is None else self.fork_loop / max(1, self.nodes - 1)

    @property
    def busy(self) -> float | None:
        """Share of the cores busy with this run from the first fork to the barrier."""
        parts = (
            self.fork_loop,
            self.after_forks,
            self.launcher_cpu_forking,
            self.nodes_cpu_at_barrier,
            self.launcher_cpu_after_forks,
        )
        if any(p is None for p in parts):
            return None
        span = (self.fork_loop or 0) + (self.after_forks or 0)
        cpu = (self.launcher_cpu_forking or 0) + (self.nodes_cpu_at_barrier or 0)
        cpu += self.launcher_cpu_after_forks or 0
        return cpu / (span * cpu_count()) if span > 0 else None

    @property
    def cpu_per_node(self) -> float | None:
        """CPU seconds the run spent per node from the first fork to the barrier: the
        launcher's (forking it, then its handshake and registration) and the node's own."""
        parts = (
            self.launcher_cpu_forking,
            self.launcher_cpu_after_forks,
            self.nodes_cpu_at_barrier,
        )
        if any(p is None for p in parts):
            return None
        return sum(p or 0.0 for p in parts) / self.nodes

    @property
    def cpu_bound(self) -> float | None:
        """How long first fork to barrier would take if CPU time were all that bounded it:
        every node's start-up CPU spread evenly over the cores."""
        per_node = self.cpu_per_node
        return None if per_node is None else per_node * self.nodes / cpu_count()


def startup_of(run: Run) -> Startup:
    forks, ticks, barrier = run.watch.forks, run.watch.ticks, run.barrier_at
    first, last = (forks[0], forks[-1]) if forks else (None, None)

    def launcher_between(
        a: float | None, b: float | None, field: str = "launcher_cpu_s"
    ) -> float | None:
        if a is None or b is None:
            return None
        va, vb = value_at(ticks, a, field), value_at(ticks, b, field)
        return None if va is None or vb is None else vb - va

    return Startup(
        nodes=run.nodes,
        command_to_barrier=run.command_to_barrier_s,
        launch_to_barrier=run.summary.get("launch_to_barrier_s"),
        to_first_fork=None if first is None else first - run.t_command,
        fork_loop=None if first is None or last is None else last - first,
        after_forks=None if last is None or barrier is None else barrier - last,
        launcher_cpu_forking=launcher_between(first, last),
        forker_run=launcher_between(first, last, "launcher_run_s"),
        forker_wait=launcher_between(first, last, "launcher_wait_s"),
        nodes_cpu_at_barrier=None if barrier is None else value_at(ticks, barrier, "nodes_cpu_s"),
        nodes_faults_at_barrier=None
        if barrier is None
        else value_at(ticks, barrier, "nodes_minor_faults"),
        launcher_cpu_after_forks=launcher_between(last, barrier),
        template_anon=_template_anon(run),
    )


def _template_anon(run: Run) -> int | None:
    """What fork() copies page-table entries for: the launcher's anonymous memory."""
    forks = run.watch.forks
    early = [r for r in run.watch.rollups if forks and r.t1 < forks[0]]
    return early[-1].launcher.pss_anon if early else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _per_node(value: float | None, nodes: int) -> str:
    return ms(None if value is None else value / nodes, 1)


def _forker(s: Startup) -> str:
    if s.forker_run is None or s.forker_wait is None or s.fork_loop is None:
        return "-"
    n = max(1, s.nodes - 1)
    rest = s.fork_loop - s.forker_run - s.forker_wait
    return " / ".join(ms(x / n, 1) for x in (s.forker_run, s.forker_wait, rest))


ROWS: list[tuple[str, Callable[[Startup], str], str, str]] = [
    (
        "**command to start barrier**, i.e. to the first round (s)",
        lambda s: _s(s.command_to_barrier),
        START_TARGET_TEXT,
        DPY["start"],
    ),
    (
        "**`launch_to_barrier_s`**: the launcher's clock, forking the nodes to the barrier (s)",
        lambda s: _s(s.launch_to_barrier),
        START_TARGET_TEXT,
        "",
    ),
    (
        "command to the first fork: interpreter, imports, config, `make_plan` (s)",
        lambda s: _s(s.to_first_fork),
        "",
        "",
    ),
    ("first fork to last fork (s)", lambda s: _s(s.fork_loop), "", ""),
    ("  per node (ms)", lambda s: ms(s.per_fork, 1), "", ""),
    (
        "  the launcher's anonymous memory, whose page tables each fork copies (MiB)",
        lambda s: mib(s.template_anon, 0),
        "",
        "",
    ),
    (
        "  launcher CPU in the fork loop, per node (ms)",
        lambda s: _per_node(s.launcher_cpu_forking, s.nodes),
        "",
        "",
    ),
    (
        "  the launcher's forking thread, per node: on a CPU / waiting for a CPU / neither (ms)",
        _forker,
        "",
        "",
    ),
    ("last fork to start barrier (s)", lambda s: _s(s.after_forks), "", ""),
    (
        "node processes' CPU from their fork to the barrier, per node (ms)",
        lambda s: _per_node(s.nodes_cpu_at_barrier, s.nodes),
        "",
        "",
    ),
    (
        "  their minor page faults from fork to barrier, per node (pages copied on write "
        "or first touched)",
        lambda s: (
            "-"
            if s.nodes_faults_at_barrier is None
            else f"{s.nodes_faults_at_barrier / s.nodes:,.0f}"
        ),
        "",
        "",
    ),
    (
        "launcher CPU from the last fork to the barrier, per node (ms)",
        lambda s: _per_node(s.launcher_cpu_after_forks, s.nodes),
        "",
        "",
    ),
    (
        "CPU busy with the run, first fork to barrier (share of the cores)",
        lambda s: "-" if s.busy is None else f"{s.busy:.0%}",
        "",
        "",
    ),
    (
        "**CPU per node started**: the launcher's (fork, handshake) and the node's own (ms)",
        lambda s: ms(s.cpu_per_node, 1),
        "",
        "",
    ),
    (
        f"  x nodes / {cpu_count()} cores: first fork to barrier if only CPU bounded it (s)",
        lambda s: _s(s.cpu_bound),
        "",
        "",
    ),
]


def startup_section(runs: list[Run], failures: list[Failure]) -> tuple[Section, list[Verdict]]:
    starts = [startup_of(r) for r in runs if r.nodes in START_NODES]
    table = figure_table(starts, lambda s: s.nodes, ROWS, DPY_HEADER)
    verdicts = [v for s in starts if s.nodes == START_TARGET_NODES for v in _verdicts(s)]
    verdicts += [
        Verdict(f"{START_TARGET_TEXT} to the start barrier", f"not measured: {f.reason}", None)
        for f in failures
        if f.nodes == START_TARGET_NODES
    ]
    section = Section("7. Start-up: command to start barrier", _INTRO, [table])
    section.notes += [_note(s) for s in starts if s.busy is not None]
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    return section, verdicts


def _verdicts(s: Startup) -> list[Verdict]:
    out = []
    for what, value in (
        ("forking the nodes to start barrier", s.launch_to_barrier),
        ("command to start barrier", s.command_to_barrier),
    ):
        met = None if value is None else value < START_TARGET_S
        limit = "" if met is not False else _limit(s)
        target = f"{START_TARGET_NODES} nodes start in < {START_TARGET_S:g} s ({what})"
        out.append(Verdict(target, f"{_s(value)} s", met, limit))
    return out


def _limit(s: Startup) -> str:
    return (
        f"{_s(s.to_first_fork)} s before the first fork (interpreter, imports, data, "
        f"`make_plan`), then {_s(s.fork_loop)} s of forking ({ms(s.per_fork, 1)} ms per node), "
        f"then {_s(s.after_forks)} s to the barrier"
    )


def _note(s: Startup) -> str:
    child = None if s.nodes_cpu_at_barrier is None else s.nodes_cpu_at_barrier / cpu_count()
    return (
        f"{s.nodes} nodes: of {_s(s.command_to_barrier)} s, {_s(s.to_first_fork)} s come before "
        f"the first fork, {_s(s.fork_loop)} s are the fork loop ({ms(s.per_fork, 1)} ms per "
        f"node, {_per_node(s.launcher_cpu_forking, s.nodes)} ms of it the launcher's CPU), "
        f"and {_s(s.after_forks)} s pass from the last fork to the barrier. The nodes' own "
        f"start-up took {_per_node(s.nodes_cpu_at_barrier, s.nodes)} ms of CPU each, "
        f"{_s(child)} s of both cores in all; the cores were {s.busy:.0%} busy with the run "
        f"from the first fork to the barrier. All in, starting a node took "
        f"{ms(s.cpu_per_node, 1)} ms of CPU: at that, {s.nodes} nodes on {cpu_count()} cores "
        f"need {_s(s.cpu_bound)} s from first fork to barrier, against "
        f"{_s(_span(s))} s measured."
    )


def _span(s: Startup) -> float | None:
    if s.fork_loop is None or s.after_forks is None:
        return None
    return s.fork_loop + s.after_forks


_INTRO = (
    "Target: launch to start barrier for 64, 256 and 1024 nodes; 64 nodes in under 5 s. "
    "From the runs of section 3.\n\n"
    "Command to start barrier: from just before the benchmark starts the command to the "
    "barrier's wall-clock time (summary.json's `launch_to_barrier_s` after manifest.json's "
    "`start`). `launch_to_barrier_s` is the launcher's own figure, from just before it forks "
    "(after imports, config and `make_plan`) to the barrier. The fork times are the node "
    "processes' creation times as the kernel records them (/proc/<pid>/stat, 10 ms "
    "resolution); CPU times are the sampler's readings at each tick, interpolated to those "
    "moments: the launcher's /proc/<pid>/stat, and every node thread's "
    "/proc/<pid>/task/<tid>/schedstat (to the nanosecond: a node starts in a few ms, which "
    "stat's 10 ms ticks truncate to zero). The launcher's forking "
    "(main) thread is also read from /proc/<pid>/schedstat: time on a CPU, time runnable but "
    "waiting for one, and the rest of the fork loop's wall time, when it was neither "
    "(sleeping or blocked)."
)
