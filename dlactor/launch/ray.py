"""The Ray backend: node processes placed by a Ray cluster, running the same node code.

``launcher.kind = "ray"`` (the ``ray`` extra). This process (the Ray driver) connects to a
cluster, or starts a local one when ``launcher.address`` is unset, and starts one Ray
actor per node: each actor is a dedicated Ray worker process, so one node, one OS process,
as under the local backend. Its ``run`` is :func:`dlactor.launch.worker.node_process_main`,
the forked nodes' own body: hello, TCP transport, register, start barrier, rounds,
``Done``/``Failed``. Nodes talk to each other and to the launcher's control channel over
dlactor's TCP; Ray carries only the plan (once per machine, through its object store) and
the actors' lifecycle. The supervisor is the local backend's (``dlactor.launch.supervisor``),
seeing the actors through :class:`RayNodes`.

What travels through Ray is pickled (Ray's serialization between a driver and its own
workers: the cluster's trusted channel). Nothing a node receives from a peer or sends to
the launcher is: that is dlactor's wire format, as under every backend.

Importing this module imports ray: only ``dlactor.launch.run`` does, and only for a Ray run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
import ray._private.ray_constants
import ray._raylet
import ray.cloudpickle
import torch

from dlactor import plugins
from dlactor.config import ConfigError, RayLauncher
from dlactor.data.base import Dataset
from dlactor.launch.agents import AgentNodes, Machine, check_capacity
from dlactor.launch.plan import Plan
from dlactor.launch.supervisor import STOP_GRACE_S, Outcome, Supervisor, describe_exit
from dlactor.launch.worker import node_process_main, results_path, run_event_loop
from dlactor.metrics.jsonio import write_atomic
from dlactor.security.identity import LAUNCHER, Identity
from dlactor.transport.base import Address

__all__ = [
    "PackedPlan",
    "RayBackend",
    "RayNode",
    "RayNodes",
    "describe_ray_error",
    "ray_error_reason",
    "results_dir",
    "wait_gone",
]

#: Where a node listens: host (None: its Ray node's IP address) and port (0: any free one).
NodeListen = tuple[str | None, int]

#: How long the launcher waits for what it asks a node's actor after the run (its results).
FETCH_TIMEOUT_S = 30.0
#: How long it waits for killed actors' processes on this machine to be gone.
KILL_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class PackedPlan:
    """A :class:`Plan` as it travels to Ray workers: the dataset's tensors as numpy arrays.

    Ray stores numpy arrays out of band in its shared-memory object store, and a worker
    deserializes them as read-only views of it: every node on one machine shares one copy
    of the dataset, as forked nodes share the template's. (A torch tensor would be pickled
    in band, and copied into every worker.)
    """

    plan: dict[str, Any]  # the Plan's fields but the dataset
    dataset: dict[str, Any]  # the Dataset's fields, tensors as numpy arrays
    tensors: frozenset[str]  # which dataset fields were tensors

    @classmethod
    def pack(cls, plan: Plan) -> PackedPlan:
        fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
        fields["keys"] = plan.keys.public_only()  # no private key travels
        data = {f.name: getattr(plan.dataset, f.name) for f in dataclasses.fields(plan.dataset)}
        tensors = frozenset(k for k, v in data.items() if isinstance(v, torch.Tensor))
        for name in tensors:
            data[name] = data[name].numpy()
        del fields["dataset"]
        return cls(plan=fields, dataset=data, tensors=tensors)

    def unpack(self) -> Plan:
        data = dict(self.dataset)
        with warnings.catch_warnings():
            # The arrays are read-only views of Ray's object store; nodes only read the
            # dataset (they index it, which copies), so tensors over them are safe.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            for name in self.tensors:
                data[name] = torch.from_numpy(np.asarray(data[name]))
        return Plan(dataset=Dataset(**data), **self.plan)


def results_dir(run_dir: Path, run_id: str) -> Path:
    """Where a node writes its results on the machine it runs on: the run directory itself
    when that machine sees it (the launcher's machine, or a shared filesystem: the manifest
    there names this run); else a spool directory on that machine, which the launcher
    fetches through Ray when the node has finished (``RayNode.results``)."""
    try:
        seen = json.loads((run_dir / "manifest.json").read_text()).get("run_id")
    except (OSError, ValueError):
        seen = None
    if seen == run_id:
        return run_dir
    return Path(tempfile.gettempdir()) / "dlactor-results" / f"{run_dir.name}-{run_id}"


class RayNode:
    """One node's process: a Ray actor (its own worker process) that runs the node code.

    Ray runs ``where``, ``run`` and ``results`` one after the other, in the order the
    launcher calls them, on the worker's main thread.
    """

    def __init__(self) -> None:
        self._results: Path | None = None
        self._identity: Identity | None = None

    def identity(self, node: int) -> bytes:
        """Make this node's key pair, here: the private key never leaves this process. The
        public key goes to the launcher, which puts it in the run's key ring."""
        self._identity = Identity.generate(node)
        return self._identity.public

    def where(self) -> tuple[int, str]:
        """This worker's pid and its Ray node's IP address."""
        return os.getpid(), ray.util.get_node_ip_address()

    def run(
        self, packed: PackedPlan, node: int, control: Address, run_dir: Path, listen: NodeListen
    ) -> int:
        """Run node ``node`` to its end; its exit code (``dlactor.launch.worker.EXIT_*``).
        It listens on ``listen`` (host None: this Ray node's IP address; port 0: any)."""
        plan = packed.unpack()
        if self._identity is None or self._identity.process != node:
            raise RuntimeError(f"node {node}'s actor has no identity: call identity() first")
        credentials = plan.keys.credentials_for(self._identity, plan.run_id)
        here = results_dir(run_dir, plan.run_id)
        if here != run_dir:
            self._results = results_path(here, node, plan.servers)
        host, port = listen
        host = host or ray.util.get_node_ip_address()
        # No parent to die with: Ray ends an actor whose driver goes away, and the node
        # stops when the launcher's control connection closes.
        return node_process_main(
            plan, node, control, here, host=host, port=port, parent=None, credentials=credentials
        )

    def results(self) -> str | None:
        """The results this node spooled on its machine (then removed there), or None if it
        wrote them into the run directory itself."""
        if self._results is None or not self._results.exists():
            return None
        text = self._results.read_text(encoding="utf-8")
        with contextlib.suppress(OSError):
            self._results.unlink()
        return text


class RayNodes:
    """:class:`dlactor.launch.supervisor.NodeProcesses` over Ray actors, one per node.

    A node "runs" until its ``run`` call returns (its exit code) or fails (its worker
    died: killed, out of memory, its machine lost). Pids are known once each worker has
    answered ``where``; only those on this machine (same IP as the driver's Ray node)
    are sampled for memory.
    """

    def __init__(self, here: str, servers: range = range(0)) -> None:
        self.here, self.servers = here, servers
        self.handles: list[Any] = []
        self.runs: list[concurrent.futures.Future[int]] = []
        self.wheres: list[concurrent.futures.Future[tuple[int, str]]] = []

    def create(self, settings: RayLauncher, nodes: int) -> dict[int, bytes]:
        """Start one actor per node, keeping each as soon as it exists (so that a failure
        halfway leaves ``finish`` every actor to kill); each makes its key pair. Their
        public keys, by node (RuntimeError if they do not all answer within
        ``start_timeout_s``)."""
        actor = ray.remote(RayNode).options(
            num_cpus=settings.cpus_per_node,
            scheduling_strategy="SPREAD",
            max_restarts=0,
            max_task_retries=0,
        )
        keys = []
        for node in range(nodes):
            handle: Any = actor.remote()  # ActorHandle[RayNode]: Ray types no .remote on methods
            self.handles.append(handle)
            self.wheres.append(handle.where.remote().future())
            keys.append(handle.identity.remote(node).future())
        _, missing = concurrent.futures.wait(keys, timeout=settings.start_timeout_s)
        if missing or any(key.exception() is not None for key in keys):
            raise RuntimeError(f"{len(missing)} Ray actors did not make their keys in time")
        return {node: key.result() for node, key in enumerate(keys)}

    def start(
        self, packed: Any, settings: RayLauncher, control: Address, run_dir: Path, host: str | None
    ) -> None:
        """Run every node created (``create``) on the plan."""
        base = settings.node_port_base
        for node, handle in enumerate(self.handles):
            listen = (host, 0 if base is None else base + node)
            self.runs.append(handle.run.remote(packed, node, control, run_dir, listen).future())

    def ended(self, node: int) -> str | None:
        run = self.runs[node]
        if not run.done():
            return None
        exc = run.exception()
        return describe_exit(run.result()) if exc is None else describe_ray_error(exc)

    def kill(self, node: int) -> None:
        if not self.runs[node].done():
            ray.kill(self.handles[node], no_restart=True)

    def placement(self) -> dict[int, tuple[int, str]]:
        """(pid, IP) of each node whose worker has said where it runs."""
        return {
            node: where.result()
            for node, where in enumerate(self.wheres)
            if where.done() and where.exception() is None
        }

    def local_pids(self) -> list[int]:
        return [pid for pid, ip in self.placement().values() if ip == self.here]

    def template_pids(self) -> list[int]:
        return []  # every node is a worker of its own

    def hosts(self) -> list[str]:
        return sorted({ip for _, ip in self.placement().values()})

    def finish(self, run_dir: Path, *, grace_s: float) -> None:
        """After the supervisor: give the nodes ``grace_s`` to return from ``run`` (after
        ``Done`` they are still closing sockets and files), fetch the results spooled on
        other machines, then kill every actor and wait until those on this machine are
        gone."""
        concurrent.futures.wait(self.runs, timeout=grace_s)
        self._fetch_results(run_dir)
        pids = self.local_pids()
        for handle in self.handles:
            ray.kill(handle, no_restart=True)
        wait_gone(pids, KILL_WAIT_S)

    def _fetch_results(self, run_dir: Path) -> None:
        """Results of the nodes that ran elsewhere and returned from ``run`` (an actor that
        died took its answer with it; its spool file stays on its machine)."""
        asked = {
            node: self.handles[node].results.remote().future()
            for node, (_, ip) in self.placement().items()
            if ip != self.here
            and node < len(self.runs)
            and self.runs[node].done()
            and self.runs[node].exception() is None
        }
        concurrent.futures.wait(asked.values(), timeout=FETCH_TIMEOUT_S)
        for node, answer in asked.items():
            text = answer.result() if answer.done() and answer.exception() is None else None
            if text is not None:
                path = results_path(run_dir, node, self.servers)
                write_atomic(path, text)  # whole lines or none


def describe_ray_error(exc: BaseException, lost: str = "its Ray worker") -> str:
    """What Ray says of a node's failed call, in words that follow "node 3 ": the actor
    that ran it (``lost``: its worker, or its machine's agent) died (how, as Ray puts it),
    or the call raised outside the node code."""
    return f"lost {lost} ({ray_error_reason(exc)})"


def ray_error_reason(exc: BaseException) -> str:
    """``Type: why`` of a Ray error in one line: why the actor died, as Ray puts it, or the
    last line of what the call raised."""
    text = str(exc)
    died = re.search(r"The actor (?:is dead|died) because (.*?)\.(?:\s|$)", text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    why = died.group(1) if died else (lines[-1] if lines else type(exc).__name__)
    return f"{type(exc).__name__}: {why}"


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until these processes have exited (zombies count as gone: not ours to reap)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(max(0.0, deadline - time.monotonic()))


class RayBackend:
    """A connection to a Ray cluster, and runs on it. Build it with :meth:`connect`."""

    def __init__(
        self,
        settings: RayLauncher,
        *,
        control_host: str,
        node_host: str | None,
        machines: list[Machine] | None = None,
        agents: AgentNodes | None = None,
        cluster_start_s: float | None = None,
    ):
        self.settings = settings
        self.control_host = control_host
        self.node_host = node_host  # None: each node its own Ray node's IP
        self.machines = machines or []  # placement "agents": where the agents go
        self.agents = agents  # placement "agents": placed as the backend connected
        #: How long starting a local cluster took (None: it joined a running one); the
        #: first launch's summary says it, as it is in that command's time.
        self.cluster_start_s = cluster_start_s

    @classmethod
    @contextlib.contextmanager
    def connect(cls, settings: RayLauncher, nodes: int) -> Iterator[RayBackend]:
        """Connect to ``settings.address`` (or start a local cluster) and check that the
        cluster has the CPUs the nodes ask for; disconnect (stopping a cluster started
        here) on the way out. A cluster that cannot be reached or is too small is a
        ConfigError naming the setting."""
        _check_ports(settings, nodes)
        cluster_start_s = _init(settings, nodes)
        agents = None
        try:
            found = None
            here = ray.util.get_node_ip_address()
            if settings.placement == "agents":
                found = check_capacity(settings, nodes)
                agents = AgentNodes(here)
                agents.place(nodes, found)  # their workers start while the launcher goes on
            else:
                _check_cpus(settings, nodes)
            local = settings.address is None
            yield cls(
                settings,
                control_host=settings.control_host or ("127.0.0.1" if local else here),
                node_host="127.0.0.1" if local else None,
                machines=found,
                agents=agents,
                cluster_start_s=cluster_start_s,
            )
        finally:
            if agents is not None:
                agents.kill_agents()
            ray.shutdown()

    def launch(self, plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome:
        """Start one actor per node, supervise them to the end, and say how it went. Every
        actor is killed on the way out, whatever happened (after a successful run, they
        get ``STOP_GRACE_S`` to return on their own first)."""
        backlog = min(4096, plan.processes + 64)
        listener = socket.create_server(
            (self.control_host, self.settings.control_port), backlog=backlog
        )
        here = ray.util.get_node_ip_address()
        cluster_start_s, self.cluster_start_s = self.cluster_start_s, None  # this launch's
        nodes: RayNodes | AgentNodes
        if self.settings.placement == "agents":
            nodes, self.agents = self.agents or AgentNodes(here), None  # they serve one launch
            if not nodes.agents:  # a second launch on this backend
                nodes.place(plan.processes, self.machines)
            nodes.servers = plan.servers
        else:
            nodes = RayNodes(here=here, servers=plan.servers)
        outcome: Outcome | None = None
        try:
            outcome = self._start_and_supervise(plan, nodes, listener, run_dir, show_progress)
        except KeyboardInterrupt:
            outcome = Outcome(status="interrupted", reason="interrupted (Ctrl-C)")
        finally:
            listener.close()
            ok = outcome is not None and outcome.status == "ok"
            nodes.finish(run_dir, grace_s=STOP_GRACE_S if ok else 0)
        # Whatever the outcome, even a start that failed: where it ran, and its start-up.
        outcome.hosts = nodes.hosts()
        outcome.cluster_start_s = cluster_start_s
        if isinstance(nodes, AgentNodes):
            outcome.machines = nodes.machines()
            outcome.agents_waited_s = nodes.waited_s
        return outcome

    def _start_and_supervise(
        self,
        plan: Plan,
        nodes: RayNodes | AgentNodes,
        listener: socket.socket,
        run_dir: Path,
        show_progress: bool,
    ) -> Outcome:
        """Have Ray start the nodes on the plan, and supervise them to the end."""
        _ship_plugin_code()
        try:
            plan.keys.add_public(nodes.create(self.settings, plan.processes))
        except RuntimeError as exc:
            return Outcome(status="failed", reason=f"start barrier: {exc}")
        if plan.keys.tls:
            plan.keys.enable_tls(plan.run_id)  # certificates for the nodes' own keys
        packed = ray.put(PackedPlan.pack(plan))
        control = listener.getsockname()[:2]
        nodes.start(packed, self.settings, control, run_dir, self.node_host)
        credentials = plan.keys.credentials(LAUNCHER, plan.run_id)
        supervisor = Supervisor(
            plan, nodes, listener, run_dir, show_progress=show_progress, credentials=credentials
        )
        return run_event_loop(supervisor.run())


def _init(settings: RayLauncher, nodes: int) -> float | None:
    """Start a local cluster sized for the nodes, or connect to ``settings.address``: how
    long the local cluster took to start (None: connected).

    SIGINT is blocked while a local cluster starts: its processes (GCS, raylet, and the
    workers the raylet starts) inherit the mask, so a Ctrl-C from the terminal reaches this
    launcher, which stops the run, and not the cluster under it.
    """
    if settings.address is None:
        cpus = local_cpus(settings, nodes)
        # Token authentication (Ray >= 2.52): the launcher and the cluster's processes,
        # which inherit this environment, hold the token; nothing else does. A fresh one
        # unless RAY_AUTH_TOKEN is set, never written to ~/.ray (as Ray's own would be).
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        ray._raylet.Config.initialize("")  # type: ignore[attr-defined]  # reread: as Ray does
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        started = time.monotonic()
        try:
            with _loopback_only():
                ray.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return time.monotonic() - started
    try:
        ray.init(address=settings.address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"invalid config:\n  launcher.address: no Ray cluster at {settings.address!r}: {exc}"
        ) from exc
    return None


def local_cpus(settings: RayLauncher, nodes: int) -> int:
    """The CPUs a local cluster is started with: this machine's cores, or under placement
    "workers" the nodes' ``cpus_per_node`` if more (each worker reserves it). Agents reserve
    none, so ``cpus_per_node``, a workers setting, does not size their cluster."""
    cores = os.cpu_count() or 1
    if settings.placement == "agents":
        return cores
    return max(cores, math.ceil(nodes * settings.cpus_per_node))


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local cluster starts: its node address is 127.0.0.1, so that its servers
    (GCS, raylet, object manager, workers, agents) listen on loopback only. On Linux Ray
    replaces a loopback node address with the machine's outward IP, unless in its
    single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which Ray reads when
    imported: hence the constant too. The cluster's processes keep the variable."""
    constants = ray._private.ray_constants
    env, flag = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env


def _check_ports(settings: RayLauncher, nodes: int) -> None:
    base = settings.node_port_base
    if base is not None and base + nodes - 1 > 65535:
        raise ConfigError(
            f"invalid config:\n  launcher.node_port_base: {nodes} nodes from port {base} "
            f"go past 65535"
        )


def _check_cpus(settings: RayLauncher, nodes: int) -> None:
    needed = nodes * settings.cpus_per_node
    total = ray.cluster_resources().get("CPU", 0.0)
    if needed > total + 1e-9:
        raise ConfigError(
            f"invalid config:\n  launcher.cpus_per_node: {nodes} nodes x "
            f"{settings.cpus_per_node:g} CPU = {needed:g} CPUs, but the Ray cluster has "
            f"{total:g}; lower it, or add machines"
        )


def _ship_plugin_code() -> None:
    """Plugins imported from ``.py`` files have no importable name in a Ray worker: their
    code travels by value with the config that uses them (installed plugin packages are
    imported by name, so they must be installed on every machine, as dlactor is)."""
    for module in plugins.file_modules():
        ray.cloudpickle.register_pickle_by_value(module)
