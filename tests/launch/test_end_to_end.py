"""Real runs: `dlactor launch` starting one OS process per node on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import networkx as nx
import psutil
import pytest

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "tests" / "plugins" / "example.toml"
FAULTY = [
    "plugins=['../../experiments/plugins/damped_sharing.py', 'faulty_training.py']",
    "training.kind=faulty",
    "training.lr=0.5",
    "training.local_steps=2",
    "training.batch_size=32",
]


@pytest.fixture
def launch() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `dlactor launch` on the example config; whatever a test leaves running is killed."""
    procs: list[subprocess.Popen[str]] = []

    def start(out: Path, *overrides: str, config: Path = EXAMPLE) -> subprocess.Popen[str]:
        sets = [arg for o in overrides for arg in ("--set", o)]
        cmd = [sys.executable, "-m", "dlactor", "launch", str(config), "--out", str(out),
               "--no-progress", *sets]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_dir(out: Path) -> Path:
    (only,) = out.iterdir()
    return only


def node_pids(proc: subprocess.Popen[str], n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        kids = psutil.Process(proc.pid).children()
        if len(kids) >= n:
            return [k.pid for k in kids]
        time.sleep(0.05)
    raise AssertionError(f"node processes did not start: {finish(proc)}")


def wait_for_lines(path: Path, lines: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {lines} lines")


def assert_all_gone(pids: list[int]) -> None:
    for pid in pids:
        if psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"node pid {pid} lives"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_plugin_run_writes_the_whole_results_schema(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    code, out, err = finish(launch(tmp_path))
    assert code == 0, err
    assert "Traceback" not in err  # nothing left running to be cancelled and logged
    rd = run_dir(tmp_path)
    assert rd.name.startswith("plugin-example-")
    manifest = json.loads((rd / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["nodes"] == 6 and manifest["end"]
    assert manifest["model_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert manifest["model_bytes"] == 4 * manifest["model_params"]
    assert {"versions", "hosts", "seed", "start"} <= manifest.keys()
    assert sorted(manifest["addresses"], key=int) == [str(n) for n in range(6)]
    assert all(a.startswith("127.0.0.1:") for a in manifest["addresses"].values())
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["nodes"] == 6 and summary["rounds"] == 4
    assert {"wall_s", "round_s_median", "bytes_sent_per_node_per_round"} <= summary.keys()
    assert summary["peak_pss_bytes"] > 0
    assert "peak_rss_bytes" not in summary  # summed RSS counts the shared template N times
    assert {"test_acc_mean", "test_acc_min", "test_acc_max", "test_loss_mean"} <= summary[
        "final"
    ].keys()
    assert 'kind = "damped"' in (rd / "config.toml").read_text()
    assert (rd / "topology.edges").read_text().splitlines()[0] == "6"
    for node in range(6):
        recs = records(rd / "nodes" / f"{node}.jsonl")
        assert [r["round"] for r in recs] == [0, 1, 2, 3]
        for key in ("node", "train_loss", "bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv",
                    "t_wall", "t_train", "rss_bytes"):  # fmt: skip
            assert key in recs[0], key
        assert "test_acc" in recs[1] and "test_acc" in recs[3] and "test_acc" not in recs[0]
        # full model to each of 3 neighbours, plus one hello per connection in round 0
        assert recs[2]["bytes_sent"] <= 1.02 * 3 * manifest["model_bytes"]
    assert "run plugin-example" in out
    assert [r["round"] for r in records(rd / "consensus.jsonl")] == [1, 3]
    assert summary["final"]["consensus_distance"] >= 0


def test_a_node_that_raises_fails_the_run_once_and_keeps_results(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = launch(tmp_path, *FAULTY, "training.fail_node=2", "training.fail_round=2")
    pids = node_pids(proc, 6)
    code, _out, err = finish(proc)
    assert code == 1
    assert err.count("RuntimeError: injected failure on node 2 at round 2") == 1
    assert "run failed: node 2 raised an exception" in err
    rd = run_dir(tmp_path)
    assert json.loads((rd / "manifest.json").read_text())["status"] == "failed"
    assert json.loads((rd / "summary.json").read_text())["status"] == "failed"
    assert len(records(rd / "nodes" / "2.jsonl")) == 2  # rounds 0 and 1 were kept
    assert_all_gone(pids)


def test_a_killed_node_stops_the_run_with_exit_1_and_no_orphans(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = launch(tmp_path, *FAULTY, "rounds=400", "training.delay_s=0.01")
    pids = node_pids(proc, 6)
    rd = run_dir(tmp_path)
    wait_for_lines(rd / "nodes" / "0.jsonl", 3)
    victim = pids[3]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    code, _out, err = finish(proc)
    assert code == 1
    assert "was killed by SIGKILL" in err
    assert_all_gone(pids)
    survivors = [p for p in range(6) if (rd / "nodes" / f"{p}.jsonl").exists()]
    assert len(survivors) == 6
    assert all(len(records(rd / "nodes" / f"{p}.jsonl")) >= 2 for p in survivors)
    assert json.loads((rd / "manifest.json").read_text())["status"] == "failed"


def test_ctrl_c_stops_every_node_and_marks_the_run_interrupted(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = launch(tmp_path, *FAULTY, "rounds=400", "training.delay_s=0.01")
    pids = node_pids(proc, 6)
    wait_for_lines(run_dir(tmp_path) / "nodes" / "0.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    code, _out, err = finish(proc)
    assert code == 130
    assert "run interrupted" in err
    rd = run_dir(tmp_path)
    assert json.loads((rd / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((rd / "summary.json").read_text())["status"] == "interrupted"
    assert_all_gone(pids)


@pytest.mark.parametrize("bad", ["topology.degree=9", "nodes=one"])
def test_an_invalid_config_exits_2_and_starts_nothing(
    tmp_path: Path, bad: str, launch: Callable[..., subprocess.Popen[str]]
) -> None:
    code, _out, err = finish(launch(tmp_path, bad))
    assert code == 2
    assert "topology" in err or "nodes" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(("kind", "sharing"), [("peer_sampler", "secure"), ("gossip", "full")])
def test_dynamic_topologies_run_over_real_sockets_and_record_every_rounds_graph(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[str]], kind: str, sharing: str
) -> None:
    """The peer sampler's run masks too (secure aggregation over real processes: X25519
    keys through the address book, rosters and masked shares over TCP)."""
    code, out, err = finish(launch(tmp_path, f"topology.kind={kind}", "topology.degree=3",
                                   "rounds=5", f"sharing.kind={sharing}"))  # fmt: skip
    assert code == 0, err
    rd = run_dir(tmp_path)
    manifest = json.loads((rd / "manifest.json").read_text())
    sampler = kind == "peer_sampler"
    # the peer sampler is a process of its own (id 6), registered like a node
    assert sorted(manifest["addresses"], key=int) == [str(n) for n in range(6 + sampler)]
    assert sorted(p.name for p in (rd / "nodes").iterdir()) == [f"{n}.jsonl" for n in range(6)]
    rows = records(rd / "topology_rounds.jsonl")
    assert rows[0]["round"] == 0 and len(rows) >= 3  # a new graph in (nearly) every round
    for row in rows:
        graph = nx.Graph(row["edges"])
        assert "asymmetric_pairs" not in row  # both ends of every edge agreed
        degrees = [d for _, d in graph.degree]
        assert (set(degrees) == {3} and len(degrees) == 6) if sampler else max(degrees) <= 3
    for node in range(6):
        recs = records(rd / "nodes" / f"{node}.jsonl")
        assert all(r["overlay_msgs_sent"] >= 0 for r in recs)
        assert sum(r["overlay_bytes_sent"] for r in recs) > 0
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["overlay_bytes_sent_total"] > 0
    if sharing == "secure":
        secure = summary["secure"]
        assert secure["masked"] and secure["fraction_bits"] == 26
        assert secure["extra_bytes_per_node_per_round"] > 0  # the rosters
        assert secure["rounds_skipped"] == secure["sums_rejected"] == 0
        assert "secure aggregation" in out and "on (fixed point, 26 fraction bits)" in out
