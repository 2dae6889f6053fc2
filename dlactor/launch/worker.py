"""The node-process entry point: the same code under every backend.

A node process connects to the launcher's control address, proves it belongs to the
run (hello), starts its transport, registers its address, waits at the start barrier,
runs its rounds while listening for ``Stop``, and reports ``Done`` or ``Failed`` with
its traceback. It writes its own JSONL results, flushed every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import torch

from dlactor.launch.control import ControlStream
from dlactor.launch.plan import Plan, build_node
from dlactor.messages import Done, Failed, Hello, Payload, Progress, Register, Share, Start
from dlactor.metrics.recorder import JsonlRecorder
from dlactor.node.node import Node, Record
from dlactor.sharing.ops import flatten
from dlactor.transport.base import Address, Deliver
from dlactor.transport.tcp import TcpTransport

__all__ = ["EXIT_DONE", "EXIT_FAILED", "EXIT_STOPPED", "node_process_main", "run_event_loop"]

EXIT_DONE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where available (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    return uvloop.run(main)


def node_process_main(plan: Plan, node: int, control: Address, run_dir: Path) -> int:
    """Body of a node process; returns its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    _die_with_parent()
    torch.set_num_threads(plan.config.launcher.torch_threads)
    return run_event_loop(_node_main(plan, node, control, run_dir))


def _die_with_parent() -> None:
    """On Linux, ask the kernel to SIGKILL us if the launcher dies, so nothing is orphaned."""
    if not os.path.exists("/proc/self"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


async def _node_main(plan: Plan, node: int, control: Address, run_dir: Path) -> int:
    ctl = await ControlStream.connect(*control)
    await ctl.send(Hello(plan.run_id, plan.secret, node))
    recorder = JsonlRecorder(run_dir / "nodes" / f"{node}.jsonl")

    def on_round(record: Record) -> None:
        recorder.write(record)
        ctl.post(Progress(node, record["round"]))
        if "test_loss" in record and plan.config.evaluation.consensus and actor is not None:
            # the evaluated model, for the launcher's consensus distance
            params = Payload({"params": flatten(actor.model.parameters())})
            ctl.post(Share(node, record["round"], params))

    def transport(deliver: Deliver) -> TcpTransport:
        host = plan.config.launcher.host
        return TcpTransport(
            node=node, run_id=plan.run_id, secret=plan.secret, deliver=deliver, host=host
        )

    actor: Node | None = None
    try:
        actor = build_node(plan, node, transport, on_round=on_round)
        return await _lifecycle(actor, ctl)
    except Exception:
        await ctl.send(Failed(node, _clip(traceback.format_exc())))
        return EXIT_FAILED
    finally:
        if actor is not None:
            await actor.stop()
        recorder.close()
        ctl.close()


def _clip(text: str, limit: int = 64 << 10) -> str:
    """Keep a traceback's tail (the part that names the error) within one control frame."""
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


async def _lifecycle(actor: Node, ctl: ControlStream) -> int:
    host, port = await actor.start()
    await ctl.send(Register(actor.node, host, port))
    start = await ctl.receive()
    if not isinstance(start, Start):
        return EXIT_STOPPED  # Stop, or the launcher went away, before the barrier
    actor.connect(start.addresses, start.t0)
    run = asyncio.ensure_future(actor.run())
    watch = asyncio.ensure_future(ctl.receive())  # Stop, or EOF if the launcher died
    await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
    if not run.done():
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return EXIT_STOPPED
    watch.cancel()
    run.result()
    await ctl.send(Done(actor.node))
    return EXIT_DONE
