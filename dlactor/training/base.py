"""The training interface: local steps and evaluation of one node's model."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

import torch

from dlactor.context import EvalStats, RoundContext, TrainStats

__all__ = ["INLINE_UNDER_S", "Handoff", "Restarts", "Trainer"]

T = TypeVar("T")

#: Synchronous work whose last run took less CPU than this runs on the node's event loop
#: itself; longer work runs in the compute thread. Handing work to a thread and back costs
#: about 0.3 ms of CPU per call on a loaded machine (two thread wake-ups and GIL hand-overs:
#: 7% of the quickstart's CPU per node-round, measured side by side), while the loop, held
#: for a few milliseconds, loses nothing: peers' messages wait in the kernel's socket
#: buffers and are read when the work is done. For work of 10 ms and more, the hand-off is
#: under 3% of it, and the loop stays free to answer (handshakes, the launcher) meanwhile.
INLINE_UNDER_S = 0.010


@runtime_checkable
class Trainer(Protocol):
    async def train(self, ctx: RoundContext) -> TrainStats:
        """Run this round's local steps on ``ctx.model`` (off the event loop)."""
        ...

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        """Test loss and accuracy of ``ctx.model`` on the shared test set."""
        ...


@runtime_checkable
class Restarts(Protocol):
    """Optional for a trainer: forget the optimizer's state (momentum) when the model was
    replaced from outside (a FedAvg client's download), as FedAvg's local solver does."""

    def restart(self) -> None: ...


class Handoff:
    """Runs a trainer's synchronous work (a round's local steps, an evaluation) where it
    is cheapest: in the compute thread (asyncio's default executor) the first time and
    whenever its last run took ``inline_under_s`` of CPU or more, else on the event loop.

    Where the work runs changes nothing it computes (same ops, same order, same
    generator), only what it costs and how long the loop waits. On the loop it runs with
    the loop thread's torch state (grad mode, autocast) and the calling task's context
    variables, as the thread does with a copy of them. Each function is timed on its own
    (``train_steps`` and ``evaluate_now`` differ a lot): a bound method or a
    ``functools.partial`` counts as the function it wraps; anything else that is new at
    each call (a lambda made per call) should give a ``key``. Timed by the CPU time of the
    thread that ran it when torch runs on one thread (as in a node), else of the process,
    so torch's own threads count too.
    """

    #: Functions remembered at most (the oldest are forgotten first).
    REMEMBERED = 64

    def __init__(self, inline_under_s: float = INLINE_UNDER_S) -> None:
        self.inline_under_s = inline_under_s
        self._cpu: dict[object, float] = {}  # function -> CPU seconds of its last run

    async def run(self, fn: Callable[..., T], *args: object, key: object = None) -> T:
        if key is None:
            key = fn.func if isinstance(fn, functools.partial) else fn
            key = getattr(key, "__func__", key)  # a bound method is new at each access
        last = self._cpu.get(key)
        if last is not None and last < self.inline_under_s:
            return self._timed(key, fn, *args)
        return await asyncio.to_thread(self._timed, key, fn, *args)

    def _timed(self, key: object, fn: Callable[..., T], *args: object) -> T:
        clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
        start = clock()
        try:
            return fn(*args)
        finally:
            self._cpu.pop(key, None)
            self._cpu[key] = clock() - start
            while len(self._cpu) > self.REMEMBERED:
                del self._cpu[next(iter(self._cpu))]
