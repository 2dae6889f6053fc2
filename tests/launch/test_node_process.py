"""A node process's own settings: profiling its loop (DLACTOR_PROFILE_DIR), its OOM score."""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_a_profiled_run_leaves_one_profile_per_node_with_its_rounds_in_it(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dlactor", "launch", str(ROOT / "configs" / "quickstart.toml"),
           "--set", "nodes=4", "--set", "topology.degree=2", "--set", "rounds=3",
           "--out", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "DLACTOR_PROFILE_DIR": str(tmp_path / "profile")}
    ran = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    files = sorted(p.name for p in (tmp_path / "profile").iterdir())
    assert files == [f"process-{i}.prof" for i in range(4)]
    stats = pstats.Stats(str(tmp_path / "profile" / "process-0.prof"))
    rounds = [v for (_, _, name), v in stats.stats.items() if name == "run_round"]  # type: ignore[attr-defined]
    assert rounds and rounds[0][0] >= 3  # resumed at least once per round (a coroutine)


def test_out_of_memory_the_kernel_kills_a_node_before_the_launcher() -> None:
    probe = (
        "from dlactor.launch.worker import _oom_victim_before_the_launcher as f; f(); "
        "print(open('/proc/self/oom_score_adj').read())"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(ran.stdout) == 500
