"""Launching the quickstart from a benchmark: its summary, the run directory removed after."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def quickstart_summary(out: Path, *overrides: str) -> dict[str, Any]:
    """`dlactor launch configs/quickstart.toml` with ``--set`` ``overrides`` into ``out``:
    its summary.json (``out`` is emptied after)."""
    return quickstart_run(out, *overrides).summary


class Started:
    """When a finished `dlactor launch` reached its start barrier, from what it wrote
    (``summary``, ``manifest``) and when the command was started (``t_command``)."""

    summary: dict[str, Any]
    manifest: dict[str, Any]
    t_command: float  # wall-clock time just before the command was started

    @property
    def barrier_at(self) -> float | None:
        """Wall-clock time of the start barrier: the manifest's start (taken just before
        the launcher's clock starts) + ``launch_to_barrier_s``; None if there was none."""
        if not self.summary.get("launch_to_barrier_s"):
            return None
        start = datetime.fromisoformat(self.manifest["start"]).timestamp()
        return start + float(self.summary["launch_to_barrier_s"])

    @property
    def command_to_barrier_s(self) -> float | None:
        """From just before the command to the start barrier."""
        at = self.barrier_at
        return None if at is None else at - self.t_command


@dataclass(frozen=True)
class Launched(Started):
    """One finished quickstart command: what it wrote, and when it was started."""

    summary: dict[str, Any]
    manifest: dict[str, Any]
    t_command: float
    command_s: float  # the whole command, to its exit


def quickstart_run(out: Path, *overrides: str, env: Mapping[str, str] | None = None) -> Launched:
    """As ``quickstart_summary``, with the manifest and the command's times (``env``: the
    command's environment, if not this process's)."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "dlactor", "launch", "configs/quickstart.toml", "--out",
           str(out), "--no-progress", *sets]  # fmt: skip
    t_command, started = time.time(), time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600, env=env)
    took = time.perf_counter() - started
    (run_dir,) = out.iterdir()
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    manifest: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    shutil.rmtree(out)
    return Launched(summary, manifest, t_command, took)
