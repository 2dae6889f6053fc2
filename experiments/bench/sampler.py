"""A sampler that watches one `dlactor launch` process tree, cheaply enough for 1024 nodes.

One thread ticks every 0.2-0.5 s: it reads /proc/meminfo, the launcher's /proc/<pid>/stat
and schedstat, the launcher's list of children, every child's /proc/<pid>/stat (state,
creation time) and its threads' schedstat (CPU time to the nanosecond: stat's is in 10 ms
ticks, truncated, which undercounts a node's start-up of a few ms to zero): ~15 us per
process. PSS needs /proc/<pid>/smaps_rollup, for which the kernel walks the process's whole
address space: measured at ~8 ms of CPU per node process here, so reading all 1024 nodes
would take 8 s of CPU per sample. So another thread, every ``rollup_every_s``, reads the
launcher and a fixed random subset of ``rollup_nodes`` nodes (chosen once every node is
alive), and the whole run's PSS is extrapolated from it.

It also guards the machine: if MemAvailable falls under ``guard_bytes`` it kills the
launcher (the nodes die with it, PR_SET_PDEATHSIG) and says so in ``aborted``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from procfs import Mem, MemInfo, SchedStat, Stat, children, threads, threads_cpu_s

SAMPLER_NICE = -10
#: PSS samples read ~16 processes at ~8 ms of CPU each: at nice -10 against 256 runnable
#: nodes one took 2 s of wall time. The highest nice level gets them done in a fraction.
ROLLUP_NICE = -20
GUARD_BYTES = 3 << 29  # 1.5 GiB


@dataclass(frozen=True)
class Tick:
    """What one tick saw; ``t`` is wall-clock time (time.time())."""

    t: float
    meminfo: MemInfo
    alive: int  # node processes (the launcher's children) that exist
    runnable: int  # of which in state R
    # CPU seconds used so far, summed over the node processes alive and every thread each was
    # seen with (schedstat; a thread that started and ended between two ticks is missed, and
    # one that ended counts at its last reading: a node keeps its two threads to the end)
    nodes_cpu_s: float
    nodes_loop_cpu_s: float  # of which their main threads' (a node's event loop)
    nodes_minor_faults: int  # minor page faults so far, summed over the node processes alive
    launcher_cpu_s: float  # the launcher process, every thread
    launcher_run_s: float  # the launcher's main thread (the one that forks): on a CPU
    launcher_wait_s: float  # the same thread: runnable, waiting for a CPU


@dataclass(frozen=True)
class Rollup:
    """PSS/USS of the launcher and of a subset of the nodes, read from ``t0`` to ``t1``;
    ``alive``: how many nodes existed at ``t0`` and still at ``t1`` (the smaller)."""

    t0: float
    t1: float
    alive: int
    launcher: Mem
    nodes: tuple[Mem, ...]


class RunSampler:
    """Samples a launcher (pid) and its ``nodes`` children until ``stop()``, in two threads:
    ticks every ``tick_s``, and PSS samples every ``rollup_every_s`` (which take long enough
    under load that they would delay the ticks)."""

    def __init__(
        self,
        pid: int,
        nodes: int,
        *,
        tick_s: float,
        rollup_every_s: float,
        rollup_nodes: int,
        guard_bytes: int = GUARD_BYTES,
        seed: int = 0,
    ) -> None:
        self.pid, self.nodes = pid, nodes
        self.tick_s, self.rollup_every_s, self.rollup_nodes = tick_s, rollup_every_s, rollup_nodes
        self.guard_bytes = guard_bytes
        self.ticks: list[Tick] = []
        self.rollups: list[Rollup] = []
        self.starts: dict[int, float] = {}  # node pid -> creation, seconds since boot
        self._threads_seen: dict[int, dict[int, float]] = {}  # node pid -> tid -> CPU s
        self.niced: list[bool] = []  # per thread: did raising its priority work
        self.aborted: str | None = None
        self.cpu_s = 0.0  # both threads' own CPU time
        self._rng = random.Random(seed)
        self._subset: list[int] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._tick, tick_s, SAMPLER_NICE)),
            threading.Thread(target=self._loop, args=(self._rollup, rollup_every_s, ROLLUP_NICE)),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, sample: Callable[[], None], interval_s: float, nice: int) -> None:
        # Hundreds of busy nodes on 2 cores starve a normal-priority thread: raise this
        # thread's priority where allowed, so that samples come at the interval.
        niced = False
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            niced = True
        while not self._done.wait(interval_s):
            sample()
        with self._lock:
            self.niced.append(niced)
            self.cpu_s += time.thread_time()

    def _tick(self) -> None:
        t = time.time()
        meminfo = MemInfo.now()
        if meminfo.available < self.guard_bytes and self.aborted is None:
            self.aborted = f"MemAvailable fell to {meminfo.available / 2**20:,.0f} MiB"
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        launcher, sched = Stat.of(self.pid), SchedStat.of(self.pid)
        if launcher is None or sched is None:
            return
        stats = [(pid, s) for pid in children(self.pid) if (s := Stat.of(pid)) is not None]
        for pid, s in stats:
            self.starts.setdefault(pid, s.start_s)
        runnable = sum(s.state == "R" for _, s in stats)
        cpu = loop_cpu = 0.0
        for pid, _ in stats:
            # A thread that has ended counts at its last reading: a node's compute thread
            # ends before the process does, when its event loop shuts down.
            seen = self._threads_seen.setdefault(pid, {})
            seen.update(threads_cpu_s(pid, threads(pid)))
            cpu += sum(seen.values())
            loop_cpu += seen.get(pid, 0.0)
        self.ticks.append(
            Tick(
                t,
                meminfo,
                len(stats),
                runnable,
                cpu,
                loop_cpu,
                sum(s.minor_faults for _, s in stats),
                launcher.cpu_s,
                sched.run_s,
                sched.wait_s,
            )
        )

    def _rollup(self) -> None:
        t0, pids = time.time(), children(self.pid)
        launcher = Mem.of(self.pid)
        if launcher is None:
            return
        nodes = [m for m in (Mem.of(p) for p in self._pick(pids)) if m is not None]
        alive = min(len(pids), len(children(self.pid)))
        self.rollups.append(Rollup(t0, time.time(), alive, launcher, tuple(nodes)))

    def _pick(self, pids: list[int]) -> list[int]:
        """The same random subset of nodes once every node is alive; before, any."""
        k = min(self.rollup_nodes, len(pids))
        if len(pids) < self.nodes:
            return self._rng.sample(pids, k)
        if self._subset is None:
            self._subset = self._rng.sample(pids, k)
        return self._subset


def value_at(ticks: list[Tick], t: float, field: str) -> float | None:
    """A tick field at wall time ``t``, interpolated linearly between the ticks around it
    (None outside the ticks' span)."""
    before = [x for x in ticks if x.t <= t]
    after = [x for x in ticks if x.t >= t]
    if not before or not after:
        return None
    a, b = before[-1], after[0]
    va, vb = float(getattr(a, field)), float(getattr(b, field))
    return va if b.t == a.t else va + (vb - va) * (t - a.t) / (b.t - a.t)
