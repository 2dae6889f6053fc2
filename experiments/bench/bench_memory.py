"""Benchmark 6: memory per node and for the whole run, from the end-to-end runs.

Two independent measures. PSS (smaps_rollup) of the launcher and of a fixed random subset
of nodes, read by the sampler, gives what a node process holds; the whole run's PSS is
extrapolated from the subset. /proc/meminfo's MemAvailable, read at every tick, gives what
the machine gave the run all in: every process, plus kernel memory that no process's PSS
counts (page tables, kernel stacks, socket and other slab objects).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench_e2e import DPY, DPY_HEADER, Failure, Run
from procfs import MemInfo
from report import MIB, Section, Verdict, figure_table, mib
from sampler import GUARD_BYTES, ROLLUP_NICE, Rollup, Tick

PSS_TARGET = 20e6  # bytes: "<= 20 MB PSS per node"
PSS_TARGET_TEXT = f"<= 20 MB ({PSS_TARGET / MIB:.1f} MiB)"
MEMORY_NODES = (16, 64, 256, 1024)
FIT_NODES, FIT_BYTES = 1024, 24 << 30  # "so that 1024 nodes fit in 24 GiB"


@dataclass(frozen=True)
class Memory:
    """One run's memory figures, in bytes."""

    nodes: int
    peak: Rollup | None  # the PSS sample, every node alive, with the largest total
    full_rollups: int
    template_pss: int | None  # launcher, last PSS sample before the first fork
    low: Tick  # the tick with the least MemAvailable
    before: MemInfo
    after: MemInfo
    corrected_drop: int  # the largest drop below the before-to-after line
    template_drop: int | None  # MemAvailable drop at the last tick before the first fork
    peak_pss_bytes: int  # the launcher's own sampler (summary.json)
    rollup_s: float | None  # median duration of one PSS sample

    def node_median(self, what: str) -> float | None:
        if self.peak is None:
            return None
        return statistics.median(getattr(m, what) for m in self.peak.nodes)

    @property
    def total_pss(self) -> float | None:
        return None if self.peak is None else _total(self.peak, self.nodes)

    @property
    def share(self) -> float | None:
        total = self.total_pss
        return None if total is None else total / self.nodes

    @property
    def drop(self) -> int:
        return self.before.available - self.low.meminfo.available

    def kernel_growth(self, what: str) -> int:
        return getattr(self.low.meminfo, what) - getattr(self.before, what)

    @property
    def marginal(self) -> float | None:
        """What each node added to the drop, beyond the launcher before forking."""
        if self.template_drop is None:
            return None
        return (self.drop - self.template_drop) / self.nodes


def _total(r: Rollup, nodes: int) -> float:
    """Launcher + nodes x the mean PSS of the nodes sampled."""
    return r.launcher.pss + nodes * statistics.fmean(m.pss for m in r.nodes)


def memory_of(run: Run) -> Memory:
    w = run.watch
    first_fork = w.forks[0] if w.forks else float("inf")
    subset = max((len(r.nodes) for r in w.rollups if r.alive == run.nodes), default=0)
    full = [r for r in w.rollups if r.alive == run.nodes and len(r.nodes) == subset > 0]
    early = [r for r in w.rollups if r.t1 < first_fork]
    early_ticks = [t for t in w.ticks if t.t < first_fork]
    return Memory(
        nodes=run.nodes,
        peak=max(full, key=lambda r: _total(r, run.nodes)) if full else None,
        full_rollups=len(full),
        template_pss=early[-1].launcher.pss if early else None,
        low=min(w.ticks, key=lambda t: t.meminfo.available),
        before=run.mem_before,
        after=run.mem_after,
        corrected_drop=_corrected_drop(run),
        template_drop=(
            run.mem_before.available - early_ticks[-1].meminfo.available if early_ticks else None
        ),
        peak_pss_bytes=int(run.summary.get("peak_pss_bytes") or 0),
        rollup_s=statistics.median(r.t1 - r.t0 for r in full) if full else None,
    )


def _corrected_drop(run: Run) -> int:
    """The largest drop of MemAvailable below the straight line from its value before the
    run to its value after: a steady drift of other work's memory cancels out."""
    t0, t1 = run.t_command, run.t_after
    a0, a1 = run.mem_before.available, run.mem_after.available

    def baseline(t: float) -> float:
        return a0 + (a1 - a0) * (t - t0) / (t1 - t0)

    return int(max(baseline(t.t) - t.meminfo.available for t in run.watch.ticks))


def _kib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1024:,.0f}"


ROWS: list[tuple[str, Callable[[Memory], str], str, str]] = [
    (
        "**PSS per node, median** (MiB)",
        lambda m: mib(m.node_median("pss")),
        PSS_TARGET_TEXT,
        DPY["pss"],
    ),
    ("USS (private memory) per node, median (MiB)", lambda m: mib(m.node_median("uss")), "", ""),
    ("anonymous PSS per node, median (MiB)", lambda m: mib(m.node_median("pss_anon")), "", ""),
    (
        "whole run's PSS: launcher + N x the sampled nodes' mean (MiB)",
        lambda m: mib(m.total_pss),
        "",
        "",
    ),
    ("per-node share of the whole run's PSS (MiB)", lambda m: mib(m.share), "", ""),
    (
        "launcher PSS at that peak (MiB)",
        lambda m: mib(m.peak.launcher.pss if m.peak else None),
        "",
        "",
    ),
    ("launcher PSS before the first fork (MiB)", lambda m: mib(m.template_pss), "", ""),
    ("`peak_pss_bytes`, the launcher's own sampler (MiB)", lambda m: mib(m.peak_pss_bytes), "", ""),
    ("MemAvailable before the run (MiB)", lambda m: mib(m.before.available, 0), "", ""),
    ("**MemAvailable drop**, before the run to its lowest (MiB)", lambda m: mib(m.drop, 0), "", ""),
    ("**MemAvailable drop per node**, all in (MiB)", lambda m: mib(m.drop / m.nodes), "", ""),
    ("  of which the launcher before forking (MiB)", lambda m: mib(m.template_drop, 0), "", ""),
    ("  (drop - launcher before forking) / N (MiB)", lambda m: mib(m.marginal), "", ""),
    (
        "PageTables growth per node at that moment (KiB)",
        lambda m: _kib(m.kernel_growth("page_tables") / m.nodes),
        "",
        "",
    ),
    (
        "KernelStack growth per node (KiB)",
        lambda m: _kib(m.kernel_growth("kernel_stack") / m.nodes),
        "",
        "",
    ),
    ("Slab growth per node (KiB)", lambda m: _kib(m.kernel_growth("slab") / m.nodes), "", ""),
    (
        "MemAvailable after the run minus before (MiB; others' drift)",
        lambda m: mib(m.after.available - m.before.available, 0),
        "",
        "",
    ),
    (
        "PSS samples with every node alive; nodes read per sample",
        lambda m: f"{m.full_rollups}; {len(m.peak.nodes) if m.peak else 0}",
        "",
        "",
    ),
    (
        "one PSS sample, median duration (s)",
        lambda m: "-" if m.rollup_s is None else f"{m.rollup_s:.2f}",
        "",
        "",
    ),
]


def memory_section(runs: list[Run], failures: list[Failure]) -> tuple[Section, list[Verdict]]:
    mems = [memory_of(r) for r in runs if r.nodes in MEMORY_NODES]
    table = figure_table(mems, lambda m: m.nodes, ROWS, DPY_HEADER)
    verdicts = [_pss_verdict(m) for m in mems]
    verdicts += [_missing(f) for f in failures if f.nodes in MEMORY_NODES]
    verdicts += [_fit_verdict(m) for m in mems if m.nodes == FIT_NODES]
    section = Section("6. Memory per node and for the whole run", _intro(runs), [table])
    section.notes += [_split_note(m) for m in mems if m.peak is not None]
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    return section, verdicts


def _pss_verdict(m: Memory) -> Verdict:
    pss = m.node_median("pss")
    met = None if pss is None else pss <= PSS_TARGET
    limit = "" if met is not False else _pss_limit(m)
    return Verdict(
        f"PSS per node (median) <= 20 MB at {m.nodes} nodes", f"{mib(pss)} MiB", met, limit
    )


def _missing(f: Failure) -> Verdict:
    return Verdict(
        f"PSS per node (median) <= 20 MB at {f.nodes} nodes", f"not measured: {f.reason}", None
    )


def _pss_limit(m: Memory) -> str:
    pss, uss = m.node_median("pss"), m.node_median("uss")
    if pss is None or uss is None:
        return ""
    template = (
        f"the launcher's {mib(m.template_pss, 0)} MiB template"
        if m.template_pss
        else ("the launcher's template")
    )
    over = " (over the target by itself)" if uss > PSS_TARGET else ""
    return (
        f"USS alone is {mib(uss)} MiB{over}; the other {mib(pss - uss)} MiB is the node's "
        f"share of the pages it shares with {template} and the other nodes, which shrinks "
        "as 1/(N+1)"
    )


def _fit_verdict(m: Memory) -> Verdict:
    per_node = m.drop / m.nodes
    met = per_node <= PSS_TARGET
    return Verdict(
        f"{FIT_NODES} nodes fit in 24 GiB: MemAvailable drop, all in, <= 20 MB per node",
        f"{mib(per_node)} MiB per node ({m.drop / 2**30:.1f} GiB in all)",
        met,
        "" if met else _fit_limit(m),
    )


def _fit_limit(m: Memory) -> str:
    kernel = sum(m.kernel_growth(k) for k in ("page_tables", "kernel_stack", "slab"))
    return (
        f"USS {mib(m.node_median('uss'))} MiB per node, kernel memory "
        f"(page tables, stacks, slab) {mib(kernel / m.nodes)} MiB per node"
    )


def _split_note(m: Memory) -> str:
    pss, uss = m.node_median("pss"), m.node_median("uss")
    kernel = sum(m.kernel_growth(k) for k in ("page_tables", "kernel_stack", "slab"))
    return (
        f"{m.nodes} nodes: a node's median PSS of {mib(pss)} MiB is {mib(uss)} MiB of "
        f"private memory (USS) plus {mib((pss or 0) - (uss or 0))} MiB, its share of shared "
        f"pages. All in, the machine lost {mib(m.drop / m.nodes)} MiB per node, "
        f"{mib(kernel / m.nodes, 2)} MiB of it kernel memory (page tables, kernel stacks, "
        f"slab) that no PSS counts; `peak_pss_bytes` / N, the launcher's own figure, is "
        f"{mib(m.peak_pss_bytes / m.nodes)} MiB."
    )


def _intro(runs: list[Run]) -> str:
    return (
        "Target: PSS per node and for the whole run at 16, 64, 256 and 1024 nodes, 20 MB or "
        "less per node, so that 1024 nodes fit in 24 GiB. From the runs of section 3.\n\n"
        "PSS: the kernel builds /proc/<pid>/smaps_rollup by walking the process's whole "
        "address space, ~8 ms of CPU per node process here, so reading every node of a "
        "1024-node run takes seconds of CPU per sample and starves under load (the "
        "launcher's own sampler, `peak_pss_bytes`, reads at most 32 evenly spread nodes "
        "every second at normal priority and extrapolates: compare). "
        "The benchmark's sampler reads the launcher and a fixed random subset of the nodes "
        "(8 nodes every 0.5 s at 16 nodes and every second at 64, to take little from the "
        "round-overhead runs; 16 nodes every 2 s beyond), chosen once every node is alive, in "
        f"a thread of its own at nice {ROLLUP_NICE}. The peak is the sample "
        "with every node alive whose launcher + N x (mean PSS of the nodes read) is largest: "
        "that is the whole run's PSS, extrapolated; the node medians are over the nodes read "
        "in that sample. PSS splits each shared page among the processes mapping it, so a "
        "node's PSS includes its 1/(N+1) share of the torch-laden template it was forked "
        "from; USS is what belongs to that node alone.\n\n"
        "All in: MemAvailable (/proc/meminfo) is read at every sampler tick (0.2 s up to 64 "
        "nodes, 0.5 s beyond); the drop is from just before the command to the lowest tick, "
        "and it counts the launcher, the nodes and the kernel's memory for them (page "
        "tables, kernel stacks, slab: their growth to that tick is shown). Other work on "
        "the machine moves MemAvailable too: the after-minus-before row shows how far it "
        "drifted, and a row measures the drop from the straight line between the two "
        "instead, so that a steady drift cancels out. A run is killed if MemAvailable falls under "
        f"{GUARD_BYTES / 2**30:.1f} GiB, and not started without 16 MiB per node + 2 GiB available."
    )
