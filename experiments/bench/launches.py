"""Launching the quickstart from a benchmark: its summary, the run directory removed after."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def quickstart_summary(out: Path, *overrides: str) -> dict[str, Any]:
    """`dlactor launch configs/quickstart.toml` with ``--set`` ``overrides`` into ``out``:
    its summary.json (``out`` is emptied after)."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "dlactor", "launch", "configs/quickstart.toml", "--out",
           str(out), "--no-progress", *sets]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    (run_dir,) = out.iterdir()
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(out)
    return summary
