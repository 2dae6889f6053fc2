"""Ray at the density of one machine: an agent actor per machine forks that machine's nodes.

``launcher.kind = "ray"`` with ``placement = "agents"`` (the default). The launcher (the Ray
driver) places one :class:`RayAgent` on each machine the run uses (each alive Ray node,
pinned there by node affinity) and gives each its share of the nodes. An agent makes its
nodes' key pairs (their private keys never leave its machine), then takes the plan from
Ray's object store (one copy per machine: the dataset's arrays are read-only views of the
store, which its children share), warms up as the local launcher's template does, and
forks its nodes from itself (``dlactor.launch.local.forking_template``). Its children run
``node_process_main``, the same node code as every backend's, and die with it (the
kernel's parent-death signal). The nodes, the wire, the control protocol and the results are
the local launcher's; only who forks them changes.

The launcher sees the nodes through :class:`AgentNodes`, the supervisor's view: an agent is
asked every ``POLL_S`` which of its children have ended, and an agent that Ray says is dead
(its process killed, its machine lost) fails every node it still ran.

How many nodes a machine gets: ``launcher.nodes_per_machine`` each if set, else as many as
the memory Ray reports for it holds at ``launcher.memory_per_node_mib`` each; the nodes are
split in proportion to that (:func:`split`). A cluster that cannot hold the run is refused
before anything starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dlactor.config import ConfigError, RayLauncher
from dlactor.launch.local import ensure_open_files, forking_template, reap
from dlactor.launch.plan import import_optimizers
from dlactor.launch.supervisor import describe_exit
from dlactor.launch.worker import node_process_main, results_path
from dlactor.metrics.jsonio import write_atomic
from dlactor.security.identity import Identity
from dlactor.transport.base import Address

__all__ = ["AgentNodes", "Machine", "RayAgent", "machines", "split"]

#: How often the launcher asks each agent which of its nodes have ended (s).
POLL_S = 0.2
#: How long the launcher waits for an agent's answers after the run (its nodes' results).
FETCH_TIMEOUT_S = 30.0
#: How long an agent gives its nodes to exit after the run, before killing them (s).
AGENT_STOP_S = 10.0

#: Where a node listens: host (None: its machine's IP address) and port (0: any free one).
NodeListen = tuple[str | None, int]


@dataclasses.dataclass(frozen=True)
class Machine:
    """One Ray node as the launcher plans with it: its id, IP, and how many nodes it holds."""

    node_id: str
    ip: str
    capacity: int
    memory_mib: float = 0.0  # the memory Ray reports it can give tasks


def machines(settings: RayLauncher) -> list[Machine]:
    """The cluster's alive Ray nodes and what each holds: ``nodes_per_machine`` if set,
    else its Ray ``memory`` over ``memory_per_node_mib``."""
    found = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        memory_mib = info.get("Resources", {}).get("memory", 0.0) / (1 << 20)
        capacity = (
            settings.nodes_per_machine
            if settings.nodes_per_machine is not None
            else int(memory_mib // settings.memory_per_node_mib)
        )
        found.append(Machine(info["NodeID"], info["NodeManagerAddress"], capacity, memory_mib))
    return sorted(found, key=lambda m: (m.ip, m.node_id))


def split(processes: int, capacities: Sequence[int]) -> list[int]:
    """How many of ``processes`` each machine gets, in proportion to ``capacities`` (largest
    remainders first, never above a machine's capacity): ValueError if they cannot hold
    them all."""
    total = sum(capacities)
    if processes > total:
        raise ValueError(f"{processes} processes, room for {total}")
    shares = [processes * c / total for c in capacities]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: processes - sum(counts)]:
        counts[i] += 1
    return counts


def check_capacity(settings: RayLauncher, processes: int) -> list[Machine]:
    """The machines, if together they hold ``processes``; else ConfigError naming the
    setting that sized them."""
    found = machines(settings)
    room = sum(m.capacity for m in found)
    if processes <= room:
        return found
    if settings.nodes_per_machine is not None:
        field, advice = "nodes_per_machine", "raise it"
        why = f"{len(found)} machines x {settings.nodes_per_machine} nodes = {room}"
    else:
        field, advice = "memory_per_node_mib", "lower it"
        why = (
            f"the cluster's {len(found)} machines hold {room} nodes at "
            f"{settings.memory_per_node_mib:g} MiB each ({sum(m.memory_mib for m in found):,.0f}"
            " MiB of Ray memory)"
        )
    raise ConfigError(
        f"invalid config:\n  launcher.{field}: {processes} processes, but {why}; "
        f"add machines, or {advice}"
    )


class RayAgent:
    """One machine's agent: it makes its nodes' keys, then forks them and watches them.

    A plain (synchronous) Ray actor: Ray runs its methods one at a time on the worker's
    main thread, the thread the nodes are forked from, so a node's parent-death signal
    fires when the agent's process ends.
    """

    def __init__(self) -> None:
        self._identities: dict[int, Identity] = {}
        self._procs: dict[int, BaseProcess] = {}
        self._spooled: dict[int, Path] = {}
        import_optimizers()  # ~1 s: now, while the launcher makes the plan

    def where(self) -> tuple[int, str]:
        """This agent's pid and its machine's IP address."""
        return os.getpid(), ray.util.get_node_ip_address()

    def identities(self, nodes: list[int]) -> dict[int, bytes]:
        """Make a key pair for each of ``nodes``, here: their public keys, for the ring."""
        for node in nodes:
            self._identities[node] = Identity.generate(node)
        return {node: self._identities[node].public for node in nodes}

    def start(
        self, packed: Any, control: Address, run_dir: Path, listen: Mapping[int, NodeListen]
    ) -> dict[int, int]:
        """Fork this machine's nodes (those ``identities`` made keys for); their pids. If
        forking fails halfway, the nodes forked so far are killed and reaped first."""
        from dlactor.launch.ray import results_dir

        if threading.current_thread() is not threading.main_thread():
            # A child's parent-death signal is tied to the thread that forked it.
            raise RuntimeError("a RayAgent must fork from its worker's main thread")
        plan = packed.unpack()
        identities, self._identities = self._identities, {}
        ensure_open_files(len(identities), where="this machine's Ray agent")
        here = results_dir(run_dir, plan.run_id)
        if here != run_dir:
            self._spooled = {node: results_path(here, node, plan.servers) for node in identities}
        ip = ray.util.get_node_ip_address()
        parent = os.getpid()

        def body(node: int) -> int:
            # Ray's worker handles SIGTERM by raising SystemExit: a node dies of it instead.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            own = identities[node]
            identities.clear()  # the siblings' private keys: not this node's to keep
            # Its credentials (TLS contexts, which serialize its key) are made here, in the
            # node, as a forked node of the local launcher makes its own.
            credentials = plan.keys.credentials_for(own, plan.run_id)
            host, port = listen[node]
            return node_process_main(
                plan, node, control, here, host=host or ip, port=port, parent=parent,
                credentials=credentials,
            )  # fmt: skip

        try:
            with forking_template(plan) as ctx:
                for node in sorted(identities):
                    self._procs[node] = _fork(ctx, body, node)
                    del identities[node]  # its private key is the child's alone now
        except BaseException:
            reap(list(self._procs.values()))
            raise
        return {node: p.pid for node, p in self._procs.items() if p.pid is not None}

    def exits(self) -> dict[int, int]:
        """The exit codes of this machine's nodes that have ended."""
        return {n: p.exitcode for n, p in self._procs.items() if p.exitcode is not None}

    def kill(self, node: int) -> None:
        proc = self._procs.get(node)
        if proc is not None and proc.exitcode is None:
            proc.kill()

    def results(self, nodes: list[int]) -> dict[int, str]:
        """What ``nodes`` spooled on this machine (none when they wrote into the run
        directory itself). Call after ``stop``: a node still running could be writing."""
        out = {}
        for node in nodes:
            path = self._spooled.get(node)
            if path is not None and path.exists():
                out[node] = path.read_text(encoding="utf-8")
        return out

    def drop_results(self, nodes: list[int]) -> None:
        """Remove what ``nodes`` spooled here, once the launcher has it."""
        for node in nodes:
            path = self._spooled.get(node)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def stop(self, grace_s: float) -> list[int]:
        """Give the nodes ``grace_s`` to exit on their own, then kill and reap the rest: the
        nodes whose results are spooled here, for the launcher to fetch (``results``)."""
        reap(list(self._procs.values()), grace_s=grace_s)
        return sorted(node for node, path in self._spooled.items() if path.exists())


def _fork(ctx: mp.context.ForkContext, body: Callable[[int], int], node: int) -> BaseProcess:
    proc = ctx.Process(target=_child, args=(body, node), name=f"dlactor-node-{node}")
    proc.start()
    return proc


def _child(body: Callable[[int], int], node: int) -> None:
    sys.exit(body(node))


def _raised(call: concurrent.futures.Future[Any] | None) -> BaseException | None:
    """What a finished call raised (None: not finished, or it returned)."""
    return call.exception() if call is not None and call.done() else None


@dataclasses.dataclass
class _Agent:
    """The launcher's side of one agent."""

    machine: Machine
    nodes: list[int]
    handle: Any
    where: concurrent.futures.Future[tuple[int, str]]
    started: concurrent.futures.Future[dict[int, int]] | None = None
    poll: concurrent.futures.Future[dict[int, int]] | None = None
    lost: str | None = None  # why Ray says it is gone, or that it raised


class AgentNodes:
    """:class:`dlactor.launch.supervisor.NodeProcesses` over the agents' forked nodes.

    ``ended`` never waits: it reads the answers of the agents' last ``exits`` calls, and
    asks again every ``POLL_S``. A node whose agent is gone (Ray raised on a call to it)
    has ended: "lost its machine's agent (...)".
    """

    def __init__(self, here: str, servers: range = range(0)) -> None:
        self.here, self.servers = here, servers
        self.agents: list[_Agent] = []
        self.agent_of: dict[int, _Agent] = {}
        self._ended: dict[int, str] = {}
        self._polled_at = -math.inf
        #: How long ``create`` waited for every agent's keys: the agents' own start (a Ray
        #: worker importing torch) that the launcher had not overlapped with its own work.
        self.waited_s: float | None = None

    def place(self, processes: int, found: Sequence[Machine]) -> None:
        """Place an agent on each machine that gets nodes (``split``), keeping each handle
        as soon as it exists. Nothing waits: each agent's worker process starts (and imports
        torch and dlactor) while the launcher goes on, which is why the Ray backend places
        them as it connects, before the run directory is made."""
        counts = split(processes, [m.capacity for m in found])
        actor = ray.remote(RayAgent)
        first = 0
        for machine, count in zip(found, counts, strict=True):
            if count == 0:
                continue
            nodes = list(range(first, first + count))
            first += count
            handle: Any = actor.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(machine.node_id, soft=False),
                max_restarts=0,
                max_task_retries=0,
            ).remote()
            agent = _Agent(machine, nodes, handle, handle.where.remote().future())
            self.agents.append(agent)
            self.agent_of.update(dict.fromkeys(nodes, agent))

    def create(self, settings: RayLauncher, processes: int) -> dict[int, bytes]:
        """The agents (``place``d) make the ``processes`` nodes' key pairs: their public
        keys, by node (RuntimeError if they do not all answer within ``start_timeout_s``)."""
        if len(self.agent_of) != processes:
            raise RuntimeError(
                f"agents were placed for {len(self.agent_of)} nodes, not {processes}"
            )
        asked = time.monotonic()
        keys = [a.handle.identities.remote(a.nodes).future() for a in self.agents]
        _, missing = concurrent.futures.wait(keys, timeout=settings.start_timeout_s)
        self.waited_s = time.monotonic() - asked
        if missing:
            raise RuntimeError(f"{len(missing)} Ray agents did not make their keys in time")
        for key in keys:
            if (exc := key.exception()) is not None:
                raise RuntimeError(f"a Ray agent could not make its nodes' keys: {exc}")
        return {node: key for answer in keys for node, key in answer.result().items()}

    def start(
        self, packed: Any, settings: RayLauncher, control: Address, run_dir: Path, host: str | None
    ) -> None:
        """Have every agent fork its nodes on the plan."""
        base = settings.node_port_base
        for agent in self.agents:
            listen = {n: (host, 0 if base is None else base + n) for n in agent.nodes}
            agent.started = agent.handle.start.remote(packed, control, run_dir, listen).future()

    def ended(self, node: int) -> str | None:
        self._poll()
        return self._ended.get(node)

    def _poll(self) -> None:
        """At most once per ``POLL_S`` (the supervisor asks node by node): take in each
        agent's answer, and ask again each agent that has answered."""
        now = time.monotonic()
        if now - self._polled_at < POLL_S:
            return
        self._polled_at = now
        for agent in self.agents:
            if agent.lost is not None:
                continue
            exc = _raised(agent.started) or _raised(agent.poll)
            if exc is not None:
                self._lose(agent, exc)
                continue
            if agent.poll is not None and agent.poll.done():
                for node, code in agent.poll.result().items():
                    self._ended.setdefault(node, describe_exit(code))
                agent.poll = None
            if agent.poll is None:
                agent.poll = agent.handle.exits.remote().future()

    def _lose(self, agent: _Agent, exc: BaseException) -> None:
        """``agent``'s call raised: its nodes have ended. Either Ray lost the agent (its
        process, or its machine), or the agent is alive and raised (a fork that failed:
        it reaped what it had forked before raising)."""
        from dlactor.launch.ray import describe_ray_error, ray_error_reason

        if isinstance(exc, ray.exceptions.RayTaskError):
            agent.lost = f"was not started: its machine's agent raised ({ray_error_reason(exc)})"
        else:
            agent.lost = describe_ray_error(exc, lost="its machine's agent")
        for node in agent.nodes:
            self._ended.setdefault(node, agent.lost)

    def kill(self, node: int) -> None:
        agent = self.agent_of[node]
        if agent.lost is None and node not in self._ended:
            agent.handle.kill.remote(node)

    def placement(self) -> dict[int, tuple[int, str]]:
        """(pid, IP) of each node whose agent has forked it."""
        out = {}
        for agent in self.agents:
            if agent.started is not None and agent.started.done() and not agent.started.exception():
                ip = agent.machine.ip
                out.update({node: (pid, ip) for node, pid in agent.started.result().items()})
        return out

    def local_pids(self) -> list[int]:
        return [pid for pid, ip in self.placement().values() if ip == self.here]

    def template_pids(self) -> list[int]:
        """The agents on this machine: each is its machine's template, whose pages its nodes
        share, as the local launcher is; the run's PSS counts them, each read every time."""
        return [
            agent.where.result()[0]
            for agent in self.agents
            if agent.machine.ip == self.here and agent.where.done() and not agent.where.exception()
        ]

    def hosts(self) -> list[str]:
        return sorted({agent.machine.ip for agent in self.agents})

    def machines(self) -> dict[str, list[int]]:
        """Each machine's Ray node id and the nodes its agent was given."""
        return {agent.machine.node_id: agent.nodes for agent in self.agents}

    def finish(self, run_dir: Path, *, grace_s: float) -> None:
        """After the supervisor: give the nodes ``grace_s`` to exit, fetch the results
        spooled on machines that do not see the run directory, then stop every agent (it
        kills and reaps what is left of its nodes) and kill it."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and len(self._ended) < len(self.agent_of):
            self._poll()
            time.sleep(POLL_S / 2)
        # Agents whose start never returned would answer nothing before it does: skipped.
        alive = [
            a for a in self.agents if a.lost is None and a.started is not None and a.started.done()
        ]
        stops = [(a, a.handle.stop.remote(0.0).future()) for a in alive]
        concurrent.futures.wait([stop for _, stop in stops], timeout=AGENT_STOP_S)
        dropped: list[concurrent.futures.Future[None]] = []
        for agent, stop in stops:  # only what is spooled, node by node: it can be large
            spooled = stop.result() if stop.done() and stop.exception() is None else []
            for node in spooled:
                answer = agent.handle.results.remote([node]).future()
                try:
                    text = answer.result(timeout=FETCH_TIMEOUT_S).get(node)
                except Exception:  # the agent is gone or late: its spool stays on its machine
                    break
                if text is not None:
                    write_atomic(results_path(run_dir, node, self.servers), text)
                    dropped.append(agent.handle.drop_results.remote([node]).future())
        concurrent.futures.wait(dropped, timeout=FETCH_TIMEOUT_S)
        here = self.template_pids() + self.local_pids()
        self.kill_agents()
        from dlactor.launch.ray import KILL_WAIT_S, wait_gone

        wait_gone(here, KILL_WAIT_S)  # as for Ray's workers: gone when the launcher says done

    def kill_agents(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                ray.kill(agent.handle, no_restart=True)
