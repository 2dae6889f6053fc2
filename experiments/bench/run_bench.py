"""dlactor's benchmark suite: `make bench` runs this and it writes BENCHMARKS.md.

1. codec: encode / decode of a ~1M-parameter model against memcpy (bench_codec.py)
2. transport: TcpTransport throughput against a bare asyncio ceiling (bench_transport.py)
3. end-to-end `dlactor launch` runs at 16 and 64 nodes (bench_e2e.py)
4. evaluation time, from the same runs (bench_e2e.py)

Every figure in the file is measured by this script, except the targets and the quoted
decentralizepy reference figures, which say so where they appear.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from bench_codec import codec_section, run_codec
from bench_e2e import e2e_section, eval_section, run_e2e
from bench_transport import run_transport, transport_section
from machine import CpuTimes, git_revision, load_text, machine_table
from report import Section, Verdict, verdict_table

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="where to write")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and bytes (for trying it out)"
    )
    return parser.parse_args(argv)


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


def run_all(progress: Progress, quick: bool) -> tuple[list[Section], list[Verdict]]:
    scale = 0.2 if quick else 1.0
    progress("codec benchmark")
    codec, codec_verdict = codec_section(run_codec(progress, scale=scale))
    progress("transport benchmark (a forked sender and receiver per case)")
    transport_result = run_transport(progress, reps=1 if quick else 5, scale=scale)
    transport, transport_verdicts = transport_section(transport_result)
    progress("end-to-end runs")
    runs, niced = run_e2e(progress)
    e2e, e2e_verdicts = e2e_section(runs, niced)
    evaluation, eval_verdicts = eval_section(runs)
    verdicts = [codec_verdict, *transport_verdicts, *e2e_verdicts, *eval_verdicts]
    return [codec, transport, e2e, evaluation], verdicts


def render(
    sections: list[Section],
    verdicts: list[Verdict],
    started: datetime,
    runtime_s: float,
    machine_load: str,
    quick: bool,
) -> str:
    head = [
        "# dlactor benchmarks",
        "Written by `experiments/bench/run_bench.py` (`make bench`). Every figure here was "
        "measured by that script in the run described below, except the targets (the "
        "project's) and the decentralizepy figures, which are quoted reference measurements.",
        f"```\n{shown_command()}\n```",
        f"Total runtime: {runtime_s:.0f} s. Repository revision: `{git_revision(REPO)}`."
        + (" **Quick mode: fewer repetitions and bytes than a normal run.**" if quick else ""),
        "## Machine",
        machine_table(started).render(),
        machine_load,
        "## Targets",
        verdict_table(verdicts).render(),
    ]
    return "\n\n".join([*head, *(s.render() for s in sections)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One torch thread, as in every node; it also keeps libgomp's thread pool from being
    # started here, which would hang torch in the processes forked for the transport cases.
    torch.set_num_threads(1)
    progress = Progress()
    started, cpu_before, load = datetime.now().astimezone(), CpuTimes.now(), os.getloadavg()
    sections, verdicts = run_all(progress, args.quick)
    runtime = progress.elapsed
    machine_load = load_text(cpu_before, CpuTimes.now(), runtime, load)
    args.out.write_text(render(sections, verdicts, started, runtime, machine_load, args.quick))
    progress(f"wrote {args.out} ({sum(v.met is True for v in verdicts)}/{len(verdicts)} met)")
    for v in verdicts:
        print(f"  {v.word:>12}  {v.target}: {v.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
