"""The local backend: N node processes forked from this one, supervised until done.

This process is the template: it has already imported torch, loaded the dataset and
built the model (``make_plan``), so every forked node shares those pages read-only.
``gc.freeze()`` before forking keeps the collector from touching (and un-sharing)
the template's objects in the children. Forking happens before any event loop or
thread exists here; the supervisor's loop starts after.

The supervisor (``dlactor.launch.supervisor``, shared with the Ray backend) sees the
forked processes through ``ForkedNodes``. Whatever happens from the first fork on (a fork
that fails halfway, a Ctrl-C before the supervisor runs), every child forked so far is
reaped.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from dlactor.config import ConfigError, LocalLauncher
from dlactor.launch.plan import Plan, warm_up_node
from dlactor.launch.supervisor import STOP_GRACE_S, ForkedNodes, Outcome, Supervisor
from dlactor.launch.worker import node_process_main, run_event_loop
from dlactor.metrics.memory import release_freed_memory
from dlactor.security.identity import LAUNCHER
from dlactor.security.tls import warm_up_tls
from dlactor.transport.base import Address

__all__ = ["forking_template", "launch_local", "reap"]


def _child(
    plan: Plan, node: int, control: Address, listener: socket.socket, run_dir: Path, parent: int
) -> None:
    listener.close()
    sys.exit(node_process_main(plan, node, control, run_dir, host=_host(plan), parent=parent))


def _host(plan: Plan) -> str:
    """Where forked nodes listen: the local backend's ``launcher.host``."""
    launcher = plan.config.launcher
    return launcher.host if isinstance(launcher, LocalLauncher) else "127.0.0.1"


# Open files: the launcher holds a control connection and two process pipes per node; node
# k inherits its elder siblings' pipes and adds ~40 of its own (sockets, epoll, its JSONL).
FILES_PER_NODE = 3
FILES_SPARE = 256


def ensure_open_files(
    nodes: int, *, per_node: int = FILES_PER_NODE, where: str = "the launcher"
) -> int:
    """Raise this process's soft open-files limit (inherited by every forked node) to what
    ``nodes`` need, ``per_node`` each, up to the hard limit; a hard limit too low is invalid
    input, said before anything starts rather than as a node failing to open a socket
    halfway through. A process that forks nodes needs ``FILES_PER_NODE``; Ray's launcher,
    which forks none, one per node (its control connection)."""
    import resource

    need = per_node * nodes + FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(
            f"invalid config:\n  nodes: {nodes} nodes need about {need:,} open files in "
            f"{where}; the hard limit here is {hard:,} (raise it: `ulimit -Hn {need}` as root, "
            "or `nofile` in /etc/security/limits.conf)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def launch_local(plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome:
    """Fork the nodes, supervise them to the end, and say how it went.

    A Ctrl-C before the supervisor has taken over SIGINT (while forking, or while its loop
    starts) ends the run as "interrupted" too. Every child forked is reaped on the way out:
    after a successful run they get ``STOP_GRACE_S`` to exit on their own first.
    """
    ensure_open_files(plan.processes)
    listener = socket.create_server(("127.0.0.1", 0), backlog=min(4096, plan.processes + 64))
    procs: list[BaseProcess] = []
    outcome: Outcome | None = None
    try:
        _fork_nodes(plan, listener, run_dir, procs)
        nodes = ForkedNodes(procs)
        credentials = plan.keys.credentials(LAUNCHER, plan.run_id)  # the nodes' are gone here
        supervisor = Supervisor(
            plan, nodes, listener, run_dir, show_progress=show_progress, credentials=credentials
        )
        outcome = run_event_loop(supervisor.run())
    except KeyboardInterrupt:
        outcome = Outcome(status="interrupted", reason="interrupted (Ctrl-C)")
    finally:
        listener.close()
        reap(procs, grace_s=STOP_GRACE_S if outcome is not None and outcome.status == "ok" else 0)
    return outcome


def _fork_nodes(
    plan: Plan, listener: socket.socket, run_dir: Path, procs: list[BaseProcess]
) -> None:
    """Fork one process per node, appending each to ``procs`` as soon as it runs, so that
    a failure halfway leaves the caller every child to reap. Each node's private key is
    dropped here once that node is forked: a node forked later never inherits it.

    SIGINT is blocked while forking: a child inherits the mask, so the Ctrl-C that a
    terminal sends to the whole process group cannot reach it before it has set SIGINT to
    ignored (it unblocks after); here, a pending Ctrl-C is raised when the mask is restored.
    """
    control = listener.getsockname()[:2]
    with forking_template(plan) as ctx:
        for node in range(plan.processes):
            procs.append(_start_node(ctx, plan, node, control, listener, run_dir))
            plan.keys.forget(node)  # its private key is the child's alone now


@contextlib.contextmanager
def forking_template(plan: Plan) -> Iterator[mp.context.ForkContext]:
    """This process made ready to fork ``plan``'s nodes from (the local launcher, or a Ray
    machine's agent): a node's first round warmed up in it (and OpenSSL, when the run uses
    TLS), its objects frozen out of the
    collector's reach, freed heap handed back, SIGINT blocked; all undone on the way out."""
    ctx = mp.get_context("fork")
    # One torch thread per node (inherited by every fork): see docs/decisions.md.
    torch.set_num_threads(plan.config.launcher.torch_threads)
    warm_up_node(plan)
    if plan.keys.tls:
        warm_up_tls()
    gc.collect()
    gc.freeze()
    # Loading (Shakespeare's parser above all) leaves free chunks all over the heap; a child
    # allocating into them copies each page it writes. Returned to the OS first, they fault
    # in fresh and private only as far as the child really uses them.
    release_freed_memory()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield ctx
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


def reap(procs: list[BaseProcess], *, grace_s: float = 0.0) -> None:
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
