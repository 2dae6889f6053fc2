"""Ray with an agent per machine (``placement = "agents"``): on a cluster of two Ray nodes on
this machine, started with distinct custom resources so that Ray sees two machines, the
agents fork their shares of the nodes, and the run's results are the local launcher's."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dlactor.config import load_config
from dlactor.launch.agents import split
from tests.launch.conftest import start_blocking_ray, stop_blocking_ray
from tests.launch.test_ray import QUICKSTART, Launch, assert_gone, records

NODES = 64
RUN = [f"nodes={NODES}", "rounds=3", "evaluation.every=1"]


def agents_under(root: int) -> dict[int, set[int]]:
    """The agents (``ray::RayAgent`` workers) under ``root`` and their children's pids (a
    forked node keeps its agent's process title: an agent is one whose parent is not)."""
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    titled: dict[int, psutil.Process] = {}
    for kid in kids:
        try:
            if " ".join(kid.cmdline()).startswith("ray::RayAgent"):
                titled[kid.pid] = kid
        except psutil.Error:
            continue
    found: dict[int, set[int]] = {}
    for pid, proc in titled.items():
        try:
            if proc.ppid() not in titled:
                found[pid] = {c.pid for c in proc.children()}
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def two_machines(ray_env: dict[str, str]) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A head (`ray start --head --block`) and a second Ray node joined to it, each with a
    custom resource of its own: two machines, as Ray sees it, on this one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    machines = [
        ["--head", f"--port={port}", "--include-dashboard=false", '--resources={"machine_a": 1}'],
        [f"--address=127.0.0.1:{port}", '--resources={"machine_b": 1}'],
    ]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for i, args in enumerate(machines):
            log = Path(ray_env["RAY_TMPDIR"]) / f"machine-{i}.log"
            started.append(start_blocking_ray([*args, "--num-cpus=1"], log, ray_env))
        yield f"127.0.0.1:{port}", started
    finally:
        for proc in reversed(started):
            stop_blocking_ray(proc)


class AgentLaunch(Launch):
    """A launch that also watches the agents under the cluster's processes."""

    def __init__(self, out: Path, env: dict[str, str], overrides: list[str]) -> None:
        super().__init__(out, env, overrides)
        self.agents: dict[int, set[int]] = {}

    def watch(self, roots: list[int]) -> tuple[int, str, str]:
        deadline = time.monotonic() + 240
        while self.proc.poll() is None and time.monotonic() < deadline:
            for root in roots:
                for agent, kids in agents_under(root).items():
                    self.agents.setdefault(agent, set()).update(kids)
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        return code, (self.out / "stdout").read_text(), (self.out / "stderr").read_text()


def test_64_nodes_split_across_two_machines_agents_give_the_local_launchers_results(
    tmp_path: Path,
    ray_env: dict[str, str],
    two_machines: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, machines = two_machines
    launch = AgentLaunch(
        tmp_path / "ray", ray_env, ["launcher.kind=ray", f"launcher.address={address}", *RUN]
    )
    code, _out, err = launch.watch([m.pid for m in machines])
    assert code == 0, err[-3000:]
    rd = launch.run_dir()
    manifest = json.loads((rd / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["backend"] == "ray"
    placed = manifest["machines"]
    assert len(placed) == 2  # two Ray nodes, one agent each
    assert sorted(len(nodes) for nodes in placed.values()) == [NODES // 2, NODES // 2]
    assert sorted(n for nodes in placed.values() for n in nodes) == list(range(NODES))
    # Each agent forked its nodes: two agent processes, 32 children each.
    assert len(launch.agents) == 2, launch.agents
    assert all(len(kids) >= NODES // 2 for kids in launch.agents.values()), launch.agents
    assert_gone({kid for kids in launch.agents.values() for kid in kids})

    local = Launch(tmp_path / "local", ray_env, RUN)
    code, _out, err = local.finish()
    assert code == 0, err[-3000:]
    same = ("train_loss", "test_loss", "test_acc", "peers", "weights", "bytes_sent", "bytes_recv")
    for node in range(NODES):
        got = records(rd / "nodes" / f"{node}.jsonl")
        expected = records(local.run_dir() / "nodes" / f"{node}.jsonl")
        assert [{k: r.get(k) for k in same} for r in got] == [
            {k: r.get(k) for k in same} for r in expected
        ], node


def test_a_cluster_that_cannot_hold_the_run_exits_2_naming_the_field(
    tmp_path: Path,
    ray_env: dict[str, str],
    two_machines: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, _ = two_machines
    base = ["launcher.kind=ray", f"launcher.address={address}", "nodes=8", "topology.degree=3"]
    for field, value, said in [
        ("nodes_per_machine", "3", "8 processes, but 2 machines x 3 nodes = 6"),
        ("memory_per_node_mib", "1000000", "8 processes, but the cluster's 2 machines hold 0"),
    ]:
        launch = Launch(tmp_path / field, ray_env, [*base, f"launcher.{field}={value}"])
        code, _out, err = launch.finish()
        assert code == 2, err[-2000:]
        assert f"launcher.{field}: {said}" in err
        runs = tmp_path / field / "runs"
        assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("processes", "capacities", "counts"),
    [
        (64, [500, 500], [32, 32]),
        (3, [3, 1], [2, 1]),
        (7, [10, 10, 10], [3, 2, 2]),
        (4, [4, 0], [4, 0]),
    ],
)
def test_nodes_are_split_in_proportion_to_what_machines_hold(
    processes: int, capacities: list[int], counts: list[int]
) -> None:
    got = split(processes, capacities)
    assert got == counts
    assert all(g <= c for g, c in zip(got, capacities, strict=True))


def test_a_split_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="10 processes, room for 4"):
        split(10, [3, 1])


def test_the_default_placement_is_agents() -> None:
    config = load_config(QUICKSTART, ["launcher.kind=ray"])
    assert config.launcher.placement == "agents"  # type: ignore[union-attr]


def test_a_lost_machine_fails_its_nodes_and_the_run_stops_cleanly(
    tmp_path: Path,
    ray_env: dict[str, str],
    two_machines: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    """One machine's agent is killed mid-run: its nodes die with it (the parent-death
    signal), the launcher says which machine's agent was lost, and every node of the other
    machine is stopped; the records written so far stay."""
    address, machines = two_machines
    run = ["launcher.kind=ray", f"launcher.address={address}", "nodes=16", "rounds=100000"]
    launch = AgentLaunch(tmp_path, ray_env, run)
    roots = [m.pid for m in machines]
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and launch.proc.poll() is None:
        agents = {a: k for root in roots for a, k in agents_under(root).items()}
        launch.agents.update(agents)
        if len(agents) == 2 and all(len(kids) == 8 for kids in agents.values()):
            runs = launch.out / "runs"
            records_so_far = list(runs.glob("*/nodes/*.jsonl")) if runs.exists() else []
            if any(p.stat().st_size > 0 for p in records_so_far):
                victim = min(agents)
        time.sleep(0.2)
    assert victim is not None, "the run never got going"
    killed_at = time.monotonic()
    psutil.Process(victim).kill()
    code, _out, err = launch.watch(roots)
    assert time.monotonic() - killed_at < 60
    assert code == 1, err[-3000:]
    assert "lost its machine's agent" in err, err[-3000:]
    assert_gone({kid for kids in launch.agents.values() for kid in kids})
    rd = launch.run_dir()
    assert json.loads((rd / "manifest.json").read_text())["status"] == "failed"
    assert any(records(rd / "nodes" / f"{n}.jsonl") for n in range(16))
