"""The launcher's supervisor, shared by every backend: rendezvous, start barrier, progress,
memory, consensus, and failing fast.

Every node registers its address over its control connection; when all have, all get the
address book at once (the start barrier). A node that reports a traceback, a node process
that ends without reporting, or a Ctrl-C stops every node, kills what does not stop, and
ends the run with the first cause as its reason.

The supervisor sees the node processes only through :class:`NodeProcesses`: whether each
still runs (and how it ended), killing one, and which of them run on this machine (memory
is sampled from those). The local backend implements it over forked processes, the Ray
backend over Ray actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from dlactor.checkpoint.files import prune
from dlactor.context import SendStalled
from dlactor.launch.control import ControlStream, accept_node, post_paced, post_to
from dlactor.launch.plan import Plan
from dlactor.launch.progress import RunProgress
from dlactor.launch.resume import savers
from dlactor.launch.worker import EXIT_DONE
from dlactor.messages import Done, Failed, Lost, Payload, Progress, Register, Share, Start, Stop
from dlactor.metrics.consensus import ConsensusMeter
from dlactor.metrics.memory import MemorySampler
from dlactor.metrics.recorder import JsonlRecorder
from dlactor.node.mailbox import RoundTimeout
from dlactor.security.credentials import Credentials
from dlactor.sharing.ops import check_layout, flat_layout
from dlactor.transport.base import Address, PeerUnreachable
from dlactor.transport.tcp import LogBudget
from dlactor.wire.errors import ProtocolError, RemoteProtocolError

__all__ = ["ForkedNodes", "NodeProcesses", "Outcome", "Supervisor", "describe_exit"]


class _Stderr:
    """The launcher's own messages go to its stderr, as its other words do."""

    def warning(self, msg: str, *args: object) -> None:
        print(msg % args, file=sys.stderr)


STOP_GRACE_S = 5.0
#: Bytes of a control connection's buffer for small frames, in the launcher.
CONTROL_SCRATCH = 1 << 10
#: Rounds whose consensus distance is summed at once (nodes are seldom more than a few
#: evaluation rounds apart; each costs the launcher a model vector).
MAX_CONSENSUS_ROUNDS = 16
KNOCK_ON_GRACE_S = 1.5
#: Exceptions a node raises because *another* node went away (last line of its traceback).
KNOCK_ON = tuple(
    f"{error.__module__}.{error.__qualname__}"
    for error in (PeerUnreachable, RoundTimeout, SendStalled)
)


@dataclass
class Outcome:
    """How a run ended, for the manifest and the summary."""

    status: str = "ok"  # "ok" | "degraded" | "failed" | "interrupted"
    reason: str = ""
    traceback: str = ""
    also_failed: list[int] = field(default_factory=list)
    peak_pss_bytes: int = 0
    t_start_barrier: float = 0.0
    hosts: list[str] = field(default_factory=list)  # where nodes ran, if not only here
    #: Ray's placement "agents": each machine's Ray node id -> the nodes its agent forked.
    machines: dict[str, list[int]] = field(default_factory=dict)
    #: Ray's placement "agents": how long the launcher waited for them to be ready (their
    #: keys) after it had made the plan, within the start-up (None: no agents).
    agents_waited_s: float | None = None
    #: Ray: how long the launcher took to start a local cluster, before the plan (None: it
    #: joined a running cluster, or no Ray).
    cluster_start_s: float | None = None
    addresses: dict[int, str] = field(default_factory=dict)  # node -> "host:port" it listened on
    #: Learning nodes the run went on without (``on_node_failure = "continue"``): each one's
    #: ``node``, the ``round`` it was lost in, and the ``cause``.
    lost: list[dict[str, Any]] = field(default_factory=list)


class NodeProcesses(Protocol):
    """A run's node processes as the supervisor sees them, whichever backend placed them.
    Nodes are numbered 0..n-1. Nothing here waits."""

    def ended(self, node: int) -> str | None:
        """None while ``node``'s process runs; once it has ended, how, in words that follow
        "node 3 " ("exited with code 1", "was killed by SIGKILL")."""
        ...

    def kill(self, node: int) -> None:
        """Kill ``node``'s process if it still runs (the end is seen later by ``ended``)."""
        ...

    def local_pids(self) -> list[int]:
        """Pids of the node processes on this machine known so far (for PSS sampling)."""
        ...

    def template_pids(self) -> list[int]:
        """Pids of other processes on this machine that the nodes were forked from (Ray's
        agents), read in full at every PSS sample as the launcher itself is."""
        ...


class ForkedNodes:
    """:class:`NodeProcesses` over processes this one forked (the local backend)."""

    def __init__(self, procs: Sequence[BaseProcess]) -> None:
        self.procs = procs

    def ended(self, node: int) -> str | None:
        code = self.procs[node].exitcode
        return None if code is None else describe_exit(code)

    def kill(self, node: int) -> None:
        if self.procs[node].exitcode is None:
            self.procs[node].kill()

    def local_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def template_pids(self) -> list[int]:
        return []  # the template is the launcher itself


class Supervisor:
    """Runs on the launcher's event loop from the start barrier to the last exit."""

    def __init__(
        self,
        plan: Plan,
        nodes: NodeProcesses,
        listener: socket.socket,
        run_dir: Path,
        *,
        show_progress: bool,
        credentials: Credentials,
    ) -> None:
        self.plan, self.nodes, self.listener = plan, nodes, listener
        self.credentials = credentials
        self.consensus = ConsensusMeter(plan.config.nodes)
        self._consensus_path = run_dir / "consensus.jsonl"
        # Opened by run(), so that a supervisor that never runs leaves no file open.
        self.consensus_log: JsonlRecorder | None = None
        self.n = plan.processes  # the learning nodes, the topology's services, the servers
        self.outcome = Outcome()
        self.addresses: dict[int, Address] = {}
        self.agreement: dict[int, bytes] = {}  # the X25519 public keys of nodes that mask
        self.streams: dict[int, ControlStream] = {}
        self.done: set[int] = set()
        self.reported: set[int] = set()  # said Done or Failed: its exit is no news
        self.closed: set[int] = set()
        self._consensus_layout = flat_layout(plan.model.parameters())
        # Once, not per connection: it walks the model's parameters (30 µs, an eighth of
        # the launcher's CPU per handshake in the control-plane simulation).
        self._max_frame = plan.max_frame
        self.progress = RunProgress(
            plan.config.nodes,
            plan.config.rounds,
            enabled=show_progress,
            first_round=plan.resume_round or 0,
        )
        self.memory = MemorySampler(nodes.local_pids, templates=nodes.template_pids)
        self._deferred: tuple[int, str] | None = None
        self._strangers: dict[asyncio.StreamWriter, None] = {}  # unfinished handshakes
        self._handlers: set[asyncio.Task[Any]] = set()  # serve_control, one per connection
        self._frozen = False  # this run's objects are out of the collector's reach
        self._stranger_log = LogBudget(_Stderr())
        # node -> the last round it said it finished (a resumed run's: the one before its
        # checkpoint's)
        first = plan.resume_round or 0
        self._last_round: dict[int, int] = (
            {node: first - 1 for node in range(plan.config.nodes)} if first else {}
        )
        self._reported: dict[int, int] = {}  # node -> the last round of its consensus report
        self._unmeasured: set[int] = set()  # rounds whose consensus distance is not summed
        self._all_registered = asyncio.Event()
        self._finished = asyncio.Event()
        #: ``launcher.on_node_failure = "continue"``: a learning node that dies is lost, not
        #: the run's end.
        self.survive = plan.config.launcher.on_node_failure == "continue"
        self.lost: dict[int, dict[str, Any]] = {}
        faults = plan.config.faults
        cfg = plan.config
        #: Node -> the round it is killed in ([faults]), once it has reported the one before.
        self.kills = {} if faults is None else faults.schedule(cfg.nodes, cfg.rounds, cfg.seed)
        self.injected: set[int] = set()  # nodes killed so far by [faults]
        self.run_dir = run_dir
        self._pruned_at = plan.resume_round or 0  # checkpoints pruned up to this round

    async def run(self) -> Outcome:
        """Supervise the run to its end: its outcome."""
        try:
            return await self._run()
        finally:
            # Only now that every connection is closed: thawed before, the run's objects
            # drew full collections all through the closing.
            if self._frozen:
                gc.unfreeze()

    async def _run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.fail, "interrupted", "interrupted (Ctrl-C)", "")
        tls = self.credentials.tls
        server = await asyncio.start_server(
            self.serve_control,
            sock=self.listener,
            ssl=tls.server if tls is not None else None,
            ssl_handshake_timeout=self._handshake_timeout if tls is not None else None,
        )
        self.consensus_log = JsonlRecorder(self._consensus_path)
        try:
            with self.progress:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch_processes())
                    tg.create_task(self.memory.run(self._finished))
                    await self._barrier()
                    self._freeze()
                    await self._finished.wait()
                await self._stop_all()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            server.close()
            for stream in self.streams.values():
                stream.close()  # done nodes wait for this (EOF) to leave
            for writer in self._strangers:
                writer.transport.abort()  # unfinished handshakes: nothing to wait for
            # Each connection's handler then reads EOF and returns: let it, rather than
            # leave it to be cancelled with the loop (asyncio logs that as an error).
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=STOP_GRACE_S)
            self.consensus_log.close()
        self.outcome.peak_pss_bytes = self.memory.peak_pss
        self.outcome.lost = [self.lost[node] for node in sorted(self.lost)]
        if self.lost and self.outcome.status == "ok":
            self.outcome.status = "degraded"
            named = ", ".join(
                f"node {x['node']} in round {x['round']} ({x['cause']})" for x in self.outcome.lost
            )
            self.outcome.reason = f"finished without {len(self.lost)} lost node(s): {named}"
        return self.outcome

    def _freeze(self) -> None:
        """After the barrier: what is alive now (the plan, the connections, their buffers)
        lives to the run's end. Frozen, the collector's full passes leave it alone
        (docs/scaling.md measures it at 10,000 and 100,000 nodes); :meth:`run` thaws it.
        (``gc.unfreeze`` thaws every frozen object: the local launcher's freeze for forking
        ends before its supervisor runs.)"""
        if not self._finished.is_set():
            gc.freeze()
            self._frozen = True

    async def _barrier(self) -> None:
        timeout = self.plan.config.launcher.start_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await _first_of(self._all_registered, self._finished)
        except TimeoutError:
            missing = sorted(set(range(self.n)) - set(self.addresses))
            self.fail(
                "failed", f"start barrier: processes {missing[:20]} not ready in {timeout:g} s"
            )
            return
        if self._finished.is_set():
            return
        self.outcome.t_start_barrier = time.time()
        ring = self.credentials.ring
        keys = {process: ring[process] for process in self.addresses}
        start = Start(dict(self.addresses), self.outcome.t_start_barrier, keys, self.agreement)
        # A few streams at a time (post_paced); a run that ends meanwhile stops the sending.
        sending = asyncio.ensure_future(post_paced(list(self.streams.values()), start))
        ended = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({sending, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            sending.cancel()  # no-op once it has finished
            await asyncio.gather(ended, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await sending  # what it raised, if it did
        first = self.plan.resume_round or 0
        for node in [n for n, r in self.kills.items() if first and r == first]:
            self.injected.add(node)  # [faults] in a resumed run's first round: no report
            self.nodes.kill(node)  # comes before it

    async def serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One node's control connection, from its handshake to EOF. Until the node has
        proven who it is (within the handshake timeout) the connection may announce only
        handshake-sized frames; a protocol error, or a message that does not fit, drops the
        connection (never the launcher)."""
        stream = ControlStream(reader, writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        self._admit(writer)
        try:
            node = await self._accept(stream)
            while (msg := await stream.receive()) is not None:
                if getattr(msg, "sender", node) != node:
                    raise RemoteProtocolError(f"node {node} sent a message as another node")
                self._on_message(msg)
            self.closed.add(node)
        except (ProtocolError, ConnectionError, TimeoutError) as exc:
            writer.close()
            if not self._finished.is_set():
                self._stranger_log.warning("dlactor: dropped a control connection: %s", exc)
        finally:
            self._strangers.pop(writer, None)

    def _admit(self, writer: asyncio.StreamWriter) -> None:
        """A new connection: while too many have not finished their handshakes, the oldest
        of them is closed to make room (as a node's transport does). Too many is
        ``max_pending_handshakes`` plus the run's processes not connected yet: every node
        connects while the launcher is still forking, and they are all accepted at once
        when its loop starts; once they are in, a flood gets ``max_pending_handshakes``."""
        waited = self.n - len(self.streams)
        if len(self._strangers) >= self.plan.config.security.max_pending_handshakes + waited:
            oldest = next(iter(self._strangers))
            del self._strangers[oldest]
            oldest.transport.abort()
        self._strangers[writer] = None

    @property
    def _handshake_timeout(self) -> float:
        return self.plan.config.security.handshake_timeout_s

    async def _accept(self, stream: ControlStream) -> int:
        """The handshake; only then may the node send frames as big as its model."""
        async with asyncio.timeout(self._handshake_timeout):
            node = await accept_node(stream, self.credentials)
        if node >= self.n:
            raise RemoteProtocolError(f"process {node} is not a process of this run")
        if node in self.streams:
            raise RemoteProtocolError(f"process {node} connected a second time")
        # The 1 KiB buffer stays: what a node sends is a few bytes, or a consensus report
        # that gets its own buffer anyway; 64 KiB per connection, as a node's stream has,
        # was 0.6 GiB of the launcher's memory at 10,000 nodes.
        stream.set_max_frame(self._max_frame, scratch=CONTROL_SCRATCH)
        self.streams[node] = stream
        self._strangers.pop(stream.writer, None)
        return node

    def _on_message(self, msg: object) -> None:
        match msg:
            case Register(sender=node, host=host, port=port, agreement=agreement):
                self.addresses[node] = (host, port)
                if agreement:
                    self.agreement[node] = agreement
                self.outcome.addresses[node] = f"{host}:{port}"
                if len(self.addresses) == self.n:
                    self._all_registered.set()
            case Progress(sender=node, round=r):
                self._on_progress(node, r)
            case Share(sender=node, round=r, payload=payload):
                self._on_consensus_report(node, r, payload)
            case Done(sender=node):
                self.done.add(node)
                self.reported.add(node)
                self._check_finished()
            case Failed(sender=node, traceback=tb):
                self.reported.add(node)
                self._on_failed(node, tb)
            case _:
                raise ProtocolError(f"unexpected {type(msg).__name__} on the control channel")

    def _on_progress(self, node: int, r: int) -> None:
        """A learning node finished round ``r``: the one after the last it reported."""
        expected = self._last_round.get(node, -1) + 1
        if node >= self.plan.config.nodes or r != expected:
            raise RemoteProtocolError(f"process {node} reported round {r}, expected {expected}")
        self._last_round[node] = r
        self.progress.advance(node, r)
        every = self.plan.config.checkpoint.every
        if every and self.progress.slowest >= self._pruned_at + every:
            # Every node is past another checkpoint: older ones than the kept can go.
            self._pruned_at = self.progress.slowest - self.progress.slowest % every
            prune(self.run_dir, savers(self.plan), self.plan.config.checkpoint.keep)
        if self.kills.get(node) == r + 1:  # [faults]: killed during the next round
            self.injected.add(node)
            self.nodes.kill(node)

    def _on_consensus_report(self, node: int, r: int, payload: Payload) -> None:
        """A node's evaluated model, for the consensus distance: once per node and round,
        for the round it just finished. One that is not this run's model vector is the node's
        protocol error, not a crash of the launcher. At most ``MAX_CONSENSUS_ROUNDS`` rounds
        are summed at once (a model vector each): a report past them is not counted."""
        if self._last_round.get(node) != r or self._reported.get(node) == r:
            raise RemoteProtocolError(f"node {node}'s consensus report for round {r} is unasked")
        self._reported[node] = r
        if r in self._unmeasured:
            return
        if r not in self.consensus and self.consensus.pending >= MAX_CONSENSUS_ROUNDS:
            # Not this round, for any node: a partial sum would wait for this report forever.
            self._unmeasured.add(r)
            self._stranger_log.warning("dlactor: round %d's consensus distance not measured", r)
            return
        try:
            check_layout(payload, self._consensus_layout)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"node {node}'s consensus report: {exc}") from exc
        distance = self.consensus.add(r, payload.tensors["params"])
        if distance is not None:
            self._write_consensus(r, distance)

    def _write_consensus(self, r: int, distance: float) -> None:
        if self.consensus_log is None:
            return
        try:
            self.consensus_log.write(
                {"round": r, "consensus_distance": distance, "nodes": self.consensus.needed(r)}
            )
        except OSError as exc:  # a full disk: the run fails saying so, not a node later
            self.fail("failed", f"the launcher could not record the consensus distance: {exc}")

    def _check_finished(self) -> None:
        """Every process is done, or lost (and at least one learning node is not)."""
        if len(self.done) + len(self.lost) == self.n:
            self._finished.set()

    def _loses(self, node: int) -> bool:
        """Whether the run goes on without ``node`` if it dies: a learning node under
        ``on_node_failure = "continue"`` (a server or a service is the run's own)."""
        started = self.outcome.t_start_barrier > 0  # before it, there is no run to go on with
        survive = self.survive and started and node < self.plan.config.nodes
        return survive and not self._finished.is_set()

    def _lose(self, node: int, cause: str) -> None:
        """Go on without learning node ``node``: make sure it is dead, tell every other
        process (they stop waiting for it), and finish without it."""
        if node in self.lost or node in self.done:
            return
        r = self._last_round.get(node, -1) + 1
        if node in self.injected:
            cause = f"{cause}, by [faults]"
        self.lost[node] = {"node": node, "round": r, "cause": cause}
        self.reported.add(node)
        self.nodes.kill(node)
        self._stranger_log.warning(
            "dlactor: lost node %d in round %d (%s); going on", node, r, cause
        )
        post_to(
            (
                stream
                for other, stream in self.streams.items()
                if other != node and other not in self.lost and self.nodes.ended(other) is None
            ),
            Lost(node, r, cause),
        )
        self.progress.lose(node)
        for done_round, distance in self.consensus.forget(r):
            self._write_consensus(done_round, distance)
        if len(self.lost) == self.plan.config.nodes:
            self.fail("failed", "every learning node was lost")
        self._check_finished()

    def _on_failed(self, node: int, tb: str) -> None:
        if self.outcome.status != "ok" or self._finished.is_set():
            self.outcome.also_failed.append(node)
        elif self._loses(node) and not _is_knock_on(tb):
            self._lose(node, f"raised {_last_line(tb)}")
        elif _is_knock_on(tb):
            self._defer(node, tb)
        else:
            self.fail("failed", f"{self.plan.role(node)} raised an exception", tb)

    def _defer(self, node: int, tb: str) -> None:
        """A peer-unreachable or round-timeout failure is usually the knock-on effect of
        another node's death: give the root cause a moment to be seen before blaming this."""
        if self._deferred is None:
            self._deferred = (node, tb)
            asyncio.get_running_loop().call_later(KNOCK_ON_GRACE_S, self._commit_deferred)
        else:
            self.outcome.also_failed.append(node)

    def _commit_deferred(self) -> None:
        if self._deferred is not None and self.outcome.status == "ok":
            node, tb = self._deferred
            self.fail("failed", f"{self.plan.role(node)} raised an exception", tb)

    def fail(self, status: str, reason: str, tb: str = "") -> None:
        """First failure wins; it stops the run."""
        if self.outcome.status == "ok" and not self._finished.is_set():
            self.outcome.status, self.outcome.reason, self.outcome.traceback = status, reason, tb
        self._finished.set()

    async def _watch_processes(self) -> None:
        """A node that exits without saying Done or Failed fails the run. Its last words may
        still be in flight when its exit is seen: wait for its control stream to close, up to
        a second, before judging. A node that did report is not judged again: its own
        traceback (or a knock-on failure's deferral) says more than its exit code."""
        exited_at: dict[int, float] = {}
        while not self._finished.is_set():
            now = time.monotonic()
            for node in range(self.n):
                if node in self.reported or (how := self.nodes.ended(node)) is None:
                    continue
                first = exited_at.setdefault(node, now)
                if node in self.closed or now - first > 1.0:
                    if self._loses(node):
                        self._lose(node, how)
                    else:
                        by = ", by [faults]" if node in self.injected else ""
                        self.fail("failed", f"{self.plan.role(node)} {how}{by}")
            await asyncio.sleep(0.05)

    async def _stop_all(self) -> None:
        if self.outcome.status == "ok":
            return
        post_to(
            (stream for node, stream in self.streams.items() if self.nodes.ended(node) is None),
            Stop(self.outcome.reason),
        )
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and not self._all_ended():
            await asyncio.sleep(0.05)
        for node in range(self.n):
            self.nodes.kill(node)

    def _all_ended(self) -> bool:
        return all(self.nodes.ended(node) is not None for node in range(self.n))


def _last_line(tb: str) -> str:
    lines = [line.strip() for line in tb.strip().splitlines()]
    return lines[-1] if lines else "an exception"


def _is_knock_on(tb: str) -> bool:
    lines = [line.strip() for line in tb.strip().splitlines()]
    return bool(lines) and lines[-1].startswith(KNOCK_ON)


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def describe_exit(code: int) -> str:
    """A node process's exit code, in words that follow "node 3 "."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_DONE:
        return "exited before reporting done"
    return f"exited with code {code}"
