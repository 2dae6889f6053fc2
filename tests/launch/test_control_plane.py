"""The control-plane simulation (experiments/bench/control_plane.py) at a small size: the
launcher's real supervisor runs a whole run against the fake nodes, and what it reports
adds up (the figures in docs/scaling.md come from it at 100,000 nodes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from dlactor.messages import Done, Message, Progress
from dlactor.wire.codec import encode

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "control_plane.py"
NODES, ROUNDS = 300, 3


def wire_len(msg: Message) -> int:
    return sum(len(part) for part in encode(msg))


def simulate(tmp_path: Path, *options: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--one",
            "--nodes",
            str(NODES),
            "--rounds",
            str(ROUNDS),
            "--run-dir",
            str(tmp_path),
            *options,
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("elided", [False, True])
def test_a_simulated_run_ends_ok_and_its_bytes_add_up(tmp_path: Path, elided: bool) -> None:
    options = ("--elide-over", "0", "--sample", "10") if elided else ()
    rep = simulate(tmp_path, *options)
    assert rep["status"] == "ok", rep["reason"]
    fake, phases = rep["fake"], rep["phases"]
    # Every node got the whole address book: the sampled ones decoded it and found them all.
    assert fake["book_entries"] == NODES
    sample = 10 if elided else 64  # the script's default sample
    assert fake["book_decoded_by"] == len(range(0, NODES, NODES // sample))
    # The barrier's bytes are the address book's frame to every node, sent or counted.
    frame = 4 + fake["book_bytes"]
    records = NODES * 9  # the multiplexer's own header per record
    elided_extra = (NODES - fake["book_decoded_by"]) * 8 if elided else 0  # a length each
    assert phases["barrier"]["sent_bytes"] == NODES * frame + records + elided_extra
    # Each round is one report per node, and nothing from the launcher; the Dones come after.
    reports = sum(9 + wire_len(Progress(n, r)) for n in range(NODES) for r in range(ROUNDS))
    assert phases["rounds"]["received_bytes"] == reports
    assert phases["rounds"]["sent_bytes"] == 9  # the simulation's own "go" to the farm
    dones = sum(9 + wire_len(Done(n)) for n in range(NODES))
    assert phases["finish"]["received_bytes"] >= dones


def test_a_simulation_whose_fake_nodes_die_fails_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    launcher = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--one", "--nodes", "200", "--rounds", "1000000",
         "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        farm = None
        while farm is None and time.monotonic() < deadline:
            kids = psutil.Process(launcher.pid).children()
            farm = next((k for k in kids if "--fake-nodes" in k.cmdline()), None)
            time.sleep(0.2)
        assert farm is not None, "the farm never started"
        time.sleep(3)  # into the rounds
        farm.kill()
        out, _ = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["status"] == "failed"
    assert "fake nodes' process" in rep["reason"]
