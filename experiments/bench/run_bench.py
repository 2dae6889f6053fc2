"""dlactor's benchmark suite: `make bench` runs this and it writes BENCHMARKS.md.

1. codec: encode / decode of a ~1M-parameter model against memcpy (bench_codec.py)
2. transport: TcpTransport throughput against a bare asyncio ceiling (bench_transport.py)
3. end-to-end `dlactor launch` runs at 16, 64, 256 and 1024 nodes (bench_e2e.py)
4. evaluation time, from the same runs (bench_e2e.py)
5. round overhead at 16 and 64 nodes against the compute floor (bench_overhead.py)
6. memory per node and for the whole run, from the same runs (bench_memory.py)
7. start-up, command to start barrier, from the same runs (bench_startup.py)
7b. round overhead, memory and start-up before and after: the same runs by an earlier
   revision (`--baseline`), in a git worktree (bench_before_after.py)
7c. what the launcher's template holds that nodes do not need (template_contents.py)
8. security: the handshake per connection, TLS against plain TCP, the quickstart's round
   time against the revision before per-node identity (bench_security.py)
9. network: how precisely the emulated network's wall clock holds messages over real TCP,
   and what its virtual clock costs a run (bench_network.py)
10. secure aggregation: CPU per round against full sharing, the quickstart's round time
   and bytes, plain against secure (bench_secure.py)
11. Ray: the quickstart at 16 and 64 nodes under the local launcher, Ray workers and Ray
   agents: start-up and PSS per node (bench_ray.py)
12. the control plane at 1,000, 10,000 and 100,000 nodes: the launcher's real supervisor
   against fake nodes in one process (control_plane.py)

Every figure in the file is measured by this script, except the targets and the quoted
decentralizepy reference figures, which say so where they appear.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import torch
from bench_before_after import (
    BASELINE,
    baseline_tree,
    before_after_section,
    revision_of,
    template_section,
)
from bench_codec import codec_section, run_codec
from bench_e2e import NODE_COUNTS, Failure, Run, e2e_section, eval_section, run_e2e
from bench_memory import memory_section
from bench_network import network_section, run_network
from bench_overhead import FLOOR_NODES, overhead_section, run_floors
from bench_ray import ray_section, run_ray
from bench_secure import run_secure, secure_section
from bench_security import run_security, security_section
from bench_startup import startup_section
from bench_transport import run_transport, transport_section
from control_plane import NODE_COUNTS as CONTROL_COUNTS
from control_plane import control_section, run_control
from machine import CpuTimes, git_revision, load_text, machine_table
from report import Section, Verdict, verdict_table

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="where to write")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and bytes in the codec and transport benchmarks",
    )
    parser.add_argument(
        "--nodes",
        type=_node_counts,
        default=NODE_COUNTS,
        help="end-to-end node counts, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help="the revision whose end-to-end runs are the 'before' of section 7b, or 'none' "
        "(default: %(default)s, before the cuts of docs/scaling.md)",
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        default=PARTS,
        help=f"which benchmarks to run, comma-separated, of {','.join(PARTS)} (default: all)",
    )
    return parser.parse_args(argv)


PARTS = ("codec", "transport", "e2e", "security", "network", "secure", "ray", "control")


def _node_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(x) for x in text.split(","))
    if any(n < 2 for n in counts):
        raise argparse.ArgumentTypeError("node counts must be at least 2")
    return counts


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(text.split(","))
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(unknown)}; known: {PARTS}")
    return parts


class Progress:
    """Prints one line per step, with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {message}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def shown_command() -> str:
    """This script's command line, with paths under the current directory made relative."""
    cwd = Path.cwd()
    exe = Path(sys.executable)
    if exe.is_absolute() and exe.is_relative_to(cwd):
        exe = exe.relative_to(cwd)
    return shlex.join([str(exe), *sys.argv])


def run_all(progress: Progress, args: argparse.Namespace) -> tuple[list[Section], list[Verdict]]:
    scale = 0.2 if args.quick else 1.0
    sections, verdicts = [], []
    if "codec" in args.parts:
        progress("codec benchmark")
        codec, codec_verdict = codec_section(run_codec(progress, scale=scale))
        sections.append(codec)
        verdicts.append(_pointing(codec_verdict, "section 1's notes"))
    if "transport" in args.parts:
        progress("transport benchmark (a forked sender and receiver per case)")
        transport_result = run_transport(progress, reps=1 if args.quick else 5, scale=scale)
        transport, transport_verdicts = transport_section(transport_result)
        sections.append(transport)
        verdicts += [_pointing(v, "section 2's notes") for v in transport_verdicts]
    if "e2e" in args.parts:
        e2e_sections, e2e_verdicts = run_end_to_end(progress, args.nodes, args.baseline)
        sections += e2e_sections
        verdicts += e2e_verdicts
    if "security" in args.parts:
        progress("security benchmark")
        sections.append(security_section(run_security(progress, quick=args.quick)))
    if "network" in args.parts:
        progress("network benchmark")
        sections.append(network_section(run_network(progress, quick=args.quick)))
    if "secure" in args.parts:
        progress("secure aggregation benchmark")
        sections.append(secure_section(run_secure(progress, quick=args.quick)))
    if "ray" in args.parts:
        progress("Ray: local, a worker per node, an agent per machine")
        ray, ray_verdicts = ray_section(run_ray(progress))
        sections.append(ray)
        verdicts += [_pointing(v, "section 11's notes") for v in ray_verdicts]
    if "control" in args.parts:
        progress("the control plane, simulated (a launcher and a farm of fake nodes per size)")
        counts = CONTROL_COUNTS[:2] if args.quick else CONTROL_COUNTS
        sections.append(control_section(run_control(progress, counts)))
    return sections, verdicts


def run_end_to_end(
    progress: Progress, node_counts: tuple[int, ...], baseline: str
) -> tuple[list[Section], list[Verdict]]:
    """Sections 3-7: the runs, then the compute floor of those that have one; section 7b:
    the same runs by the ``baseline`` revision ('none': not run)."""
    progress("end-to-end runs")
    runs: list[Run] = []
    failures: list[Failure] = []
    before: list[Run] = []
    if baseline != "none":
        baseline = revision_of(baseline)
        progress(f"each run again by revision {baseline}, from a git worktree")
    with baseline_tree(baseline) if baseline != "none" else nullcontext() as tree:
        for nodes in node_counts:
            done, failed = run_e2e(progress, (nodes,))
            runs += done
            failures += failed
            if tree is not None:
                done, _ = run_e2e(progress, (nodes,), source=tree, label=f"e2e {baseline}")
                before += done
    floors = run_floors(progress, [n for n in FLOOR_NODES if any(r.nodes == n for r in runs)])
    e2e, bytes_verdicts = e2e_section(runs, failures)
    evaluation, eval_verdicts = eval_section(runs)
    overhead, overhead_verdicts = overhead_section(runs, floors, failures)
    memory, memory_verdicts = memory_section(runs, failures)
    startup, startup_verdicts = startup_section(runs, failures)
    verdicts = [
        *overhead_verdicts,
        *memory_verdicts,
        *startup_verdicts,
        *bytes_verdicts,
        *eval_verdicts,
    ]
    sections = [e2e, evaluation, overhead, memory, startup]
    if before:
        sections.append(before_after_section(before, runs, floors, baseline))
    progress("what the template holds (template_contents.py)")
    sections.append(template_section())
    return sections, verdicts


def _pointing(verdict: Verdict, where: str) -> Verdict:
    """A missed verdict without its own line on what limits it points to where that is."""
    if verdict.met is not False or verdict.limit:
        return verdict
    return dataclasses.replace(verdict, limit=f"see {where}")


def render(
    sections: list[Section],
    verdicts: list[Verdict],
    started: datetime,
    runtime_s: float,
    machine_load: str,
    args: argparse.Namespace,
) -> str:
    head = [
        "# dlactor benchmarks",
        "Written by `experiments/bench/run_bench.py` (`make bench`). Every figure here was "
        "measured by that script in the run described below, except the targets (the "
        "project's) and the decentralizepy figures, which are quoted reference measurements.",
        f"```\n{shown_command()}\n```",
        f"Total runtime: {runtime_s:.0f} s. Repository revision: `{git_revision(REPO)}`."
        + _partial(args),
        "## Machine",
        machine_table(started).render(),
        machine_load,
        "## Targets",
        verdict_table(verdicts).render(),
    ]
    return "\n\n".join([*head, *(s.render() for s in sections)]) + "\n"


def _partial(args: argparse.Namespace) -> str:
    """What a run with options did not do that `make bench` does."""
    out = []
    if args.quick:
        out.append("**Quick mode: fewer repetitions and bytes than a normal run.**")
    if args.parts != PARTS:
        out.append(f"**Only these benchmarks: {', '.join(args.parts)}.**")
    if args.nodes != NODE_COUNTS:
        out.append(f"**End-to-end runs at {', '.join(map(str, args.nodes))} nodes only.**")
    return "".join(" " + x for x in out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One torch thread, as in every node; it also keeps libgomp's thread pool from being
    # started here, which would hang torch in the processes forked for the transport cases.
    torch.set_num_threads(1)
    progress = Progress()
    started, cpu_before, load = datetime.now().astimezone(), CpuTimes.now(), os.getloadavg()
    sections, verdicts = run_all(progress, args)
    runtime = progress.elapsed
    machine_load = load_text(cpu_before, CpuTimes.now(), runtime, load)
    args.out.write_text(render(sections, verdicts, started, runtime, machine_load, args))
    progress(f"wrote {args.out} ({sum(v.met is True for v in verdicts)}/{len(verdicts)} met)")
    for v in verdicts:
        print(f"  {v.word:>12}  {v.target}: {v.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
