"""The local backend: N node processes forked from this one, supervised until done.

This process is the template: it has already imported torch, loaded the dataset and
built the model (``make_plan``), so every forked node shares those pages read-only.
``gc.freeze()`` before forking keeps the collector from touching (and un-sharing)
the template's objects in the children. Forking happens before any event loop or
thread exists here; the supervisor's loop starts after.

The supervisor is the rendezvous and start barrier (every node registers its
address; then all get the address book at once), draws progress, samples memory,
and fails fast: a node that reports a traceback, dies, or a Ctrl-C stops every
node, kills what does not stop, and joins every process. Whatever happens from the
first fork on (a fork that fails halfway, a Ctrl-C before the supervisor runs), every
child forked so far is reaped.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from dlactor.launch.control import CONTROL_MAX_FRAME, ControlStream
from dlactor.launch.plan import Plan
from dlactor.launch.progress import RunProgress
from dlactor.launch.worker import EXIT_DONE, node_process_main, run_event_loop
from dlactor.messages import Done, Failed, Message, Payload, Progress, Register, Share, Start, Stop
from dlactor.metrics.consensus import ConsensusMeter
from dlactor.metrics.memory import MemorySampler, release_freed_memory
from dlactor.metrics.recorder import JsonlRecorder
from dlactor.sharing.ops import check_layout, flat_layout
from dlactor.transport.base import Address
from dlactor.transport.tcp import check_hello
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME

__all__ = ["Outcome", "launch_local"]

STOP_GRACE_S = 5.0
KNOCK_ON_GRACE_S = 1.5
#: Exceptions a node raises because *another* node went away (last line of its traceback).
KNOCK_ON = (
    "dlactor.transport.base.PeerUnreachable",
    "dlactor.node.mailbox.RoundTimeout",
    "dlactor.node.node.SendStalled",
)


@dataclass
class Outcome:
    """How a run ended, for the manifest and the summary."""

    status: str = "ok"  # "ok" | "failed" | "interrupted"
    reason: str = ""
    traceback: str = ""
    also_failed: list[int] = field(default_factory=list)
    peak_pss_bytes: int = 0
    t_start_barrier: float = 0.0


def _child(
    plan: Plan, node: int, control: Address, listener: socket.socket, run_dir: Path, parent: int
) -> None:
    listener.close()
    sys.exit(node_process_main(plan, node, control, run_dir, parent=parent))


def launch_local(plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome:
    """Fork the nodes, supervise them to the end, and say how it went.

    A Ctrl-C before the supervisor has taken over SIGINT (while forking, or while its loop
    starts) ends the run as "interrupted" too. Every child forked is reaped on the way out:
    after a successful run they get ``STOP_GRACE_S`` to exit on their own first.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=min(4096, plan.config.nodes + 64))
    procs: list[BaseProcess] = []
    outcome: Outcome | None = None
    try:
        _fork_nodes(plan, listener, run_dir, procs)
        supervisor = Supervisor(plan, procs, listener, run_dir, show_progress=show_progress)
        outcome = run_event_loop(supervisor.run())
    except KeyboardInterrupt:
        outcome = Outcome(status="interrupted", reason="interrupted (Ctrl-C)")
    finally:
        listener.close()
        _reap(procs, grace_s=STOP_GRACE_S if outcome is not None and outcome.status == "ok" else 0)
    return outcome


def _fork_nodes(
    plan: Plan, listener: socket.socket, run_dir: Path, procs: list[BaseProcess]
) -> None:
    """Fork one process per node, appending each to ``procs`` as soon as it runs, so that
    a failure halfway leaves the caller every child to reap.

    SIGINT is blocked while forking: a child inherits the mask, so the Ctrl-C that a
    terminal sends to the whole process group cannot reach it before it has set SIGINT to
    ignored (it unblocks after); here, a pending Ctrl-C is raised when the mask is restored.
    """
    ctx = mp.get_context("fork")
    control = listener.getsockname()[:2]
    # One torch thread per node (inherited by every fork): 32 nodes with torch's default
    # thread pools ran 46x slower than with one thread each (DESIGN.md).
    torch.set_num_threads(plan.config.launcher.torch_threads)
    gc.collect()
    gc.freeze()
    # Loading (Shakespeare's parser above all) leaves free chunks all over the heap; a child
    # allocating into them copies each page it writes. Returned to the OS first, they fault
    # in fresh and private only as far as the child really uses them.
    release_freed_memory()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for node in range(plan.config.nodes):
            procs.append(_start_node(ctx, plan, node, control, listener, run_dir))
    finally:
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _start_node(
    ctx: mp.context.ForkContext,
    plan: Plan,
    node: int,
    control: Address,
    listener: socket.socket,
    run_dir: Path,
) -> BaseProcess:
    p = ctx.Process(
        target=_child,
        args=(plan, node, control, listener, run_dir, os.getpid()),
        name=f"dlactor-node-{node}",
    )
    p.start()
    return p


def _reap(procs: list[BaseProcess], *, grace_s: float = 0.0) -> None:
    """Make sure no node outlives the launcher, whatever happened above: give them
    ``grace_s`` seconds to exit on their own (a node that reported Done is still closing
    its sockets and files), then kill what is left and join every process."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join()


class Supervisor:
    """Runs on the launcher's event loop from the start barrier to the last exit."""

    def __init__(
        self,
        plan: Plan,
        procs: list[BaseProcess],
        listener: socket.socket,
        run_dir: Path,
        *,
        show_progress: bool,
    ) -> None:
        self.plan, self.procs, self.listener = plan, procs, listener
        self.consensus = ConsensusMeter(plan.config.nodes)
        self._consensus_path = run_dir / "consensus.jsonl"
        # Opened by run(), so that a supervisor that never runs leaves no file open.
        self.consensus_log: JsonlRecorder | None = None
        self.n = plan.config.nodes
        self.outcome = Outcome()
        self.addresses: dict[int, Address] = {}
        self.streams: dict[int, ControlStream] = {}
        self.done: set[int] = set()
        self.reported: set[int] = set()  # said Done or Failed: its exit is no news
        self.closed: set[int] = set()
        self._consensus_layout = flat_layout(plan.model.parameters())
        self.progress = RunProgress(self.n, plan.config.rounds, enabled=show_progress)
        self.memory = MemorySampler([p.pid for p in procs if p.pid is not None])
        self._deferred: tuple[int, str] | None = None
        self._all_registered = asyncio.Event()
        self._finished = asyncio.Event()

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.fail, "interrupted", "interrupted (Ctrl-C)", "")
        server = await asyncio.start_server(self.serve_control, sock=self.listener)
        self.consensus_log = JsonlRecorder(self._consensus_path)
        try:
            with self.progress:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch_processes())
                    tg.create_task(self.memory.run(self._finished))
                    await self._barrier()
                    await self._finished.wait()
                await self._stop_all()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            server.close()
            for stream in self.streams.values():
                stream.close()
            self.consensus_log.close()
        self.outcome.peak_pss_bytes = self.memory.peak_pss
        return self.outcome

    async def _barrier(self) -> None:
        timeout = self.plan.config.launcher.start_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await _first_of(self._all_registered, self._finished)
        except TimeoutError:
            missing = sorted(set(range(self.n)) - set(self.addresses))
            self.fail("failed", f"start barrier: nodes {missing[:20]} not ready in {timeout:g} s")
            return
        if self._finished.is_set():
            return
        self.outcome.t_start_barrier = time.time()
        start = Start(addresses=dict(self.addresses), t0=self.outcome.t_start_barrier)
        for stream in self.streams.values():
            stream.post(start)

    async def serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One node's control connection, from its hello to EOF. Until the hello is checked
        the connection may announce only a hello-sized frame; a protocol error, or a message
        that does not fit, drops the connection (never the launcher)."""
        stream = ControlStream(reader, writer, max_frame=HANDSHAKE_MAX_FRAME)
        try:
            node = await self._accept(stream)
            while (msg := await stream.receive()) is not None:
                if getattr(msg, "sender", node) != node:
                    raise RemoteProtocolError(f"node {node} sent a message as another node")
                self._on_message(msg)
            self.closed.add(node)
        except (ProtocolError, ConnectionError) as exc:
            writer.close()
            if not self._finished.is_set():
                print(f"dlactor: dropped a control connection: {exc}", file=sys.stderr)

    async def _accept(self, stream: ControlStream) -> int:
        """Check the hello; only then may the node send frames as big as a model."""
        hello = check_hello(await _first(stream), self.plan.run_id, self.plan.secret)
        stream.set_max_frame(CONTROL_MAX_FRAME)
        self.streams[hello.sender] = stream
        return hello.sender

    def _on_message(self, msg: object) -> None:
        match msg:
            case Register(sender=node, host=host, port=port):
                self.addresses[node] = (host, port)
                if len(self.addresses) == self.n:
                    self._all_registered.set()
            case Progress(sender=node, round=r):
                self.progress.advance(node, r)
            case Share(sender=node, round=r, payload=payload):
                self._on_consensus_report(node, r, payload)
            case Done(sender=node):
                self.done.add(node)
                self.reported.add(node)
                if len(self.done) == self.n:
                    self._finished.set()
            case Failed(sender=node, traceback=tb):
                self.reported.add(node)
                self._on_failed(node, tb)
            case _:
                raise ProtocolError(f"unexpected {type(msg).__name__} on the control channel")

    def _on_consensus_report(self, node: int, r: int, payload: Payload) -> None:
        """A node's evaluated model, for the consensus distance; one that is not this run's
        model vector is the node's protocol error, not a crash of the launcher."""
        try:
            check_layout(payload, self._consensus_layout)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"node {node}'s consensus report: {exc}") from exc
        distance = self.consensus.add(r, payload.tensors["params"])
        if distance is not None and self.consensus_log is not None:
            self.consensus_log.write({"round": r, "consensus_distance": distance, "nodes": self.n})

    def _on_failed(self, node: int, tb: str) -> None:
        if self.outcome.status != "ok" or self._finished.is_set():
            self.outcome.also_failed.append(node)
        elif _is_knock_on(tb):
            self._defer(node, tb)
        else:
            self.fail("failed", f"node {node} raised an exception", tb)

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
            self.fail("failed", f"node {node} raised an exception", tb)

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
            for node, p in enumerate(self.procs):
                code = p.exitcode
                if code is None or node in self.reported:
                    continue
                first = exited_at.setdefault(node, now)
                if node in self.closed or now - first > 1.0:
                    self.fail("failed", f"node {node} {_describe_exit(code)}")
            await asyncio.sleep(0.05)

    async def _stop_all(self) -> None:
        if self.outcome.status == "ok":
            return
        stop = Stop(self.outcome.reason)
        for node, stream in self.streams.items():
            if self.procs[node].exitcode is None:
                stream.post(stop)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(p.exitcode is None for p in self.procs):
            await asyncio.sleep(0.05)
        for p in self.procs:
            if p.exitcode is None:
                p.kill()


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


async def _first(stream: ControlStream) -> Message:
    msg = await stream.receive()
    if msg is None:
        raise ConnectionError("closed before saying hello")
    return msg


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_DONE:
        return "exited before reporting done"
    return f"exited with code {code}"
