"""Section 9: the emulated network. How precisely the wall clock holds messages over real
TCP, at several sizes and rates; and what emulation costs a run on the virtual clock.

Precision: a sender and a receiver in this process, each on a TcpTransport on 127.0.0.1
behind an EmulatedTransport on the wall clock; one share at a time, from the send to its
delivery, against the model's latency + bytes / rate. Cost: the quickstart's median round,
plain and with a virtual-clock ``[network]`` table, the two launched in turn.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from launches import quickstart_summary
from report import Section, Table

from dlactor.messages import Message, Payload, Share
from dlactor.network.model import MBPS, NetworkModel
from dlactor.network.settings import NetworkSettings
from dlactor.testing import credentials, emulated_tcp

REPO = Path(__file__).resolve().parents[2]
SIZES = (10_000, 100_000, 1_000_000, 4_000_000)  # bytes of tensor data per share
RATES = (8.0, 100.0)  # Mbit/s
LATENCY_MS = 20.0
VIRTUAL = ("network.uplink_mbps=50", "network.downlink_mbps=50", "network.latency_ms=30")


@dataclass
class NetworkResult:
    #: (rate, wire bytes) -> (expected s, measured s per repetition)
    held: dict[tuple[float, int], tuple[float, list[float]]] = field(default_factory=dict)
    round_ms: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def _precision(rate: float, floats: int, reps: int) -> tuple[int, float, list[float]]:
    settings = NetworkSettings(clock="wall", uplink_mbps=rate, latency_ms=LATENCY_MS)
    model = NetworkModel(settings, nodes=2, processes=2, seed=0)
    creds = credentials(2, run_id="bench-network")
    arrived: asyncio.Queue[float] = asyncio.Queue()

    def deliver(msg: Message, nbytes: int) -> None:
        arrived.put_nowait(time.perf_counter())

    receiver = emulated_tcp(model, 1, creds[1], deliver)
    sender = emulated_tcp(model, 0, creds[0], lambda m, n: None)
    sender.set_peers({1: await receiver.start()})
    await sender.start()
    msg = Share(0, 0, Payload({"x": torch.zeros(floats)}))
    nbytes = sender.wire_size(msg)
    expected = LATENCY_MS / 1000 + nbytes / (rate * MBPS)
    times = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        await sender.send_all([1], Share(0, rep, msg.payload))
        t1 = await asyncio.wait_for(arrived.get(), 60)
        if rep:  # the first opens the connection (its handshake is not emulated)
            times.append(t1 - t0)
        await asyncio.sleep(expected)  # let the uplink empty: one share at a time
    await sender.stop()
    await receiver.stop()
    return nbytes, expected, times


def _round_ms(out: Path, *overrides: str) -> float:
    return float(quickstart_summary(out, *overrides)["round_s_median"]) * 1000


def run_network(progress: Callable[[str], None], *, quick: bool = False) -> NetworkResult:
    result = NetworkResult()
    reps = 2 if quick else 5
    for rate in RATES:
        for size in SIZES:
            progress(f"network: {size:,} bytes at {rate:g} Mbit/s, {reps} shares")
            nbytes, expected, times = asyncio.run(_precision(rate, size // 4, reps))
            result.held[(rate, nbytes)] = (expected, times)
    variants = {"plain": (), "[network] on the virtual clock": VIRTUAL}
    for name in variants:
        result.round_ms[name] = []
    with tempfile.TemporaryDirectory(prefix="dlactor-bench-") as tmp:
        for rep in range(2 if quick else 4):
            for name, overrides in variants.items():
                progress(f"network: quickstart, {name}, run {rep + 1}")
                result.round_ms[name].append(_round_ms(Path(tmp) / "out", *overrides))
    return result


def network_section(result: NetworkResult) -> Section:
    held = Table(["link", "share on the wire", "model (s)", "held, median (s)", "error",
                  "min-max (s)"])  # fmt: skip
    for (rate, nbytes), (expected, times) in result.held.items():
        median = statistics.median(times)
        held.add(f"{rate:g} Mbit/s, {LATENCY_MS:g} ms", f"{nbytes:,} B", f"{expected:.4f}",
                 f"{median:.4f}", f"{median / expected - 1:+.2%}",
                 f"{min(times):.4f}-{max(times):.4f}")  # fmt: skip
    rounds = Table(["quickstart (16 nodes, 40 rounds)", "median round, ms: median of runs",
                    "runs", "vs plain, run by run (median)"])  # fmt: skip
    plain = result.round_ms["plain"]
    for name, values in result.round_ms.items():
        paired = statistics.median(v / p - 1 for v, p in zip(values, plain, strict=True))
        rounds.add(name, f"{statistics.median(values):.1f}", str(len(values)), f"{paired:+.1%}")
    intro = (
        'Wall clock (`[network] clock = "wall"`): one share at a time from a sender to a '
        "receiver, each a TcpTransport on 127.0.0.1 behind the emulated network, in one "
        "process; the time from the send to the delivery against the model's latency + "
        "bytes / rate. Virtual clock: the wall time of the quickstart's median round, plain "
        f"and with `{' '.join(VIRTUAL)}` (the two launched in turn): what the stamps and "
        "their bookkeeping cost this machine (the virtual time is the run's own)."
    )
    return Section(
        "9. Emulated network: wall-clock precision, virtual-clock cost",
        intro,
        [held, rounds],
        result.notes,
    )
