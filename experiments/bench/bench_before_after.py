"""Benchmark 7b: the round's fixed cost, memory and start-up, before and after, in one run.

The "before" runs are section 3's commands run by an earlier revision of dlactor (option
`--baseline`, by default `BASELINE`: the last revision before the cuts that docs/scaling.md
describes), checked out into a git worktree and imported from there; the "after" runs are
section 3's own. Both go through the same sampler on the same machine within minutes of each
other, and both are set against the same compute floor (section 5's, which measures the
computation, not dlactor).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_e2e import REPO, Run
from bench_memory import Memory, memory_of
from bench_overhead import Floor, Pair, node_cpu_per_node_round
from bench_startup import Startup, startup_of
from report import Section, Table, mib, ms

#: The last revision before issue 17's cuts (libuv's resolver threads, one malloc arena,
#: one training thread per node).
BASELINE = "f49cea0"


@contextlib.contextmanager
def baseline_tree(revision: str) -> Iterator[Path]:
    """``revision`` of this repository checked out in a temporary git worktree."""
    with tempfile.TemporaryDirectory(prefix="dlactor-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(REPO)]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), revision],
                       check=True, capture_output=True)  # fmt: skip
        try:
            # Compiled once here, as the working tree's are: a first run would otherwise
            # compile what it imports, every forked node what it imports after the fork.
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "dlactor")],
                           check=True, capture_output=True)  # fmt: skip
            yield tree
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)  # fmt: skip


def revision_of(revision: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


@dataclass(frozen=True)
class _Seen:
    """One run as sections 5-7 read it, read once."""

    run: Run
    memory: Memory
    startup: Startup
    floor: Floor | None

    @classmethod
    def of(cls, run: Run, floors: dict[int, Floor]) -> _Seen:
        return cls(run, memory_of(run), startup_of(run), floors.get(run.nodes))


def _overhead(seen: _Seen) -> str:
    if seen.floor is None:
        return ""
    overhead = Pair(seen.run, seen.floor, None).overhead
    return "-" if overhead is None else f"{overhead:.0%}"


def _cpu(run: Run) -> str:
    cpu = node_cpu_per_node_round(run)
    return "-" if cpu is None else ms(cpu[0], 2)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _per_node(value: float | None, nodes: int) -> float | None:
    return None if value is None else value / nodes


ROWS: list[tuple[str, Callable[[_Seen], str]]] = [
    ("median round without an evaluation (ms)", lambda x: ms(x.run.plain_round_median, 1)),
    ("**round overhead** against the compute floor (section 5)", _overhead),
    ("node processes' CPU per node-round (ms)", lambda x: _cpu(x.run)),
    ("**USS per node**, median (MiB)", lambda x: mib(x.memory.node_median("uss"))),
    ("PSS per node, median (MiB)", lambda x: mib(x.memory.node_median("pss"))),
    (
        "**template**: the launcher's PSS before the first fork (MiB)",
        lambda x: mib(x.memory.template_pss, 0),
    ),
    (
        "  of it anonymous memory, whose page tables every fork copies (MiB)",
        lambda x: mib(x.startup.template_anon, 0),
    ),
    ("MemAvailable drop per node, all in (MiB)", lambda x: mib(x.memory.drop / x.run.nodes)),
    ("**start-up**: command to start barrier (s)", lambda x: _s(x.run.command_to_barrier_s)),
    ("  the fork loop (s)", lambda x: _s(x.startup.fork_loop)),
    (
        "  a node's own CPU from its fork to the barrier (ms)",
        lambda x: ms(_per_node(x.startup.nodes_cpu_at_barrier, x.run.nodes), 1),
    ),
]


def before_after_section(
    before: list[Run], after: list[Run], floors: list[Floor], baseline: str
) -> Section:
    """A column pair per node count that both revisions ran."""
    by_nodes = {r.nodes: r for r in before}
    floor_of = {f.nodes: f for f in floors}
    pairs = [
        (_Seen.of(by_nodes[r.nodes], floor_of), _Seen.of(r, floor_of))
        for r in after
        if r.nodes in by_nodes
    ]
    table = Table(
        ["figure", *(h for b, _ in pairs for h in (f"{b.run.nodes} nodes, before", "after"))]
    )
    for label, figure in ROWS:
        table.add(label, *(figure(seen) for pair in pairs for seen in pair))
    intro = (
        f"Before: revision `{baseline}` (`--baseline`), the same commands as section 3 from a "
        "git worktree of it, each run right after section 3's run of the same node count; "
        "after: section 3's runs. Each figure is read as sections 5-7 "
        "read it, and both sides of a round overhead are set against the same floor. "
        "Figures of one run move between runs of the same code (on this shared machine, "
        "CPU per node-round by several percent): the notes of sections 5-7 say where."
    )
    return Section("7b. Before and after: fixed cost, memory, start-up", intro, [table])


def template_section() -> Section:
    """What the quickstart's template holds, by experiments/bench/template_contents.py in a
    fresh interpreter (the benchmark's own process has imported more than a launcher)."""
    script = Path(__file__).with_name("template_contents.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout  # fmt: skip
    body = out.split("\n", 2)[2]  # its own title goes: the section has one
    intro = (
        "`experiments/bench/template_contents.py` (the quickstart): the launcher as it "
        "forks, what it has imported, and what each package that only the launcher uses "
        "would shed from it. The template's pages are shared by every node, so its size is "
        "paid once; what it costs per node is the page tables each fork copies (section 7) "
        "and the pages a node writes (section 6's USS).\n\n" + body
    )
    return Section("7c. What the template holds", intro)
