"""A node process's own settings: profiling its loop (DLACTOR_PROFILE_DIR), its OOM score, its
threads."""

from __future__ import annotations

import contextlib
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import psutil

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


def test_a_node_process_runs_on_two_threads_its_loop_and_its_compute_thread(
    tmp_path: Path,
) -> None:
    """Every thread is a stack and memory per node, times every node of a run: uvloop's
    resolver pool (4 threads) and a second thread of asyncio's default pool are not."""
    cmd = [sys.executable, "-m", "dlactor", "launch", str(ROOT / "configs" / "quickstart.toml"),
           "--set", "nodes=4", "--set", "topology.degree=2", "--set", "rounds=60",
           "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    threads: dict[int, int] = {}
    with (tmp_path / "stderr").open("w") as err, subprocess.Popen(cmd, stderr=err) as launcher:
        while launcher.poll() is None:
            if _in_rounds(tmp_path, nodes=4, rounds=60):  # not starting, not shutting down
                for node in psutil.Process(launcher.pid).children():
                    with contextlib.suppress(psutil.Error):
                        threads[node.pid] = max(threads.get(node.pid, 0), node.num_threads())
            time.sleep(0.02)
    assert launcher.returncode == 0, (tmp_path / "stderr").read_text()
    assert len(threads) == 4
    assert set(threads.values()) <= {1, 2}, threads
    assert 2 in threads.values()  # sampled while they trained


def _in_rounds(out: Path, *, nodes: int, rounds: int) -> bool:
    """Every node has recorded a round, and none its last."""
    done = [len(f.read_text().splitlines()) for f in out.glob("*/nodes/*.jsonl")]
    return len(done) == nodes and min(done) > 0 and max(done) < rounds
