"""Real processes on 127.0.0.1: a run that goes on without a SIGKILLed node, and a run whose
launcher is SIGKILLed, resumed from its checkpoint to the uninterrupted run's models."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from dlactor.config import load_config
from dlactor.launch.plan import make_plan
from dlactor.testing import run_in_memory

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.toml")
SMALL = ["nodes=8", "launcher.round_timeout_s=60"]


def _cmd(out: Path, *overrides: str) -> list[str]:
    sets = [arg for o in [*SMALL, *overrides] for arg in ("--set", o)]
    return [sys.executable, "-m", "dlactor", "launch", QUICKSTART, "--out", str(out),
            "--no-progress", *sets]  # fmt: skip


def _run_dir(out: Path) -> Path:
    (only,) = out.iterdir()
    return only


def _wait(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the launcher ended first: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within 120 s")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@dataclass
class Launch:
    """A launch and what a scenario thread did to it: its stderr once it ended (or the
    error of the thread)."""

    out: Path
    proc: subprocess.Popen[str]
    err: str = ""
    failure: BaseException | None = None

    @property
    def run(self) -> Path:
        (only,) = self.out.iterdir()
        return only

    def result(self) -> str:
        if self.failure is not None:
            raise self.failure
        return self.err


def _kill_a_node_after_round_10(launch: Launch) -> None:
    proc = launch.proc
    _wait(lambda: launch.out.exists() and any(launch.out.iterdir()), "run directory", proc)
    records = launch.run / "nodes"
    _wait(lambda: min(_lines(records / f"{n}.jsonl") for n in range(8)) >= 10, "10", proc)
    victim = sorted(psutil.Process(proc.pid).children(), key=lambda p: p.pid)[5]
    os.kill(victim.pid, signal.SIGKILL)
    _, launch.err = proc.communicate(timeout=120)


def _kill_the_launcher_after_checkpoint_15(launch: Launch) -> None:
    proc = launch.proc
    _wait(lambda: launch.out.exists() and any(launch.out.iterdir()), "run directory", proc)
    middle = launch.run / "checkpoints" / "round-00000015"
    _wait(lambda: middle.is_dir() and len(list(middle.glob("*.safetensors"))) == 8, "15", proc)
    nodes = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGKILL)
    _, launch.err = proc.communicate(timeout=30)
    psutil.wait_procs(nodes, timeout=30)  # they die with their launcher


ROUNDS_DEGRADED, ROUNDS_RESUMED = 60, 40
RESUMED = (f"rounds={ROUNDS_RESUMED}", "checkpoint.every=5", "training.momentum=0.9")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launch]]:
    """Both scenarios side by side (each leaves a core mostly idle while it starts)."""
    root = tmp_path_factory.mktemp("churn-launches")
    scenarios = {
        "degraded": (
            _kill_a_node_after_round_10,
            [f"rounds={ROUNDS_DEGRADED}", 'launcher.on_node_failure="continue"'],
        ),
        "resumed": (_kill_the_launcher_after_checkpoint_15, list(RESUMED)),
    }
    launches, threads = {}, []
    for name, (scenario, overrides) in scenarios.items():
        out = root / name
        proc = subprocess.Popen(_cmd(out, *overrides), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        launch = launches[name] = Launch(out, proc)

        def act(launch: Launch = launch, scenario: Callable[[Launch], None] = scenario) -> None:
            try:
                scenario(launch)
            except BaseException as exc:  # handed to the test
                launch.failure = exc

        threads.append(threading.Thread(target=act))
        threads[-1].start()
    try:
        for thread in threads:
            thread.join()
        yield launches
    finally:
        for launch in launches.values():
            if launch.proc.poll() is None:
                launch.proc.kill()
                launch.proc.communicate()


def test_a_sigkilled_node_leaves_a_degraded_run_with_the_others_complete(
    launched: dict[str, Launch],
) -> None:
    launch = launched["degraded"]
    err = launch.result()
    assert launch.proc.returncode == 0, err
    run = launch.run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "degraded", summary
    (lost,) = summary["lost"]
    assert "SIGKILL" in lost["cause"] and lost["round"] >= 10
    for node in range(8):  # every record written before the loss is kept
        count = _lines(run / "nodes" / f"{node}.jsonl")
        if node != lost["node"]:
            assert count == ROUNDS_DEGRADED, (node, count)
        else:  # its last record may have been written, its report of it not sent
            assert count in (lost["round"], lost["round"] + 1), (node, count)
    assert summary["rounds"] == ROUNDS_DEGRADED
    assert "run degraded" in err and f"node {lost['node']}" in err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "degraded"


def _final_models(run: Path, rounds: int) -> dict[int, dict[str, torch.Tensor]]:
    final = run / "checkpoints" / f"round-{rounds:08d}"
    return {
        node: {k: v for k, v in load_file(final / f"{node}.safetensors").items() if "model" in k}
        for node in range(8)
    }


def _uninterrupted(run_dir: Path, *overrides: str) -> None:
    """The same run in this process, on the in-memory transport, with one torch thread as a
    launched node has: the same models, bit for bit (its checkpoints into ``run_dir``)."""
    config = load_config(Path(QUICKSTART), [*SMALL, *overrides])
    threads = torch.get_num_threads()
    torch.set_num_threads(config.launcher.torch_threads)
    try:
        asyncio.run(run_in_memory(make_plan(config), run_dir=run_dir))
    finally:
        torch.set_num_threads(threads)


def test_a_sigkilled_launcher_resumes_to_the_uninterrupted_models(
    launched: dict[str, Launch], tmp_path: Path
) -> None:
    rounds = ROUNDS_RESUMED
    _uninterrupted(tmp_path / "whole", *RESUMED)
    launch = launched["resumed"]
    launch.result()
    run = launch.run
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    assert not (run / "checkpoints" / f"round-{rounds:08d}").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "dlactor", "launch", "--resume", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == rounds
    manifest = json.loads((run / "manifest.json").read_text())
    (entry,) = manifest["resumed"]
    assert entry["from_round"] >= 15 and entry["previous_status"] == "running"
    for node in range(8):  # every round once, in order, across the two launches
        text = (run / "nodes" / f"{node}.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines()]
        assert [r["round"] for r in rows] == list(range(rounds))
    expected = _final_models(tmp_path / "whole", rounds)
    got = _final_models(run, rounds)
    for node in range(8):
        assert expected[node].keys() == got[node].keys()
        for key, tensor in expected[node].items():
            assert torch.equal(tensor, got[node][key]), (node, key)
