"""A few processes on the in-memory transport, each behind the emulated network."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from dlactor.messages import Message, Payload, Share
from dlactor.network.model import MBPS, NetworkModel
from dlactor.network.settings import NetworkSettings
from dlactor.transport.emulated import EmulatedTransport
from dlactor.transport.memory import MemoryNetwork

__all__ = ["MBPS", "Emulation", "share"]


def share(sender: int, round: int = 0, floats: int = 25_000) -> Share:
    """A share of ``floats`` float32 values (100 kB for the default)."""
    return Share(sender, round, Payload({"x": torch.zeros(floats)}))


class Emulation:
    """``n`` processes, each with a virtual (or wall) clock and an emulated transport."""

    def __init__(self, n: int, files: dict[str, object] | None = None, **network: Any) -> None:
        self.model = NetworkModel(
            NetworkSettings(**network), nodes=n, processes=n, seed=0, files=files
        )
        self.net = MemoryNetwork()
        self.got: dict[int, list[Message]] = {i: [] for i in range(n)}
        self.clocks = [self.model.clock(i) for i in range(n)]
        self.transports = [
            EmulatedTransport(
                partial(self.net.transport, i),
                partial(self._deliver, i),
                process=i,
                model=self.model,
                clock=self.clocks[i],
            )
            for i in range(n)
        ]

    def _deliver(self, process: int, msg: Message, nbytes: int) -> None:
        self.got[process].append(msg)

    async def start(self) -> None:
        for t in self.transports:
            await t.start()

    async def stop(self) -> None:
        for t in self.transports:
            await t.stop()
