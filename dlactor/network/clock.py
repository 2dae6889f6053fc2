"""A process's time in a run with an emulated network.

``virtual``: nothing sleeps. The clock moves only when the process computes (its CPU time,
divided by its speed factor, or a device profile's fixed time per local step) and when it
takes in messages it waited for (it jumps to the last one's arrival): the same run gives the
same timeline on any machine, loaded or not, as far as the compute times allow.

``wall``: the clock is wall time since ``epoch``: the start barrier, the same instant for
every process, as for the records' ``t_wall`` (until the barrier, the instant the plan was
made); a slow device really takes longer (the process sleeps for the difference).
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["Clock"]


class Clock:
    """A process's clock on the emulated network: virtual seconds, or the wall clock."""

    checkpointed = ("t",)  # the virtual time reached

    def __init__(
        self,
        *,
        virtual: bool,
        speed: float = 1.0,
        step_s: float | None = None,
        merge_s: float = 0.0,
        epoch: float | None = None,
    ) -> None:
        self.virtual, self.speed, self.step_s, self.merge_s = virtual, speed, step_s, merge_s
        self.t = 0.0  # virtual seconds
        self.epoch = time.time() if epoch is None else epoch

    def now(self) -> float:
        return self.t if self.virtual else time.time() - self.epoch

    def reach(self, t: float) -> float:
        """Messages that arrive at ``t`` have been waited for: the virtual seconds waited."""
        if not self.virtual or t <= self.t:
            return 0.0
        waited, self.t = t - self.t, t
        return waited

    async def compute(self, cpu_s: float, *, steps: int = 0, merged: int = 0) -> float:
        """Charge ``cpu_s`` of CPU time just spent (``steps`` local steps, ``merged`` models
        merged) to this process's device: the seconds it costs on this clock."""
        if self.virtual:
            if self.step_s is not None:
                cost = (steps * self.step_s + merged * self.merge_s) / self.speed
            else:
                cost = cpu_s / self.speed
            self.t += cost
            return cost
        extra = cpu_s * (1.0 / self.speed - 1.0) if self.speed < 1.0 else 0.0
        if extra > 0:
            await asyncio.sleep(extra)
        return cpu_s + extra
