"""Every algorithm's roles in real processes: a FedAvg server and its clients, a parameter
server and its clients, Epidemic Learning nodes, each launched with `dlactor launch`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
name = "roles"
seed = 3
nodes = 5
rounds = 4

[model]
kind = "mlp"
hidden = [16]

[partition]
kind = "shards"

[training]
kind = "sgd"
lr = 0.5
local_steps = 2
batch_size = 32

[evaluation]
every = 2

[launcher]
round_timeout_s = 60
"""

ROLES = {
    "fedavg": ["algorithm.kind=fedavg", "algorithm.fraction=0.4"],
    "parameter_server": ["algorithm.kind=parameter_server"],
    "epidemic": ["algorithm.kind=epidemic", "algorithm.s=2", "algorithm.variant=local"],
}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three runs, launched side by side (each is small); their run directories."""
    root = tmp_path_factory.mktemp("roles")
    config = root / "roles.toml"
    config.write_text(CONFIG)
    procs = {}
    for kind, sets in ROLES.items():
        args = [arg for s in sets for arg in ("--set", s)]
        cmd = [sys.executable, "-m", "dlactor", "launch", str(config), "--out", str(root / kind),
               "--no-progress", *args]  # fmt: skip
        procs[kind] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out = {}
    for kind, proc in procs.items():
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, f"{kind}: {err}"
        (out[kind],) = (root / kind).iterdir()
    return out


@pytest.mark.parametrize("kind", ["fedavg", "parameter_server"])
def test_a_server_run_records_the_server_and_every_clients_traffic(
    runs: dict[str, Path], kind: str
) -> None:
    rd = runs[kind]
    manifest = json.loads((rd / "manifest.json").read_text())
    assert sorted(manifest["addresses"], key=int) == [str(p) for p in range(6)]  # 5 + server
    server = jsonl(rd / "nodes" / "server-5.jsonl")
    assert [r["round"] for r in server] == [0, 1, 2, 3]
    assert [r["round"] for r in server if "test_acc" in r] == [1, 3]
    clients = [jsonl(rd / "nodes" / f"{n}.jsonl") for n in range(5)]
    assert all([r["round"] for r in recs] == [0, 1, 2, 3] for recs in clients)
    assert not any("test_acc" in r for recs in clients for r in recs)  # the server evaluates
    for r in range(4):
        uploads = sum(recs[r]["bytes_sent"] for recs in clients)
        downloads = sum(recs[r]["bytes_recv"] for recs in clients)
        # what the clients sent is what the server received, and the reverse (handshakes
        # of round 0 aside: each side counts the frames it wrote or read)
        assert abs(uploads - server[r]["bytes_recv"]) <= 2048
        assert abs(downloads - server[r]["bytes_sent"]) <= 2048
        assert uploads > 0 and downloads > 0
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == 4
    assert summary["final"]["test_acc_mean"] == server[-1]["test_acc"]
    assert summary["servers"]["5"]["bytes_sent_total"] == sum(r["bytes_sent"] for r in server)


def test_fedavg_trains_only_the_sampled_clients(runs: dict[str, Path]) -> None:
    rd = runs["fedavg"]
    server = jsonl(rd / "nodes" / "server-5.jsonl")
    for r, row in enumerate(server):
        assert len(row["clients"]) == 2  # 40% of 5
        for n in range(5):
            rec = jsonl(rd / "nodes" / f"{n}.jsonl")[r]
            assert rec["sampled"] == (n in row["clients"])
            assert ("train_loss" in rec) == rec["sampled"]


def test_epidemic_nodes_run_without_a_server(runs: dict[str, Path]) -> None:
    rd = runs["epidemic"]
    assert not list((rd / "nodes").glob("server-*"))
    for n in range(5):
        recs = jsonl(rd / "nodes" / f"{n}.jsonl")
        assert [r["round"] for r in recs] == [0, 1, 2, 3]
        assert all(len(r["targets"]) == 2 and n not in r["targets"] for r in recs)
        assert all(r["msgs_recv"] >= 4 for r in recs)  # a model or a notice from every contact
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final"]["test_acc_mean"] is not None
