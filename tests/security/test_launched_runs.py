"""Real runs (`dlactor launch`, one OS process per node on 127.0.0.1) under attack and with
TLS: a flood of idle connections, a diverging node, every connection over TLS."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "tests" / "plugins" / "example.toml"


def launch(out: Path, *overrides: str) -> subprocess.Popen[str]:
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "dlactor", "launch", str(EXAMPLE), "--out", str(out),
           "--no-progress", *sets]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def summary(out: Path) -> dict[str, object]:
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "summary.json").read_text())  # type: ignore[no-any-return]


def a_listening_node(
    proc: subprocess.Popen[str], timeout: float = 90
) -> tuple[psutil.Process, int]:
    """One of the run's node processes once it listens (and trains), and its port."""
    deadline = time.monotonic() + timeout
    launcher = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        for child in launcher.children():
            with_port = [
                c.laddr[1] for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN
            ]
            if with_port and len(child.net_connections("tcp")) > 3:  # listening and talking
                return child, with_port[0]
        time.sleep(0.1)
    raise AssertionError(f"no node listened within {timeout} s")


def test_3000_idle_connections_cost_a_node_less_than_20_mb_and_do_not_fail_the_run(
    tmp_path: Path,
) -> None:
    # 1,500 rounds: about 7 s on an idle machine, so the run outlasts the flood (400 rounds
    # took 2 s, and the node could end before the test was done reading its memory)
    proc = launch(tmp_path, "rounds=1500", "evaluation.every=500")
    node, port = a_listening_node(proc)
    time.sleep(1.0)  # a few rounds in: its memory is at its working size
    before = node.memory_info().rss
    flood: list[socket.socket] = []
    peak = before
    try:
        for _ in range(3000):
            sock = socket.socket()
            flood.append(sock)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        for _ in range(20):  # they sit idle: the node closes the oldest, then the rest time out
            peak = max(peak, node.memory_info().rss)
            time.sleep(0.1)
    finally:  # closed however the test ends (left open, they fail the next test's warnings)
        for sock in flood:
            sock.close()

    code, _, err = finish(proc)
    assert code == 0, err
    assert summary(tmp_path)["status"] == "ok"
    assert peak - before < 20 << 20, f"{(peak - before) / 2**20:.1f} MiB for 3,000 strangers"


def test_a_node_whose_model_diverges_stops_the_run_naming_itself_and_the_round(
    tmp_path: Path,
) -> None:
    code, _, err = finish(launch(tmp_path, "training.lr=1e30"))
    assert code == 1
    result = summary(tmp_path)
    assert result["status"] == "failed"
    assert "raised an exception" in str(result["reason"])
    said = " ".join(err.split())  # the traceback is wrapped to the terminal's width
    assert "ModelDiverged: node" in said and "holds NaN or Inf after training in round" in said


def test_a_run_with_tls_on_every_connection_completes(tmp_path: Path) -> None:
    code, _, err = finish(launch(tmp_path, "security.tls=on"))
    assert code == 0, err
    result = summary(tmp_path)
    assert result["status"] == "ok"
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["tls"] is True
