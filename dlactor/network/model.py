"""The emulated network's numbers: each process's bandwidths, each link's latency, at any time.

Pure and deterministic: every process of a run builds the same :class:`NetworkModel` from the
same settings, files and seed, so a sender and a receiver agree on every value without
talking. Time is the run's clock (virtual seconds, or wall seconds since the start barrier);
a trace's change applies to messages whose transfer starts at or after its time.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from dlactor.network.clock import Clock
from dlactor.network.files import TraceRow

if TYPE_CHECKING:
    from dlactor.network.settings import NetworkSettings

__all__ = ["MBPS", "NetworkModel", "Schedule"]

#: Bytes per second in one Mbit/s.
MBPS = 1e6 / 8


class Schedule:
    """A value that changes at given times: ``at(t)`` is the last one set at or before ``t``."""

    __slots__ = ("_times", "_values")

    def __init__(self, value: float | None) -> None:
        self._times: list[float] = [-math.inf]
        self._values: list[float | None] = [value]

    def set(self, t: float, value: float) -> None:
        """From ``t`` on (times given in non-decreasing order), ``value``."""
        if t == self._times[-1]:
            self._values[-1] = value
        else:
            self._times.append(t)
            self._values.append(value)

    def at(self, t: float) -> float | None:
        return self._values[bisect_right(self._times, t) - 1]


def _rate(mbps: float | None) -> float:
    return math.inf if mbps is None else mbps * MBPS


class NetworkModel:
    """Bandwidths, latencies and compute speeds of every process of a run.

    Processes ``0..nodes-1`` are the learning nodes; the others (a peer sampler, a server)
    have the table's own values and follow the trace's ``*`` rows.
    """

    def __init__(
        self,
        settings: NetworkSettings,
        *,
        nodes: int,
        processes: int,
        seed: int,
        files: dict[str, object] | None = None,
    ) -> None:
        files = files or {}
        #: When the model was made (by the launcher, before any process): the wall clock's 0
        #: until the start barrier, which every process takes as its 0 from then on.
        self.epoch = time.time()
        self.settings = settings
        self.nodes, self.processes, self.seed = nodes, processes, seed
        self.virtual = settings.clock == "virtual"
        self.jitter_s = settings.jitter_ms / 1000.0
        self.loss, self.mss = settings.loss, settings.mss_bytes
        profile = settings.compute == "profile" and settings.step_ms is not None
        self.step_s = settings.step_ms / 1000.0 if profile and settings.step_ms else None
        self.merge_s = settings.merge_ms / 1000.0
        self.classes = self._assign_classes()
        up, down = _rate(settings.uplink_mbps), _rate(settings.downlink_mbps)
        self._up = [Schedule(up) for _ in range(processes)]
        self._down = [Schedule(down) for _ in range(processes)]
        self._access = [Schedule(0.0) for _ in range(processes)]
        self.speeds = np.ones(processes)
        for node, cls in self.classes.items():
            c = settings.classes[cls]
            if c.uplink_mbps is not None:
                self._up[node] = Schedule(_rate(c.uplink_mbps))
            if c.downlink_mbps is not None:
                self._down[node] = Schedule(_rate(c.downlink_mbps))
            self._access[node] = Schedule(c.latency_ms / 1000.0)
            self.speeds[node] = c.speed
        speeds = files.get("speeds")
        if speeds is not None:
            self.speeds[:nodes] = cast(np.ndarray, speeds)
        elif settings.speed_sigma > 0:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5EED,)))
            self.speeds[:nodes] *= rng.lognormal(0.0, settings.speed_sigma, nodes)
        self._matrix = cast("np.ndarray | None", files.get("latency_matrix"))
        self._base = Schedule(settings.latency_ms / 1000.0)
        self._links: dict[tuple[int, int], Schedule] = {}
        for row in cast(Sequence[TraceRow], files.get("trace", ())):
            self._apply(row)

    def _assign_classes(self) -> dict[int, int]:
        """node -> index of its class: listed nodes first, then each fraction drawn (seeded)
        from the nodes no class has yet, in the classes' order."""
        out: dict[int, int] = {}
        for k, cls in enumerate(self.settings.classes):
            for node in cls.nodes or []:
                out[node] = k
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0xC1A55,)))
        for k, cls in enumerate(self.settings.classes):
            if cls.fraction is None:
                continue
            free = np.array([n for n in range(self.nodes) if n not in out], dtype=np.int64)
            count = min(len(free), max(1, round(cls.fraction * self.nodes)))
            for node in rng.choice(free, size=count, replace=False):
                out[int(node)] = k
        return out

    def _apply(self, row: TraceRow) -> None:
        t = row.time_s
        if isinstance(row.target, tuple):
            link = self._links.setdefault(row.target, Schedule(None))
            link.set(t, cast(float, row.latency_ms) / 1000.0)
            return
        targets = range(self.processes) if row.target == "*" else [cast(int, row.target)]
        for p in targets:
            if row.uplink_mbps is not None:
                self._up[p].set(t, _rate(row.uplink_mbps))
            if row.downlink_mbps is not None:
                self._down[p].set(t, _rate(row.downlink_mbps))
            if row.latency_ms is not None and row.target != "*":
                self._access[p].set(t, row.latency_ms / 1000.0)
        if row.target == "*" and row.latency_ms is not None:
            self._base.set(t, row.latency_ms / 1000.0)

    # --- values at a time ---------------------------------------------------------------

    def uplink(self, process: int, t: float) -> float:
        """Bytes per second (inf: unlimited)."""
        return cast(float, self._up[process].at(t))

    def downlink(self, process: int, t: float) -> float:
        return cast(float, self._down[process].at(t))

    def latency(self, i: int, j: int, t: float) -> float:
        """One-way latency from ``i`` to ``j`` in seconds, before jitter: the link's own (a
        trace's link row, else the matrix, else the table's, changed by ``*`` rows) plus both
        ends' access latency (their class's, or their trace rows')."""
        base: float | None = None
        link = self._links.get((min(i, j), max(i, j)))
        if link is not None:
            base = link.at(t)
        if base is None:
            if self._matrix is not None and i < self.nodes and j < self.nodes:
                base = float(self._matrix[i, j])
            else:
                base = cast(float, self._base.at(t))
        return base + cast(float, self._access[i].at(t)) + cast(float, self._access[j].at(t))

    def jitter(self, i: int, j: int, seq: int) -> float:
        """Message ``seq`` on the link i -> j: its latency's deviation, uniform in
        +-jitter, the same in every process and on every run with this seed."""
        if not self.jitter_s:
            return 0.0
        return random.Random(f"{self.seed}/{i}/{j}/{seq}").uniform(-self.jitter_s, self.jitter_s)

    def tcp_rate(self, rtt: float) -> float:
        """The steady-state rate of one TCP flow with this round-trip time at the packet loss
        rate (Mathis et al., 1997): MSS / RTT * sqrt(3 / (2 p)); inf without loss."""
        if self.loss <= 0 or rtt <= 0:
            return math.inf
        return self.mss / rtt * math.sqrt(1.5 / self.loss)

    def transfer(
        self, i: int, j: int, t: float, nbytes: int, seq: int, share: int = 1
    ) -> tuple[float, float]:
        """A message of ``nbytes`` from ``i`` to ``j`` whose first byte leaves at ``t``, one
        of ``share`` sent together: its latency, and how long until ``i``'s uplink has pushed
        its last byte (at 1/``share`` of the uplink's rate, or the lossy link's TCP rate if
        that is lower)."""
        latency = self.latency(i, j, t)
        rtt = latency + self.latency(j, i, t)
        rate = min(self.uplink(i, t) / share, self.tcp_rate(rtt))
        return max(0.0, latency + self.jitter(i, j, seq)), nbytes / rate

    def speed(self, process: int) -> float:
        """``process``'s compute speed factor; on the wall clock at most 1 (this machine
        cannot be made faster)."""
        speed = float(self.speeds[process])
        return speed if self.virtual else min(speed, 1.0)

    def clock(self, process: int) -> Clock:
        """A new clock for ``process``."""
        return Clock(
            virtual=self.virtual,
            speed=self.speed(process),
            step_s=self.step_s,
            merge_s=self.merge_s,
            epoch=self.epoch,
        )
