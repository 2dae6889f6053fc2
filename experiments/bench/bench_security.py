"""What peer identity and TLS cost: the handshake per connection, TLS's throughput against
plain TCP, and the quickstart's round time against the revision before per-node identity.

Every pair is measured side by side in one run, alternating, so that the machine's load
falls on both alike: the ratios are the figures to read.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from report import Section, Table

from dlactor.launch.worker import run_event_loop
from dlactor.messages import Payload, Share
from dlactor.security.credentials import Credentials
from dlactor.testing import credentials
from dlactor.transport.tcp import TcpTransport

REPO = Path(__file__).resolve().parents[2]
#: The last revision before per-node identity (a shared secret in every hello).
BASELINE_REV = "bed4373"
FRAME_BYTES = 4 << 20


@dataclass
class SecurityResult:
    connect_ms: dict[str, list[float]] = field(default_factory=dict)  # per connection
    gbps: dict[str, list[float]] = field(default_factory=dict)  # throughput, by mode
    round_ms: dict[str, list[float]] = field(default_factory=dict)  # quickstart median round
    baseline: str = BASELINE_REV
    connections: int = 0
    frames: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- handshake per connection


async def _connections(creds: list[Credentials] | None, count: int) -> list[float]:
    """Seconds per connection: open, (handshake,) one small frame, close."""
    if creds is None:
        return await _bare_connections(count)
    got = asyncio.Event()
    receiver = TcpTransport(credentials=creds[1], deliver=lambda m, n: got.set())
    sender = TcpTransport(credentials=creds[0], deliver=lambda m, n: None)
    address = await receiver.start()
    sender.set_peers({1: address})
    times = []
    for r in range(count):
        got.clear()
        t0 = time.perf_counter()
        await sender.send(1, Share(0, r, Payload()))
        await got.wait()
        times.append(time.perf_counter() - t0)
        sender.close_peer(1)
    await sender.stop()
    await receiver.stop()
    return times


async def _bare_connections(count: int) -> list[float]:
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(64)
        got.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    times = []
    for _ in range(count):
        got.clear()
        t0 = time.perf_counter()
        _, writer = await asyncio.open_connection(*address)
        writer.write(bytes(64))
        await got.wait()
        times.append(time.perf_counter() - t0)
        writer.close()
    server.close()
    await server.wait_closed()
    return times


# ---------------------------------------------------------------- throughput, plain vs TLS


def _receive(creds: list[Credentials], frames: int, conn: object) -> None:
    async def main() -> None:
        done = asyncio.Event()
        count = 0

        def deliver(msg: object, nbytes: int) -> None:
            nonlocal count
            count += 1
            if count == frames:
                done.set()

        transport = TcpTransport(credentials=creds[1], deliver=deliver)  # type: ignore[arg-type]
        conn.send(await transport.start())  # type: ignore[attr-defined]
        await done.wait()
        conn.send(time.perf_counter())  # type: ignore[attr-defined]
        await transport.stop()

    run_event_loop(main())


def _throughput(tls: bool, frames: int) -> float:
    creds = credentials(2, tls=tls)
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_receive, args=(creds, frames, child))
    proc.start()
    address = parent.recv()
    payload = Payload({"params": torch.ones(FRAME_BYTES // 4)})

    async def send() -> float:
        sender = TcpTransport(credentials=creds[0], deliver=lambda m, n: None)
        sender.set_peers({1: address})
        await sender.send(1, Share(0, 0, Payload()))  # connect and handshake first
        t0 = time.perf_counter()
        for r in range(1, frames):
            await sender.send(1, Share(0, r, payload))
        end = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        await sender.stop()
        return float(end) - t0

    seconds = run_event_loop(send())
    proc.join(30)
    return (frames - 1) * FRAME_BYTES / seconds / 1e9


# ---------------------------------------------------------------- quickstart round time


#: Put first on a baseline's PYTHONPATH: this installation declares its own strategies as
#: dlactor.plugins entry points, which an older checkout (which registers them itself, and
#: may not have those modules) must not import.
_HIDE_OWN_ENTRY_POINTS = """
import importlib.metadata as metadata

_entry_points = metadata.entry_points


def entry_points(**select):
    found = _entry_points(**select)
    if select.get("group") != "dlactor.plugins":
        return found
    return metadata.EntryPoints(ep for ep in found if not ep.value.startswith("dlactor."))


metadata.entry_points = entry_points
"""


def _round_ms(checkout: Path, out: Path, *overrides: str) -> float:
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "dlactor", "launch", "configs/quickstart.toml", "--out",
           str(out), "--no-progress", *sets]  # fmt: skip
    path = [str(checkout)]
    if checkout != REPO:
        shim = out.parent / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(_HIDE_OWN_ENTRY_POINTS)
        path.insert(0, str(shim))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True, timeout=600)
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(out)
    return float(summary["round_s_median"]) * 1e3


def _baseline_checkout(rev: str, into: Path) -> Path | None:
    """A work tree of ``rev`` (None if git cannot make one: no history in this copy)."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev],
        capture_output=True,
        text=True,
    )
    return into if done.returncode == 0 else None


def _quickstart_rounds(result: SecurityResult, reps: int, progress: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="dlactor-bench-") as tmp:
        base = _baseline_checkout(result.baseline, Path(tmp) / "baseline")
        if base is None:
            result.notes.append(f"no baseline: git could not check out {result.baseline}")
        runs: dict[str, tuple[Path, tuple[str, ...]]] = {
            "this revision": (REPO, ()),
            "this revision, security.tls=on": (REPO, ("security.tls=on",)),
        }
        if base is not None:
            runs = {f"baseline ({result.baseline})": (base, ()), **runs}
        try:
            for rep in range(reps):
                for name, (checkout, sets) in runs.items():
                    progress(f"quickstart {rep + 1}/{reps}: {name}")
                    out = Path(tmp) / "runs"
                    result.round_ms.setdefault(name, []).append(_round_ms(checkout, out, *sets))
        finally:
            if base is not None:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                    capture_output=True,
                )


def run_security(progress: Callable[[str], None], *, quick: bool = False) -> SecurityResult:
    count, frames, reps = (50, 16, 1) if quick else (300, 64, 3)
    result = SecurityResult(connections=count, frames=frames)
    modes: dict[str, list[Credentials] | None] = {
        "bare TCP connect (no handshake)": None,
        "dlactor, handshake": credentials(2),
        "dlactor, handshake over TLS": credentials(2, tls=True),
    }
    for rep in range(reps):
        for name, creds in modes.items():
            progress(f"connections {rep + 1}/{reps}: {name}")
            times = run_event_loop(_connections(creds, count))
            result.connect_ms.setdefault(name, []).append(statistics.median(times) * 1e3)
        for tls in (False, True):
            name = "TLS 1.3" if tls else "plain TCP"
            progress(f"throughput {rep + 1}/{reps}: {name}")
            result.gbps.setdefault(name, []).append(_throughput(tls, frames))
    _quickstart_rounds(result, 3 if quick else 8, progress)
    return result


def security_section(result: SecurityResult) -> Section:
    connections = Table(["connection", "median ms per connection", "vs bare TCP"])
    bare = statistics.median(result.connect_ms["bare TCP connect (no handshake)"])
    for name, values in result.connect_ms.items():
        ms = statistics.median(values)
        connections.add(name, f"{ms:.3f}", f"+{ms - bare:.3f} ms")
    throughput = Table(["transport", "GB/s (median)", "of plain TCP"])
    plain = statistics.median(result.gbps["plain TCP"])
    for name, values in result.gbps.items():
        gbps = statistics.median(values)
        throughput.add(name, f"{gbps:.2f}", f"{gbps / plain:.0%}")
    rounds = Table(["quickstart (16 nodes, 40 rounds)", "median round, ms: median of runs",
                    "fastest run", "runs", "vs first row, run by run (median)"])  # fmt: skip
    first: list[float] = []
    for name, values in result.round_ms.items():
        first = first or values
        paired = statistics.median(v / f - 1 for v, f in zip(values, first, strict=True))
        rounds.add(name, f"{statistics.median(values):.1f}", f"{min(values):.1f}",
                   str(len(values)), f"{paired:+.1%}")  # fmt: skip
    intro = (
        "Each connection opens with a mutual challenge-response handshake (Ed25519, "
        "docs/security.md); TLS adds encryption and integrity. Connection cost: a sender "
        "opens a connection to a receiver in the same process, completes the handshake and "
        "sends one empty share, until the receiver has it (the median of "
        f"{result.connections} connections, then the median of "
        f"{len(next(iter(result.connect_ms.values())))} such runs, the variants in turn). "
        f"Throughput: {result.frames} shares of {FRAME_BYTES >> 20} MiB from one process to "
        "another over loopback. Quickstart: `dlactor launch configs/quickstart.toml`, the "
        "baseline revision run from a git work tree of it, every variant in turn."
    )
    return Section(
        "8. Security: handshake cost, TLS throughput, round time",
        intro,
        [connections, throughput, rounds],
        result.notes,
    )
