"""Ray with an agent per machine (``placement = "agents"``): on a cluster of two Ray nodes on
this machine, started with distinct custom resources so that Ray sees two machines, the
agents fork their shares of the nodes, and the run's results are the local launcher's."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray.exceptions as ray_exceptions

from dlactor.config import RayLauncher, load_config
from dlactor.launch import agents as agents_module
from dlactor.launch import ray as ray_module
from dlactor.launch.agents import AgentNodes, Machine, RayAgent, _Agent, split
from dlactor.launch.ray import RayBackend
from dlactor.launch.supervisor import describe_exit
from dlactor.testing import ray_head, start_ray, stop_ray
from tests.conftest import small_plan
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
    with ray_head(ray_env, '--resources={"machine_a": 1}', cpus=1) as (address, head):
        args = [f"--address={address}", '--resources={"machine_b": 1}', "--num-cpus=1"]
        second = start_ray(args, Path(ray_env["RAY_TMPDIR"]) / "machine-b.log", ray_env)
        try:
            yield address, [head, second]
        finally:
            stop_ray(second)


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
    # Within the start-up: how long the launcher, its plan made, waited for the agents.
    summary = json.loads((rd / "summary.json").read_text())
    assert 0 <= summary["agents_waited_s"] <= summary["launch_to_barrier_s"]
    assert "cluster_start_s" not in summary  # it joined a running cluster
    # Each agent forked its nodes: two agent processes, 32 children each.
    assert len(launch.agents) == 2, launch.agents
    assert all(len(kids) >= NODES // 2 for kids in launch.agents.values()), launch.agents
    assert_gone({kid for kids in launch.agents.values() for kid in kids})

    local = Launch(tmp_path / "local", ray_env, RUN)
    code, _out, err = local.finish()
    assert code == 0, err[-3000:]
    # What the nodes learned and whom they talked to. Not the bytes of each round: a
    # handshake's challenge a node writes to a peer connecting to it counts in the round it
    # is written in, which timing decides (their sum is the same).
    same = ("train_loss", "test_loss", "test_acc", "peers", "weights", "degree")
    for node in range(NODES):
        got = records(rd / "nodes" / f"{node}.jsonl")
        expected = records(local.run_dir() / "nodes" / f"{node}.jsonl")
        assert [{k: r.get(k) for k in same} for r in got] == [
            {k: r.get(k) for k in same} for r in expected
        ], node
        for counted in ("bytes_sent", "bytes_recv"):
            assert sum(r[counted] for r in got) == sum(r[counted] for r in expected), node


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


def kill_an_agent_mid_run(launch: AgentLaunch, roots: list[int], per_agent: int) -> int:
    """Once both agents have forked their ``per_agent`` nodes and records are being
    written, kill one agent (SIGKILL): its pid."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and launch.proc.poll() is None:
        agents = {a: k for root in roots for a, k in agents_under(root).items()}
        launch.agents.update(agents)
        if len(agents) == 2 and all(len(kids) == per_agent for kids in agents.values()):
            runs = launch.out / "runs"
            written = list(runs.glob("*/nodes/*.jsonl")) if runs.exists() else []
            if any(p.stat().st_size > 0 for p in written):
                victim = min(agents)
                psutil.Process(victim).kill()
                return victim
        time.sleep(0.2)
    raise AssertionError("the run never got going")


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
    kill_an_agent_mid_run(launch, roots, per_agent=8)
    killed_at = time.monotonic()
    code, _out, err = launch.watch(roots)
    assert time.monotonic() - killed_at < 60
    assert code == 1, err[-3000:]
    assert "lost its machine's agent" in err, err[-3000:]
    assert_gone({kid for kids in launch.agents.values() for kid in kids})
    rd = launch.run_dir()
    assert json.loads((rd / "manifest.json").read_text())["status"] == "failed"
    assert any(records(rd / "nodes" / f"{n}.jsonl") for n in range(16))


def test_under_continue_a_lost_machine_loses_its_nodes_and_the_others_finish(
    tmp_path: Path,
    ray_env: dict[str, str],
    two_machines: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    """``on_node_failure = "continue"``: the killed agent's 8 nodes are lost, as a killed
    node is, and the other machine's 8 run every round; the run is degraded."""
    address, machines = two_machines
    rounds = 150
    run = ["launcher.kind=ray", f"launcher.address={address}", "nodes=16", f"rounds={rounds}",
           "launcher.on_node_failure=continue", "evaluation.every=50"]  # fmt: skip
    launch = AgentLaunch(tmp_path, ray_env, run)
    roots = [m.pid for m in machines]
    kill_an_agent_mid_run(launch, roots, per_agent=8)
    code, _out, err = launch.watch(roots)
    assert code == 0, err[-3000:]
    rd = launch.run_dir()
    manifest = json.loads((rd / "manifest.json").read_text())
    summary = json.loads((rd / "summary.json").read_text())
    assert manifest["status"] == summary["status"] == "degraded"
    placed = {int(n) for nodes in manifest["machines"].values() for n in nodes}
    assert placed == set(range(16))
    lost = {x["node"] for x in summary["lost"]}
    assert len(lost) == 8 and any(set(nodes) == lost for nodes in manifest["machines"].values())
    assert all("lost its machine's agent" in x["cause"] for x in summary["lost"])
    for node in set(range(16)) - lost:
        assert [r["round"] for r in records(rd / "nodes" / f"{node}.jsonl")] == list(range(rounds))
    assert_gone({kid for kids in launch.agents.values() for kid in kids})


# --- AgentNodes without Ray: fake agents answering at once -------------------------------


class _Ref:
    def __init__(self, fn: Any, *args: Any) -> None:
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            self._future.set_result(fn(*args))
        except BaseException as exc:
            self._future.set_exception(exc)

    def future(self) -> concurrent.futures.Future[Any]:
        return self._future


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> _Ref:
        return _Ref(self.fn, *args)


#: Pids above Linux's largest (2**22): no real process is waited for or read.
PID = 1 << 23


class FakeAgent:
    """What AgentNodes calls on an agent, answered at once; ``dead`` raises as Ray does. What
    it does with its nodes' spooled results is a real RayAgent's (``real``)."""

    def __init__(self, pids: dict[int, int], dead: BaseException | None = None) -> None:
        self.pids, self.dead = pids, dead
        self.real = RayAgent()
        self.exited: dict[int, int] = {}
        self.killed: list[int] = []

        def call(fn: Any) -> _Method:
            def answer(*args: Any) -> Any:
                if self.dead is not None:
                    raise self.dead
                return fn(*args)

            return _Method(answer)

        self.exits = call(lambda: dict(self.exited))
        self.kill = call(self.killed.append)
        self.stop = call(self.real.stop)
        self.asked: list[int] = []  # nodes whose results the launcher asked for
        self.results = call(lambda nodes: self.asked.extend(nodes) or self.real.results(nodes))
        self.drop_results = call(self.real.drop_results)


def agent_nodes(*agents: tuple[list[int], FakeAgent]) -> AgentNodes:
    nodes = AgentNodes(here="10.0.0.1")
    for i, (ids, fake) in enumerate(agents):
        where: concurrent.futures.Future[tuple[int, str]] = concurrent.futures.Future()
        where.set_result((PID + 1000 + i, "10.0.0.1"))
        started: concurrent.futures.Future[dict[int, int]] = concurrent.futures.Future()
        started.set_result(fake.pids)
        agent = _Agent(Machine(f"m{i}", "10.0.0.1", 8), ids, fake, where, started)
        nodes.agents.append(agent)
        nodes.agent_of.update(dict.fromkeys(ids, agent))
    return nodes


def test_agent_nodes_report_each_exit_and_a_dead_agent_loses_all_its_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents_module, "POLL_S", 0.0)
    alive = FakeAgent({0: PID, 1: PID + 1})
    doomed = FakeAgent({2: PID + 2, 3: PID + 3})
    nodes = agent_nodes(([0, 1], alive), ([2, 3], doomed))
    assert [nodes.ended(n) for n in range(4)] == [None] * 4
    alive.exited[1] = 0
    doomed.dead = ray_exceptions.ActorDiedError()
    nodes.ended(0)  # asks again
    said = [nodes.ended(n) for n in range(4)]
    assert said[0] is None and said[1] == describe_exit(0)
    assert said[2] == said[3] and said[2] is not None
    assert said[2].startswith("lost its machine's agent (ActorDiedError")
    nodes.kill(0)
    nodes.kill(2)  # its agent is gone: nothing to ask
    assert alive.killed == [0] and doomed.killed == []
    assert sorted(nodes.local_pids()) == [PID, PID + 1, PID + 2, PID + 3]
    assert nodes.template_pids() == [PID + 1000, PID + 1001]


def test_an_agent_that_raised_while_starting_is_not_called_lost() -> None:
    raised = ray_exceptions.RayTaskError(
        "start",
        "Traceback (most recent call last):\nOSError: [Errno 12] Cannot allocate",
        OSError(),
    )
    fake = FakeAgent({})
    nodes = agent_nodes(([0, 1], fake))
    failed: concurrent.futures.Future[dict[int, int]] = concurrent.futures.Future()
    failed.set_exception(raised)
    nodes.agents[0].started = failed
    said = nodes.ended(1)
    assert said is not None and said.startswith("was not started: its machine's agent raised")
    assert "Cannot allocate" in said


def test_results_spooled_on_a_machine_that_does_not_see_the_run_directory_are_fetched(
    tmp_path: Path,
) -> None:
    """After the run, each agent stops its nodes and says which spooled results; the
    launcher writes those into the run directory, and only then are they removed there."""
    run_dir, spool = tmp_path / "run", tmp_path / "spool"
    spool.mkdir()
    (run_dir / "nodes").mkdir(parents=True)  # as the launcher makes it before any node starts
    agent = FakeAgent({0: PID, 1: PID + 1, 2: PID + 2})
    agent.real._spooled = {n: spool / f"{n}.jsonl" for n in range(3)}
    lines = '{"node": 1, "round": 0}\n{"node": 1, "round": 1}\n'
    (spool / "1.jsonl").write_text(lines)  # node 0 spooled nothing; node 2 wrote nothing yet
    (spool / "2.jsonl").write_text("")
    nodes = agent_nodes(([0, 1, 2], agent))
    nodes.finish(run_dir, grace_s=0.0)
    assert (run_dir / "nodes" / "1.jsonl").read_text() == lines
    assert (run_dir / "nodes" / "2.jsonl").read_text() == ""
    assert not (run_dir / "nodes" / "0.jsonl").exists()
    assert sorted(spool.iterdir()) == []  # fetched, then dropped
    assert agent.asked == [1, 2]  # only what was spooled: no call per node that was not


class Unanswered(AgentNodes):
    """Agents that never make their nodes' keys: the start fails before any node exists."""

    def create(self, settings: Any, processes: int) -> dict[int, bytes]:
        self.waited_s = 0.25
        raise RuntimeError("1 Ray agents did not make their keys in time")

    def finish(self, run_dir: Path, *, grace_s: float) -> None:
        self.finished_grace_s = grace_s


def test_a_start_that_fails_still_says_where_it_ran_and_how_long_it_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome of a failed start carries what any outcome does: the machines, the wait
    for the agents, the cluster's start. Only the launch it belongs to gets that start."""
    monkeypatch.setattr(ray_module.ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    plan = small_plan("launcher.kind=ray")
    nodes = Unanswered(here="127.0.0.1")
    where: concurrent.futures.Future[tuple[int, str]] = concurrent.futures.Future()
    agent = _Agent(Machine("m0", "127.0.0.1", 8), list(range(plan.processes)), None, where)
    nodes.agents.append(agent)
    nodes.agent_of.update(dict.fromkeys(agent.nodes, agent))
    assert isinstance(plan.config.launcher, RayLauncher)
    backend = RayBackend(
        plan.config.launcher,
        control_host="127.0.0.1",
        node_host="127.0.0.1",
        agents=nodes,
        cluster_start_s=2.5,
    )

    outcome = backend.launch(plan, tmp_path, show_progress=False)

    assert outcome.status == "failed" and outcome.reason.startswith("start barrier: 1 Ray")
    assert outcome.machines == {"m0": agent.nodes} and outcome.hosts == ["127.0.0.1"]
    assert outcome.agents_waited_s == 0.25 and outcome.cluster_start_s == 2.5
    assert nodes.finished_grace_s == 0  # a failed start: nobody to wait for
    assert backend.cluster_start_s is None  # a later launch did not start the cluster
