"""The Ray backend: its settings, what travels to Ray workers, and real runs against real
local Ray clusters (one that `dlactor launch` starts itself, one started by `ray start`).

The clusters run with token authentication (Ray >= 2.52) on a token of the test's own, and
in temp directories of their own: nothing here depends on, or leaves, ~/.ray or /tmp/ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from typer.testing import CliRunner

from dlactor.cli import app
from dlactor.config import RayLauncher, load_config
from dlactor.launch.plan import make_plan
from dlactor.testing import ray_head, run_in_memory
from tests.conftest import small_plan
from tests.launch.test_end_to_end import EXAMPLE, FAULTY, records

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.toml"
SMALL_RUN = ["launcher.kind=ray", "nodes=4", "rounds=3", "topology.degree=3"]


# --- settings: fast, no Ray cluster -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("launcher.cpus_per_node=0", "launcher.cpus_per_node"),
        ("launcher.cpus_per_node=many", "launcher.cpus_per_node"),
        ("launcher.control_port=70000", "launcher.control_port"),
        ("launcher.address=''", "launcher.address"),
        ("launcher.host=0.0.0.0", "launcher.host"),  # the local backend's setting, not Ray's
        ("launcher.round_timeout_s=0", "launcher.round_timeout_s"),
        ("launcher.node_port_base=65534", "launcher.node_port_base"),  # 4 nodes do not fit
    ],
)
def test_an_invalid_ray_setting_exits_2_naming_it_before_anything_starts(
    tmp_path: Path, override: str, named: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["launch", str(QUICKSTART), "--out", str(tmp_path), "--no-progress",
         "--set", "launcher.kind=ray", "--set", override],
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    assert named in result.output
    assert list(tmp_path.iterdir()) == []


def test_setting_the_launcher_kind_to_ray_selects_the_ray_backend_afresh() -> None:
    # example.toml's [launcher] sets round_timeout_s = 30, for the local backend it implies
    launcher = load_config(EXAMPLE, ["launcher.kind=ray", "launcher.address=auto"]).launcher

    assert isinstance(launcher, RayLauncher)
    assert launcher.address == "auto" and launcher.cpus_per_node == 0.25
    assert launcher.round_timeout_s == 120  # the table started afresh, as for every kind


def test_a_local_cluster_has_the_cores_or_what_the_workers_reserve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dlactor.launch.ray import local_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    workers = load_config(EXAMPLE, ["launcher.kind=ray", "launcher.placement=workers"]).launcher
    agents = load_config(EXAMPLE, ["launcher.kind=ray", "launcher.placement=agents"]).launcher
    assert isinstance(workers, RayLauncher) and isinstance(agents, RayLauncher)
    assert local_cpus(workers, 4) == 2  # 4 x 0.25 CPU: the cores are more
    assert local_cpus(workers, 64) == 16
    assert local_cpus(agents, 64) == 2  # an agent reserves no CPU


def test_a_launcher_table_without_kind_is_the_local_backend() -> None:
    plan = small_plan()  # conftest's launcher table names timeouts only

    assert plan.config.launcher.kind == "local"
    assert plan.config.launcher.round_timeout_s == 20


def test_importing_dlactor_does_not_import_ray() -> None:
    code = (
        "import sys, dlactor, dlactor.cli, dlactor.launch.run, dlactor.launch.local; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- what travels to Ray workers: no cluster ---------------------------------------------


def test_a_packed_plan_carries_the_dataset_as_arrays_that_the_nodes_tensors_view() -> None:
    from ray import cloudpickle  # what Ray serializes with

    from dlactor.launch.ray import PackedPlan

    plan = small_plan()

    packed = cloudpickle.loads(cloudpickle.dumps(PackedPlan.pack(plan)))
    for array in packed.dataset.values():
        if hasattr(array, "flags"):
            array.flags.writeable = False  # as Ray's object store hands them out
    back = packed.unpack()

    assert {"x_train", "y_train", "x_test", "y_test"} <= packed.tensors
    assert torch.equal(back.dataset.x_train, plan.dataset.x_train)
    assert torch.equal(back.dataset.y_test, plan.dataset.y_test)
    x = packed.dataset["x_train"]
    assert back.dataset.x_train.data_ptr() == x.__array_interface__["data"][0]  # no copy
    assert back.run_id == plan.run_id and dict(back.keys.ring) == dict(plan.keys.ring)
    with pytest.raises(LookupError, match="no private key"):  # public keys only travel
        back.keys.credentials(0, back.run_id)
    assert [p.tolist() for p in back.parts] == [p.tolist() for p in plan.parts]
    assert back.config == plan.config


def test_a_node_writes_into_the_run_directory_only_where_it_sees_this_runs_manifest(
    tmp_path: Path,
) -> None:
    from dlactor.launch.ray import results_dir

    run_dir = tmp_path / "run-1"
    run_dir.mkdir()
    elsewhere = results_dir(run_dir, "abc")  # another machine: no manifest there
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": "abc"}))

    assert results_dir(run_dir, "abc") == run_dir
    assert results_dir(run_dir, "another-run") != run_dir
    assert elsewhere != run_dir and elsewhere.name == "run-1-abc"


def test_a_node_spooled_elsewhere_hands_its_results_over_once(tmp_path: Path) -> None:
    from dlactor.launch.ray import RayNode

    node = RayNode()
    assert node.results() is None  # wrote into the run directory itself
    node._results = tmp_path / "nodes" / "3.jsonl"
    node._results.parent.mkdir()
    node._results.write_text('{"round":0}\n')

    assert node.results() == '{"round":0}\n'
    assert node.results() is None


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (
            "The actor died unexpectedly before finishing this task.\n\tclass_name: RayNode\n"
            "The actor is dead because its worker process has died. Worker exit type: ...",
            "lost its Ray worker (Boom: its worker process has died)",
        ),
        (
            "The actor died unexpectedly before finishing this task.\n"
            "The actor is dead because it was killed by `ray.kill`.",
            "lost its Ray worker (Boom: it was killed by `ray.kill`)",
        ),
        (
            "ray::RayNode.run() (pid=1, ip=10.0.0.2)\n  File ...\nModuleNotFoundError: torch",
            "lost its Ray worker (Boom: ModuleNotFoundError: torch)",
        ),
    ],
)
def test_what_ray_says_of_a_lost_node_becomes_one_line(message: str, said: str) -> None:
    from dlactor.launch.ray import describe_ray_error

    class Boom(Exception):
        pass

    assert describe_ray_error(Boom(message)) == said


# --- real runs against real local Ray clusters --------------------------------------------


class Launch:
    """`dlactor launch` in a subprocess, its output in files (Ray is talkative), and the Ray
    workers that ran its nodes (``ray::RayNode`` processes under ``root``) as seen while
    it ran."""

    def __init__(
        self, out: Path, env: dict[str, str], overrides: list[str], config: Path = QUICKSTART
    ) -> None:
        self.out, self.workers, self.ports = out, set[int](), set[int]()
        self.out.mkdir(parents=True, exist_ok=True)
        sets = [arg for o in overrides for arg in ("--set", o)]
        cmd = [sys.executable, "-m", "dlactor", "launch", str(config), "--out", str(out / "runs"),
               "--no-progress", *sets]  # fmt: skip
        with (out / "stdout").open("w") as so, (out / "stderr").open("w") as se:
            self.proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)

    def finish(
        self, root: int | None = None, until: Callable[[], bool] | None = None
    ) -> tuple[int, str, str]:
        """Wait for the launcher (up to 150 s), watching for node workers under ``root``
        (default: the launcher itself, whose local cluster is its own child)."""
        deadline = time.monotonic() + 150
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.workers |= node_workers(root or self.proc.pid)
            self.ports |= {port for pid in self.workers for port in listening(pid)}
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        return code, (self.out / "stdout").read_text(), (self.out / "stderr").read_text()

    def run_dir(self) -> Path:
        (only,) = (self.out / "runs").iterdir()
        return only


def node_workers(root: int) -> set[int]:
    """Pids of the Ray workers running a node (their title is ``ray::RayNode...``)."""
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for kid in kids:
        try:
            if " ".join(kid.cmdline()).startswith("ray::RayNode"):
                found.add(kid.pid)
        except psutil.Error:
            continue
    return found


def listening(pid: int) -> set[int]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def assert_gone(pids: set[int]) -> None:
    for pid in pids:
        if psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"worker {pid} lives"


def assert_complete_results(rd: Path, nodes: int, rounds: int) -> dict[str, Any]:
    manifest = json.loads((rd / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["backend"] == "ray" and manifest["end"]
    assert manifest["versions"]["ray"] != "absent"
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["nodes"] == nodes and summary["rounds"] == rounds
    assert summary["final"]["test_acc_mean"] > 0.1
    for node in range(nodes):
        recs = records(rd / "nodes" / f"{node}.jsonl")
        assert [r["round"] for r in recs] == list(range(rounds))
        assert all(r["node"] == node and r["bytes_sent"] > 0 for r in recs)
    return manifest


def test_a_run_on_a_local_ray_cluster_it_starts_itself_completes_and_leaves_no_worker(
    tmp_path: Path, ray_env: dict[str, str]
) -> None:
    env = {**ray_env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="dll-", dir="/tmp")}
    try:
        launch = Launch(tmp_path, env, [*SMALL_RUN, "launcher.placement=workers"])
        code, out, err = launch.finish()
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)

    assert code == 0, err
    assert "Traceback" not in err  # nothing left running to be cancelled and logged
    manifest = assert_complete_results(launch.run_dir(), nodes=4, rounds=3)
    assert len(manifest["hosts"]) == 1  # one machine: this one
    # The cluster's own start is in the command's time, before the plan: the summary says it.
    summary = json.loads((launch.run_dir() / "summary.json").read_text())
    assert summary["cluster_start_s"] > 0.1
    assert "agents_waited_s" not in summary  # a worker per node: no agents to wait for
    assert "run quickstart" in out and "4 nodes (ray)" in err
    assert len(launch.workers) == 4, "each node is a Ray worker process of its own"
    assert_gone(launch.workers)


LOCAL_CLUSTER = """
import json, os, subprocess, sys
import psutil, ray
from dlactor.config import RayLauncher
from dlactor.launch.ray import RayBackend

probe = ("import sys; from ray._raylet import GcsClient; "
         "GcsClient(address=sys.argv[1]).internal_kv_keys(b'', None)")
with RayBackend.connect(RayLauncher(), 2):
    ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker, listening too
    bound = []
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        bound += [[p.name(), c.laddr.ip, c.laddr.port] for c in conns if not c.raddr]
    gcs = ray.get_runtime_context().gcs_address
    clients = {"own": {}, "wrong": {"RAY_AUTH_TOKEN": "0" * 64},
               "none": {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""}}
    asked = {
        who: subprocess.run([sys.executable, "-c", probe, gcs], capture_output=True, text=True,
                            env={**os.environ, **change}, timeout=60)
        for who, change in clients.items()
    }
print(json.dumps({"bound": bound, "gcs": gcs, "asked": {
    who: [r.returncode, "InvalidAuthToken" in r.stderr, r.stderr[-300:]] for who, r in asked.items()
}}))
"""


def test_a_local_ray_cluster_listens_on_loopback_only_and_refuses_a_client_without_its_token(
    tmp_path: Path, ray_env: dict[str, str]
) -> None:
    """The cluster the backend starts (no RAY_AUTH_* given: dlactor turns token
    authentication on with a token of its own, kept out of ~/.ray). Every socket its
    processes bound (GCS, raylet, object manager, agents, workers, the driver) is on
    loopback; a GCS client holding the token is answered, one with another token or none
    is refused."""
    import ipaddress

    env = {k: v for k, v in ray_env.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), RAY_TMPDIR=tempfile.mkdtemp(prefix="dlb-", dir="/tmp"))
    try:
        out = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=150)  # fmt: skip
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return (mapped or addr).is_loopback

    names = {name for name, _, _ in seen["bound"]}
    assert {"gcs_server", "raylet", "ray::IDLE"} <= names, seen["bound"]
    assert [b for b in seen["bound"] if not loopback(b[1])] == []
    assert seen["gcs"].startswith("127.0.0.1:")
    asked = seen["asked"]
    assert asked["own"][0] == 0, asked["own"]
    assert asked["wrong"][:2] == [1, True], asked["wrong"]
    assert asked["none"][:2] == [1, True], asked["none"]
    assert not (tmp_path / ".ray").exists()  # the token was never written to ~/.ray


@pytest.fixture(scope="module")
def ray_cluster(ray_env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    """A head node started with `ray start --head --block`: stopping that process (SIGTERM)
    stops every process it started, and only those (unlike `ray stop`, which stops every
    Ray process of the machine)."""
    with ray_head(ray_env, cpus=2) as (address, head):
        yield address, psutil.Process(head.pid)


def test_a_fedavg_run_on_a_running_cluster_given_by_address_completes_and_leaves_no_worker(
    tmp_path: Path, ray_env: dict[str, str], ray_cluster: tuple[str, psutil.Process]
) -> None:
    """FedAvg's server is an actor like its clients; on an emulated network with a device
    profile, every process's virtual timeline is the one the same config gives in one
    process on the in-memory transport; the nodes listen where node_port_base says."""
    address, head = ray_cluster
    base = 20000 + secrets.randbelow(20000)
    run = ["nodes=4", "rounds=3", "evaluation.every=1", "algorithm.fraction=0.5",
           "network.uplink_mbps=20", "network.latency_ms=25", "network.jitter_ms=5",
           'network.compute="profile"', "network.step_ms=3"]  # fmt: skip
    overrides = ["launcher.kind=ray", f"launcher.address={address}", "launcher.placement=workers",
                 f"launcher.node_port_base={base}", *run]  # fmt: skip
    launch = Launch(tmp_path, ray_env, overrides, config=QUICKSTART.parent / "fedavg.toml")

    code, _out, err = launch.finish(root=head.pid)

    assert code == 0, err
    rd = launch.run_dir()
    assert len(launch.workers) == 5  # 4 clients and the server
    server = records(rd / "nodes" / "server-4.jsonl")
    assert [len(r["clients"]) for r in server] == [2, 2, 2]
    assert all(r["bytes_sent"] > 0 and r["bytes_recv"] > 0 for r in server)
    for node in range(4):
        recs = records(rd / "nodes" / f"{node}.jsonl")
        assert [r["sampled"] for r in recs] == [node in r["clients"] for r in server]
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final"]["test_acc_mean"] == server[-1]["test_acc"]
    assert "cluster_start_s" not in summary  # it joined a running cluster
    # Where the processes listened, as they registered it.
    manifest = json.loads((rd / "manifest.json").read_text())
    ports = {int(a.rsplit(":", 1)[1]) for a in manifest["addresses"].values()}
    assert ports == set(range(base, base + 5))
    assert_gone(launch.workers)
    assert node_workers(head.pid) == set()
    plan = make_plan(load_config(QUICKSTART.parent / "fedavg.toml", run))
    in_memory = asyncio.run(run_in_memory(plan))
    for process, expected in in_memory.items():
        name = f"server-{process}" if process == 4 else str(process)
        got = records(rd / "nodes" / f"{name}.jsonl")
        assert [r["t_virtual"] for r in got] == [r["t_virtual"] for r in expected]


def test_a_node_that_raises_on_a_ray_cluster_fails_the_run_once_and_stops_every_worker(
    tmp_path: Path, ray_env: dict[str, str], ray_cluster: tuple[str, psutil.Process]
) -> None:
    """The plugin is a .py file next to the config: its code travels to the Ray workers."""
    address, head = ray_cluster
    overrides = ["launcher.kind=ray", f"launcher.address={address}", "nodes=4", *FAULTY,
                 "launcher.placement=workers", "training.fail_node=2",
                 "training.fail_round=2"]  # fmt: skip
    launch = Launch(tmp_path, ray_env, overrides, config=EXAMPLE)

    code, _out, err = launch.finish(root=head.pid)

    assert code == 1, err
    assert err.count("RuntimeError: injected failure on node 2 at round 2") == 1
    assert "run failed: node 2 raised an exception" in err
    rd = launch.run_dir()
    assert json.loads((rd / "manifest.json").read_text())["status"] == "failed"
    assert json.loads((rd / "summary.json").read_text())["status"] == "failed"
    assert len(records(rd / "nodes" / "2.jsonl")) == 2  # rounds 0 and 1 were kept
    assert len(launch.workers) == 4
    assert_gone(launch.workers)
    assert node_workers(head.pid) == set()


def test_asking_more_cpus_than_the_cluster_has_exits_2_naming_cpus_per_node(
    tmp_path: Path, ray_env: dict[str, str], ray_cluster: tuple[str, psutil.Process]
) -> None:
    address, _ = ray_cluster
    overrides = [*SMALL_RUN, f"launcher.address={address}", "launcher.cpus_per_node=1",
                 "launcher.placement=workers"]  # fmt: skip

    code, _out, err = Launch(tmp_path, ray_env, overrides).finish()

    assert code == 2
    assert "launcher.cpus_per_node: 4 nodes x 1 CPU = 4 CPUs, but the Ray cluster has 2" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
