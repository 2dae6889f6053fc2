"""The node-process entry point: the same code under every backend.

A node process connects to the launcher's control address, proves it belongs to the
run (hello), starts its transport, registers its address, waits at the start barrier,
runs its rounds while listening for ``Stop``, and reports ``Done`` or ``Failed`` with
its traceback. After ``Done`` it stays (answering peers still in their last round) until the
launcher ends the run. It writes its own JSONL results, flushed every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

# Imported here, in the launcher's template, not in each node: a node importing uvloop
# itself made 4.4 MiB of its own memory and spent start-up CPU on it.
try:
    import uvloop
except ImportError:  # pragma: no cover - Windows
    uvloop = None  # type: ignore[assignment]

from dlactor.context import Service
from dlactor.launch.control import ControlStream
from dlactor.launch.plan import Plan, build_node, build_service
from dlactor.messages import (
    Done,
    Failed,
    Lost,
    Message,
    Payload,
    Progress,
    Register,
    Share,
    Start,
)
from dlactor.metrics.memory import set_malloc_thresholds
from dlactor.metrics.recorder import JsonlRecorder
from dlactor.node.node import Node, Record
from dlactor.security.credentials import Credentials
from dlactor.sharing.ops import flatten
from dlactor.transport.base import Address, Deliver
from dlactor.transport.tcp import TcpTransport
from dlactor.wire.errors import ProtocolError

__all__ = [
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_STOPPED",
    "node_process_main",
    "results_path",
    "run_event_loop",
]

EXIT_DONE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3

T = TypeVar("T")


def results_path(run_dir: Path, process: int, servers: range) -> Path:
    """Where process ``process`` writes its records: ``nodes/<id>.jsonl`` for a learning
    node, ``nodes/server-<id>.jsonl`` for one of the algorithm's ``servers``."""
    name = f"server-{process}" if process in servers else str(process)
    return run_dir / "nodes" / f"{name}.jsonl"


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where available (Linux, macOS), else on asyncio's loop."""
    if uvloop is None:  # pragma: no cover - Windows
        return asyncio.run(main)
    return uvloop.run(main)


def node_process_main(
    plan: Plan,
    node: int,
    control: Address,
    run_dir: Path,
    *,
    host: str,
    port: int = 0,
    parent: int | None = None,
    credentials: Credentials | None = None,
) -> int:
    """Body of a node process; returns its exit code. The node listens on ``host:port``
    (port 0: any free one) and writes its results under ``run_dir``.

    ``credentials`` are the node's own when it made its key (Ray). Without them, the node's
    key is in the plan (a forked node): it keeps that one and drops every other private key
    it inherited from the launcher, first thing.

    ``parent`` is the pid of the launcher that forked this process (local backend): the
    kernel is asked to kill this process when the launcher dies, and if it is already gone,
    there is nobody to run for. Without it (a Ray worker, whose parent is Ray's raylet and
    which Ray ends with its driver) nothing is asked. Under every backend, the control
    connection closing stops the node.
    """
    _ignore_ctrl_c()
    if credentials is None:
        credentials = plan.keys.credentials(node, plan.run_id)
    if parent is not None and not _die_with_parent(parent):
        return EXIT_STOPPED
    _limit_threads(plan.config.launcher.torch_threads)
    set_malloc_thresholds()  # big frame bodies reuse freed heap instead of a fresh mmap each
    _oom_victim_before_the_launcher()
    main = _node_main(plan, credentials, control, run_dir, (host, port))
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        return _profiled(main, Path(profile_dir) / f"process-{node}.prof")
    return run_event_loop(main)


#: A directory: each node process runs its event loop under cProfile and writes its
#: statistics there (``process-<id>.prof``, for ``pstats``) when it ends. For finding where a
#: node's CPU goes (docs/scaling.md); cProfile slows Python code about 2x, so a profiled
#: run's times are not a run's times.
PROFILE_ENV = "DLACTOR_PROFILE_DIR"


def _profiled(main: Coroutine[Any, Any, int], path: Path) -> int:
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # the loop thread's CPU, not its waits
    profile.enable()
    try:
        return run_event_loop(main)
    finally:
        profile.disable()
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(path)


#: A node's ``oom_score_adj``: out of memory, the kernel kills a node before the launcher.
#: The launcher is the largest process of a run, so it would go first, and with it every
#: node and the run's outcome (no summary.json); a node killed instead ends the run cleanly
#: (or not at all, under ``on_node_failure = "continue"``), its cause recorded.
OOM_SCORE_ADJ = 500


def _oom_victim_before_the_launcher() -> None:
    """Raise this process's ``oom_score_adj`` (Linux; raising it needs no privilege)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(f"{OOM_SCORE_ADJ}\n")


def _ignore_ctrl_c() -> None:
    """Ctrl-C is the launcher's to handle. The launcher forks with SIGINT blocked, so a
    Ctrl-C that came before this point is still pending: ignored first, then unblocked, it
    is dropped. (Only the main thread may set a handler: elsewhere, nothing is changed.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _limit_threads(threads: int) -> None:
    """One torch thread per node (docs/decisions.md: torch's default pools give every node a
    thread per core); OMP_NUM_THREADS for any OpenMP runtime or subprocess that reads it later."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _die_with_parent(parent: int | None) -> bool:
    """On Linux, ask the kernel to SIGKILL us if the launcher dies, so nothing is orphaned.

    Returns False if the launcher (pid ``parent``) died before we asked: the request then
    never fires, as we already belong to another parent. Elsewhere, and for ``parent=None``,
    nothing can be checked and it returns True.
    """
    if not os.path.exists("/proc/self"):
        return True
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    return parent is None or os.getppid() == parent


def _tcp(
    plan: Plan, credentials: Credentials, listen: Address
) -> Callable[[Deliver], TcpTransport]:
    security = plan.config.security

    def transport(deliver: Deliver) -> TcpTransport:
        host, port = listen
        return TcpTransport(
            credentials=credentials,
            deliver=deliver,
            host=host,
            port=port,
            max_frame=plan.max_frame,
            handshake_timeout=security.handshake_timeout_s,
            frame_timeout=plan.config.launcher.round_timeout_s,
            max_pending=security.max_pending_handshakes,
        )

    return transport


async def _node_main(
    plan: Plan, credentials: Credentials, control: Address, run_dir: Path, listen: Address
) -> int:
    node = credentials.identity.process
    # One thread runs the training and evaluation handed off the loop (``Handoff``: work of
    # 10 ms and more, and every function's first run; what strategies hand to
    # ``asyncio.to_thread``): asyncio's default pool starts a second one whenever a round's
    # work comes before the last hand-off's thread is counted idle, and each thread is a
    # stack per node.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlactor-compute")
    )
    # The launcher answers only once it has forked every node and started its loop, which
    # on a loaded machine takes longer than a handshake may: the node gives it as long as
    # the start barrier (the launcher still holds its own side to the handshake timeout).
    timeout = max(plan.config.security.handshake_timeout_s, plan.config.launcher.start_timeout_s)
    ctl = await ControlStream.connect(*control, credentials, timeout=timeout)
    transport = _tcp(plan, credentials, listen)
    server = node in plan.servers
    if node >= plan.config.nodes and not server:  # a topology's service (the peer sampler)
        return await _serve(ctl, node, credentials, lambda: build_service(plan, node, transport))
    recorder = JsonlRecorder(results_path(run_dir, node, plan.servers))

    def on_round(record: Record) -> None:
        recorder.write(record)
        if server:
            return
        ctl.post(Progress(node, record["round"]))
        if "test_loss" in record and plan.config.evaluation.consensus:
            # the evaluated model (build_node gives this process's node plan.model, its
            # private copy), for the launcher's consensus distance
            params = Payload({"params": flatten(plan.model.parameters())})
            ctl.post(Share(node, record["round"], params))

    try:
        return await _serve(
            ctl,
            node,
            credentials,
            lambda: build_node(plan, node, transport, on_round=on_round, run_dir=run_dir),
        )
    finally:
        recorder.close()


async def _serve(
    ctl: ControlStream,
    process: int,
    credentials: Credentials,
    build: Callable[[], Node | Service],
) -> int:
    """Build the process's actor and run its lifecycle; a failure is reported with its
    traceback. The actor and the control connection are closed however it ends."""
    actor: Node | Service | None = None
    try:
        actor = build()
        return await _lifecycle(actor, ctl, credentials)
    except Exception:
        await ctl.send(Failed(process, _clip(traceback.format_exc())))
        return EXIT_FAILED
    finally:
        if actor is not None:
            await actor.stop()
        ctl.close()


def _clip(text: str, limit: int = 64 << 10) -> str:
    """Keep a traceback's tail (the part that names the error) within one control frame."""
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


async def _lifecycle(actor: Node | Service, ctl: ControlStream, credentials: Credentials) -> int:
    host, port = await actor.start()
    agreement = actor.agreement if isinstance(actor, Node) else None
    public = agreement.public if agreement is not None else b""
    await ctl.send(Register(actor.node, host, port, public))
    start = await ctl.receive()
    if not isinstance(start, Start):
        return EXIT_STOPPED  # Stop, or the launcher went away, before the barrier
    credentials.learn(start.keys)  # the address book's keys: from the launcher, proven
    if isinstance(actor, Node):
        actor.learn_agreement(start.agreement)
    actor.connect(start.addresses, start.t0)
    stop = asyncio.ensure_future(_until_stopped(ctl, actor))
    try:
        if not await _run_unless_stopped(actor, stop):
            return EXIT_STOPPED
        await ctl.send(Done(actor.node))
        # Stay until the launcher ends the run (Stop, or the control connection closing once
        # every process is done): a peer still in its last round may be talking to us (a
        # gossip pick), and a message sent to a process that has left would be lost. The
        # run's work is done: a control channel that breaks now ends the wait like EOF.
        with contextlib.suppress(ConnectionError, OSError, ProtocolError):
            await stop
        return EXIT_DONE
    finally:
        stop.cancel()
        await asyncio.gather(stop, return_exceptions=True)


async def _until_stopped(ctl: ControlStream, actor: Node | Service) -> Message | None:
    """Read the control connection until the launcher says stop (``Stop``, or EOF): what
    ended it. A ``Lost`` on the way tells the actor a node is gone for good."""
    while True:
        msg = await ctl.receive()
        if not isinstance(msg, Lost):
            return msg
        lose = getattr(actor, "lose", None)
        if lose is not None:
            lose(msg.node, msg.round)


async def _run_unless_stopped(actor: Node | Service, stop: asyncio.Future[Any]) -> bool:
    """Run every round unless ``stop`` (the launcher's Stop, or EOF if it died) comes
    first, which cancels them. True if the rounds completed; an exception from the rounds
    is raised as itself (its traceback's last line is what the launcher classifies)."""
    rounds = asyncio.ensure_future(actor.run())
    try:
        await asyncio.wait({rounds, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not rounds.done():
            rounds.cancel()
            await asyncio.gather(rounds, return_exceptions=True)
    if rounds.cancelled():
        return False
    rounds.result()
    return True
