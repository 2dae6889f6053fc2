"""The launcher's control plane at 1,000 to 100,000 nodes, on this machine, without the nodes.

    .venv/bin/python experiments/bench/control_plane.py --nodes 1000 10000 100000

What runs is the launcher's real :class:`Supervisor` (its control service, the handshake,
the codec, the start barrier, progress, the end of the run), driven by light fake nodes in
a second process that speak the real control protocol: each proves who it is with its own
Ed25519 key (:class:`Initiator`), registers an address, receives the address book
(``Start``), reports every round (``Progress``), says ``Done`` and leaves when the launcher
closes. Nothing trains.

The two processes share one socketpair, multiplexed: a record names the connection it
belongs to, so that 100,000 control connections need neither 100,000 descriptors (this
machine's limit is 20,000 per process) nor 100,000 ephemeral ports (28,232 per source
address). On the launcher's side each connection is an asyncio stream as a real one is;
what the kernel does per socket is not measured.

Each size runs in fresh processes and reports, per phase, the launcher's CPU and wall time
and its resident memory, and the bytes each way:

- ``connect``: every node's handshake and registration (at most ``--window`` handshakes
  unfinished at once, as forked nodes trickle in);
- ``barrier``: the address book to every node, until every fake node has it;
- ``idle``: one second with nothing to do (the supervisor's own polling);
- ``rounds``: ``--rounds`` reports from every node (their ``Done`` waits until the launcher
  has counted the last);
- ``finish``: every node's ``Done``, and every connection closed.

The address book is ~52 bytes a process, to every process: O(N²) bytes in all. Above
``--elide-over`` bytes in all, only ``--sample`` nodes get its bytes (and decode it, timed);
the others get its length: the launcher still encodes it and queues it on every stream,
and the bytes it would send are counted. Past 65,536 processes the wire's 4 MiB header
bound (``MAX_HEADER``, hence the config's ``nodes`` limit) refuses the address book: the
simulation lifts it (``--lift-header-bound``, on by default past that size) to measure the
rest, and says so in its report.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from report import Section, Table

from dlactor.config import load_config
from dlactor.launch import control as control_module
from dlactor.launch.plan import Plan, make_plan
from dlactor.launch.supervisor import Supervisor
from dlactor.launch.worker import run_event_loop
from dlactor.messages import Done, Progress, Register, Start
from dlactor.security.credentials import Credentials, RunKeys
from dlactor.security.handshake import Initiator
from dlactor.security.identity import LAUNCHER, Identity, KeyRing, public_bytes
from dlactor.topology.graphs import MAX_NODES
from dlactor.wire import codec
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME, FrameDecoder

ROOT = Path(__file__).resolve().parents[2]
#: The wire's bound on a message's header, before the simulation may lift it.
HEADER_BOUND = codec.MAX_HEADER
QUICKSTART = ROOT / "configs" / "quickstart.toml"

# One multiplexed record: connection, kind, length; then the bytes.
_RECORD = struct.Struct("<IBI")
OPEN, DATA, EOF, ELIDED, SETUP, RESULT = range(6)
#: The connection of set-up and result records (no node's).
_CONTROL = 0xFFFFFFFF
_NODES_PER_MACHINE = 1000
_DEBUG = bool(os.environ.get("CONTROL_PLANE_DEBUG"))


def log(*what: object) -> None:
    if _DEBUG:
        print(f"[{os.getpid()} {time.monotonic():.3f}]", *what, file=sys.stderr, flush=True)


PHASES = ("connect", "barrier", "idle", "rounds", "finish")


def node_key(node: int) -> Ed25519PrivateKey:
    """A fake node's key, derived from its number (a simulation: not a secret)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"node %d" % node).digest())


def sampled(nodes: int, k: int) -> set[int]:
    """The nodes that get (and decode) the address book's bytes when the others do not."""
    return set(range(0, nodes, max(1, nodes // k)))


def node_address(node: int) -> tuple[str, int]:
    """Where a fake node says it listens: a thousand nodes a machine, a port each."""
    machine = node // _NODES_PER_MACHINE
    return f"10.0.{machine // 256}.{machine % 256}", 20000 + node % _NODES_PER_MACHINE


class Mux(asyncio.Protocol):
    """One end of the socketpair: records in, records out (queued, written as the socket
    takes them: buffers are kept by reference, so the address book queued on every stream
    is one object)."""

    def __init__(self, on_record: Callable[[int, int, memoryview], None]) -> None:
        self._on_record = on_record
        self._in = bytearray()
        self._out: deque[Any] = deque()
        self._paused = False
        self._scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.sent = 0  # bytes queued, headers included

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._in
        buf += data
        at, size = 0, len(buf)
        view = memoryview(buf)
        try:
            while size - at >= _RECORD.size:
                conn, kind, length = _RECORD.unpack_from(buf, at)
                end = at + _RECORD.size + length
                if end > size:
                    break
                self._on_record(conn, kind, view[at + _RECORD.size : end])
                at = end
        finally:
            view.release()
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    def send(self, conn: int, kind: int, *parts: Any) -> None:
        length = sum(len(p) for p in parts)
        self._out.append(_RECORD.pack(conn, kind, length))
        self._out.extend(parts)
        self.sent += _RECORD.size + length
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def pending(self) -> int:
        return len(self._out)

    def _flush(self) -> None:
        self._scheduled = False
        assert self.transport is not None
        out = self._out
        while out and not self._paused:
            batch, size = [], 0
            while out and size < 1 << 20:
                part = out.popleft()
                batch.append(part)
                size += len(part)
            self.transport.writelines(batch)


class Channel(asyncio.Transport):
    """One node's control connection, as the launcher's asyncio stream sees it."""

    def __init__(self, mux: Mux, conn: int, elide: Callable[[int, int], bool]) -> None:
        super().__init__()
        self._mux, self._conn, self._elide = mux, conn, elide
        self._closing = False
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: Any) -> None:
        self.writelines([data])

    def writelines(self, parts: Any) -> None:
        if self._closing:
            return
        parts = list(parts)
        length = sum(len(p) for p in parts)
        if self._elide(self._conn, length):
            self._mux.send(self._conn, ELIDED, struct.pack("<Q", length))
            SENT_ELIDED[0] += length
        else:
            self._mux.send(self._conn, DATA, *parts)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._mux.send(self._conn, EOF)
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


#: Bytes of frames the launcher queued whose bytes were not sent (their lengths were).
SENT_ELIDED = [0]


# ---------------------------------------------------------------------------- the launcher


def sim_plan(nodes: int, rounds: int) -> Plan:
    """The quickstart's plan with ``nodes`` fake nodes: built for 16 nodes and widened
    (the supervisor reads the node count, the model for the consensus layout, and the
    launcher's and security's settings). Past ``MAX_NODES`` the config would refuse it."""
    config = load_config(
        QUICKSTART,
        [
            "nodes=16",
            f"rounds={rounds}",
            "launcher.start_timeout_s=3600",
            "security.handshake_timeout_s=300",
            "evaluation.consensus=false",
        ],
    )
    plan = make_plan(config)
    return dataclasses.replace(plan, config=config.model_copy(update={"nodes": nodes}))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def launcher_main(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One size, this process the launcher: returns the report."""
    if args.lift_header_bound:
        codec.MAX_HEADER = 1 << 30
    plan = sim_plan(nodes, args.rounds)
    launcher_key = Ed25519PrivateKey.generate()
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--fake-nodes",
            str(theirs.fileno()),
            "--nodes",
            str(nodes),
            "--rounds",
            str(args.rounds),
            "--window",
            str(args.window),
            "--sample",
            str(args.sample),
            *(["--lift-header-bound"] if args.lift_header_bound else []),
        ],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        return run_event_loop(_launch(plan, nodes, launcher_key, ours, args))
    finally:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _launch(
    plan: Plan, nodes: int, launcher_key: Ed25519PrivateKey, sock: socket.socket, args: Any
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    setups: asyncio.Queue[bytes] = asyncio.Queue()  # from the farm, in order
    result: asyncio.Future[dict[str, Any]] = loop.create_future()
    channels: dict[int, tuple[asyncio.StreamReaderProtocol, Channel]] = {}
    handlers: set[asyncio.Task[None]] = set()  # as a server keeps its connections' tasks
    supervisor: Supervisor | None = None
    received = [0]
    sample = sampled(nodes, args.sample)

    def elide(conn: int, length: int) -> bool:
        return big_book and conn not in sample and length > 4096  # only the book is

    def on_record(conn: int, kind: int, data: memoryview) -> None:
        received[0] += _RECORD.size + len(data)
        if kind == DATA:
            channels[conn][0].data_received(bytes(data))
        elif kind == OPEN:
            assert supervisor is not None
            reader = asyncio.StreamReader(limit=1 << 16)
            protocol = asyncio.StreamReaderProtocol(reader)
            channel = Channel(mux, conn, elide)
            channel.protocol = protocol
            protocol.connection_made(channel)
            writer = asyncio.StreamWriter(channel, protocol, reader, loop)
            channels[conn] = protocol, channel
            task = loop.create_task(supervisor.serve_control(reader, writer))
            handlers.add(task)
            task.add_done_callback(handlers.discard)
        elif kind == EOF:
            protocol, channel = channels.pop(conn)
            if not channel.is_closing():  # else the launcher closed it first: nothing to tell
                protocol.eof_received()
                protocol.connection_lost(None)
        elif kind == SETUP:
            setups.put_nowait(bytes(data))
        elif kind == RESULT:
            result.set_result(json.loads(bytes(data)))

    _, mux = await loop.connect_accepted_socket(lambda: Mux(on_record), sock=sock)
    mux.send(_CONTROL, SETUP, public_bytes(launcher_key), plan.run_id.encode())
    keys_in = asyncio.ensure_future(setups.get())  # every fake node's public key, 32 bytes each
    await asyncio.wait({keys_in, mux.closed}, return_when=asyncio.FIRST_COMPLETED)
    if not keys_in.done():
        keys_in.cancel()
        raise SystemExit("the fake nodes' process closed the socketpair before its keys")
    publics = keys_in.result()
    log("launcher: got keys", len(publics))
    ring = {LAUNCHER: public_bytes(launcher_key)}
    ring.update({n: publics[32 * n : 32 * n + 32] for n in range(nodes)})
    keys = RunKeys({LAUNCHER: launcher_key}, KeyRing(ring))
    plan = dataclasses.replace(plan, keys=keys)
    credentials = Credentials(plan.run_id, Identity(LAUNCHER, launcher_key), keys.ring)
    book = 58 * nodes  # the address book's bytes, near enough to choose
    big_book = book * nodes > args.elide_over
    listener = socket.create_server(("127.0.0.1", 0))  # the run's server: nobody dials it
    supervisor = Supervisor(
        plan,
        _FakeProcesses(),
        listener,
        Path(args.run_dir),
        show_progress=False,
        credentials=credentials,
    )
    gc.collect()
    marks: dict[str, tuple[float, float, float, int, int]] = {}

    def mark(name: str) -> None:
        log("launcher: phase", name, "streams", len(supervisor.streams))
        marks[name] = (
            time.perf_counter(),
            time.process_time(),
            rss_mib(),
            mux.sent + SENT_ELIDED[0],
            received[0],
        )

    async def phases() -> None:
        assert supervisor is not None
        if not args.collector:
            gc.disable()
        mark("start")
        mux.send(_CONTROL, SETUP)  # go
        await supervisor._all_registered.wait()
        mark("connect")
        # Until the farm has the book on every node. Polling the launcher's side for "the
        # barrier began and nothing is left to send" could look between the supervisor
        # stamping the barrier and its sending task's first step, and count the whole book
        # in the idle phase.
        await setups.get()
        mark("barrier")
        await asyncio.sleep(1.0)
        mark("idle")
        mux.send(_CONTROL, SETUP)  # report the rounds
        while supervisor.progress.slowest < plan.config.rounds:
            await asyncio.sleep(0.001)
        mark("rounds")
        mux.send(_CONTROL, SETUP)  # now the Dones: else some are decoded within the rounds

    watcher = loop.create_task(phases())
    running = loop.create_task(supervisor.run())
    await asyncio.wait({running, mux.closed}, return_when=asyncio.FIRST_COMPLETED)
    if not running.done():  # the fake nodes' process went away: the run cannot go on
        supervisor.fail("failed", "the fake nodes' process closed the socketpair")
    outcome = await running
    mark("finish")
    listener.close()
    fake: dict[str, Any] = {}
    if outcome.status == "ok":
        await watcher
        fake = await asyncio.wait_for(result, 60)
    else:
        watcher.cancel()
    mux.transport.close()  # type: ignore[union-attr]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report: dict[str, Any] = {
        "nodes": nodes,
        "rounds": plan.config.rounds,
        "status": outcome.status,
        "reason": outcome.reason,
        # the book did not fit the wire's header: a real run this size is refused
        "header_bound_exceeded": fake.get("book_bytes", 0) > HEADER_BOUND,
        "book_elided": big_book,
        "collector": args.collector,
        "launcher_peak_rss_mib": round(peak, 1),
        "launcher_rss_before_mib": round(marks["start"][2], 1),
        "fake": fake,
        "phases": {},
    }
    previous = marks["start"]
    for name in [p for p in PHASES if p in marks]:  # a failed run stops short
        now = marks[name]
        report["phases"][name] = {
            "wall_s": round(now[0] - previous[0], 3),
            "cpu_s": round(now[1] - previous[1], 3),
            "rss_mib": round(now[2], 1),
            "sent_bytes": now[3] - previous[3],
            "received_bytes": now[4] - previous[4],
        }
        previous = now
    return report


class _FakeProcesses:
    """:class:`NodeProcesses` for fake nodes: all of them run until the end."""

    def ended(self, node: int) -> str | None:
        return None

    def kill(self, node: int) -> None:
        pass

    def local_pids(self) -> list[int]:
        return []

    def template_pids(self) -> list[int]:
        return []


# -------------------------------------------------------------------------- the fake nodes


class FakeNode:
    """One node's side of the control protocol, as callbacks: no coroutine, no stream."""

    __slots__ = ("decoder", "farm", "initiator", "node", "state")

    def __init__(self, farm: Farm, node: int, initiator: Initiator) -> None:
        self.farm, self.node, self.initiator = farm, node, initiator
        self.decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME, scratch_size=1 << 10)
        self.state = "challenge"

    def send(self, msg: Any) -> None:
        self.farm.mux.send(self.node, DATA, *codec.encode(msg))

    def on_data(self, data: memoryview) -> None:
        self.decoder.receive_data(data)
        while (body := self.decoder.next_frame()) is not None:
            self.on_frame(body)

    def on_frame(self, body: Any) -> None:
        if self.state == "challenge":
            self.send(self.initiator.on_challenge(codec.decode(body)))
            self.decoder.set_max_frame(control_module.FROM_LAUNCHER_MAX_FRAME)
            self.send(Register(self.node, *node_address(self.node)))
            self.state = "start"
            self.farm.handshaken()
        elif self.state == "start":
            self.farm.started(self, body)
            self.state = "run"
        else:
            raise AssertionError(f"node {self.node}: unexpected {codec.decode(body)!r}")


class Farm:
    """Every fake node, in one process, over one end of the socketpair."""

    def __init__(self, args: argparse.Namespace, launcher: bytes, run_id: str) -> None:
        self.args = args
        self.n = args.nodes
        keys = [node_key(n) for n in range(self.n)]
        ring = KeyRing({LAUNCHER: launcher})
        self.nodes = [
            FakeNode(self, n, Initiator(run_id, Identity(n, k), ring, LAUNCHER))
            for n, k in enumerate(keys)
        ]
        self.publics = b"".join(public_bytes(k) for k in keys)
        self.unfinished = 0
        self.opened = 0
        self.with_start = 0
        self.closed = 0
        self.sample = sampled(self.n, args.sample)
        self.decodes: list[float] = []
        self.book_entries = 0
        self.book_bytes = 0
        self.book_held_mib = 0.0
        self.all_started = asyncio.Event()
        self.all_closed = asyncio.Event()
        self.mux: Mux

    def open_more(self) -> None:
        while self.opened < self.n and self.unfinished < self.args.window:
            node = self.nodes[self.opened]
            self.opened += 1
            self.unfinished += 1
            self.mux.send(node.node, OPEN)
            node.send(node.initiator.hello())

    def handshaken(self) -> None:
        self.unfinished -= 1
        self.open_more()

    def started(self, node: FakeNode, body: Any) -> None:
        if body is not None and node.node in self.sample:
            self.book_bytes = len(body)
            first = not self.decodes
            if first:
                tracemalloc.start()
            t0 = time.perf_counter()
            start = codec.decode(body)
            self.decodes.append(time.perf_counter() - t0)
            if first:
                self.book_held_mib = tracemalloc.get_traced_memory()[0] / 2**20
                tracemalloc.stop()
            assert isinstance(start, Start), start
            self.book_entries = len(start.addresses)
            del start
        self.with_start += 1
        if self.with_start == self.n:
            self.all_started.set()

    def on_record(self, conn: int, kind: int, data: memoryview) -> None:
        if kind == DATA:
            self.nodes[conn].on_data(data)
        elif kind == ELIDED:
            (length,) = struct.unpack("<Q", data)
            self.book_bytes = max(self.book_bytes, length - 4)
            self.started(self.nodes[conn], None)
            self.nodes[conn].state = "run"
        elif kind == EOF:
            self.mux.send(conn, EOF)  # the node leaves, closing its end
            self.closed += 1
            if self.closed == self.n:
                self.all_closed.set()
        elif kind == SETUP:
            self.setups.put_nowait(bytes(data))

    async def run(self, sock: socket.socket) -> None:
        """Drive the nodes through the run, until the launcher closes the socketpair (if it
        closes it first, a run that failed, the farm stops there)."""
        loop = asyncio.get_running_loop()
        self.setups: asyncio.Queue[bytes] = asyncio.Queue()
        _, self.mux = await loop.connect_accepted_socket(lambda: Mux(self.on_record), sock=sock)
        driving = loop.create_task(self._drive())
        await asyncio.wait({driving, self.mux.closed}, return_when=asyncio.FIRST_COMPLETED)
        if not driving.done():
            driving.cancel()
        await asyncio.gather(driving, return_exceptions=True)
        await self.mux.closed

    async def _drive(self) -> None:
        self.mux.send(_CONTROL, SETUP, self.publics)
        await self.setups.get()  # go
        log("farm: go")
        self.open_more()
        await self.all_started.wait()
        self.mux.send(_CONTROL, SETUP)  # every node has its book
        await self.setups.get()  # report the rounds
        for r in range(self.args.rounds):
            for node in self.nodes:
                node.send(Progress(node.node, r))
            await asyncio.sleep(0)
        await self.setups.get()  # the launcher has counted every report
        for node in self.nodes:
            node.send(Done(node.node))
        await self.all_closed.wait()
        decodes = sorted(self.decodes)
        report = {
            "book_entries": self.book_entries,
            "book_bytes": self.book_bytes,
            "book_decoded_by": len(decodes),
            "book_decode_ms_median": round(1e3 * decodes[len(decodes) // 2], 2)
            if decodes
            else None,
            "book_held_mib": round(self.book_held_mib, 2),
            "cpu_s": round(time.process_time(), 2),
        }
        self.mux.send(_CONTROL, RESULT, json.dumps(report).encode())


def fake_main(args: argparse.Namespace) -> None:
    if args.lift_header_bound:
        codec.MAX_HEADER = 1 << 30
        control_module.FROM_LAUNCHER_MAX_FRAME = 4 + (1 << 30)
    sock = socket.socket(fileno=args.fake_nodes)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # The launcher's key and the run id come first; then the farm takes the socket.
        head = await loop.sock_recv(sock, _RECORD.size)
        length = _RECORD.unpack(head)[2]
        setup = b""
        while len(setup) < length:
            setup += await loop.sock_recv(sock, length - len(setup))
        farm = Farm(args, setup[:32], setup[32:].decode())
        await farm.run(sock)

    sock.setblocking(False)
    run_event_loop(main())


# --------------------------------------------------------------------------------- the report

INTRO = (
    "The launcher's real supervisor (handshake, registration, the start barrier's address "
    "book, round reports, the end of the run) against light fake nodes in a second process "
    "that speak the real control protocol, each with its own key; nothing trains "
    "(`experiments/bench/control_plane.py`, its docstring says how). The two processes share "
    "one socketpair, multiplexed, so 100,000 connections need neither 100,000 descriptors "
    "nor ephemeral ports; what the kernel does per socket is not in these figures. Each size "
    "runs in fresh processes; CPU is the launcher process's, per phase."
)

#: What ``make bench`` runs: the issue's two sizes and one for the trend below them.
NODE_COUNTS = (1_000, 10_000, 100_000)


def run_control(
    progress: Callable[[str], None], counts: tuple[int, ...] = NODE_COUNTS, **options: Any
) -> list[dict[str, Any]]:
    """Each size in fresh processes (a launcher and its farm of fake nodes)."""
    reports = []
    for n in counts:
        progress(f"control plane, {n:,} fake nodes")
        cmd = [sys.executable, __file__, "--one", "--nodes", str(n)]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            cmd += (
                [flag]
                if value is True
                else [f"--no-{flag[2:]}"]
                if value is False
                else [flag, str(value)]
            )
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=1800)
        reports.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return reports


def _per(rep: dict[str, Any], phase: str) -> float:
    """The launcher's CPU in ``phase`` per node (per node-round for the rounds), in µs."""
    rounds = rep["rounds"] if phase == "rounds" else 1
    return rep["phases"][phase]["cpu_s"] / rep["nodes"] / rounds * 1e6


def control_section(runs: list[dict[str, Any]]) -> Section:
    reports = [r for r in runs if r["status"] == "ok"]
    counts = [f"{r['nodes']:,} nodes" for r in reports]
    cpu = Table(["launcher's CPU per node (µs)", *counts])
    labels = {
        "connect": "connect: handshake and registration",
        "barrier": "barrier: the address book to every node",
        "idle": "idle: one second of supervision",
        "rounds": "rounds: one report (per node-round)",
        "finish": "finish: Done, and the connections closed",
    }
    for phase in PHASES:
        cpu.add(labels[phase], *(f"{_per(r, phase):,.1f}" for r in reports))
    sizes = Table(["figure", *counts])
    sizes.add(
        "wall time, first handshake to the last close (s)",
        *(f"{sum(p['wall_s'] for p in r['phases'].values()):,.1f}" for r in reports),
    )
    sizes.add(
        "launcher's RSS before the first connection (MiB)",
        *(f"{r['launcher_rss_before_mib']:,.0f}" for r in reports),
    )
    sizes.add(
        "launcher's RSS after the run (MiB)",
        *(f"{r['phases']['finish']['rss_mib']:,.0f}" for r in reports),
    )
    sizes.add(
        "address book, one node's copy (bytes)", *(f"{r['fake']['book_bytes']:,}" for r in reports)
    )
    sizes.add(
        "address book, the launcher's bytes to all nodes (MiB)",
        *(f"{r['phases']['barrier']['sent_bytes'] / 2**20:,.0f}" for r in reports),
    )
    sizes.add(
        "a node's decode of its copy, median of the sample (ms)",
        *(f"{r['fake']['book_decode_ms_median']}" for r in reports),
    )
    sizes.add(
        "a node's memory for the decoded book (MiB)",
        *(f"{r['fake']['book_held_mib']:.2f}" for r in reports),
    )
    failed = [r for r in runs if r not in reports]
    notes = [f"{r['nodes']:,} nodes: {r['status']}, {r['reason']}" for r in failed]
    for r in reports:
        if not r.get("collector", True):
            notes.append(f"{r['nodes']:,} nodes: the launcher ran with Python's collector off.")
        if r["book_elided"]:
            notes.append(
                f"{r['nodes']:,} nodes: only {r['fake']['book_decoded_by']} sampled nodes got the "
                "address book's bytes (the others its length); the launcher encoded it once "
                "and queued it on every stream, and the bytes it would send are counted. "
                "So its barrier CPU leaves out copying them, which sized by the others' "
                "(where every byte was sent) is O(nodes) per node."
            )
        if r["header_bound_exceeded"]:
            notes.append(
                f"{r['nodes']:,} nodes: the address book exceeds the wire's 4 MiB header "
                "bound, so a real run this size would be refused at its start barrier (and "
                f"the config's `nodes` stops at {MAX_NODES:,} before it); the simulation "
                "lifted the bound to measure the rest."
            )
    if len(reports) > 1:  # the two largest sizes: below them, fixed costs blur the trend
        small, big = reports[-2], reports[-1]
        grow = big["nodes"] / small["nodes"]
        for phase in PHASES:
            a, b = _per(small, phase), _per(big, phase)
            if a > 0 and b / a > 1.5:
                notes.append(
                    f"{labels[phase]}: {b / a:.1f}x the CPU per node at {grow:,.0f}x the "
                    f"nodes ({a:,.1f} → {b:,.1f} µs): more than linear."
                )
    return Section(
        "12. The control plane at 100,000 nodes (simulated)",
        INTRO,
        [cpu, sizes],
        notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODE_COUNTS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--window", type=int, default=512, help="handshakes unfinished at once")
    parser.add_argument("--sample", type=int, default=64, help="nodes that decode the book")
    parser.add_argument(
        "--elide-over",
        type=float,
        default=8e9,
        help="address-book bytes in all above which only the sample gets them",
    )
    parser.add_argument("--lift-header-bound", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--collector",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-collector: the launcher runs with Python's collector off, to see its cost",
    )
    parser.add_argument("--run-dir", default="/tmp/dlactor-control-plane")
    parser.add_argument("--fake-nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_nodes is not None:
        args.nodes = args.nodes[0]
        fake_main(args)
        return
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(launcher_main(args.nodes[0], args)))
        return
    options = {
        "rounds": args.rounds,
        "window": args.window,
        "sample": args.sample,
        "elide_over": args.elide_over,
        "run_dir": args.run_dir,
        "lift_header_bound": args.lift_header_bound,
        "collector": args.collector,
    }
    reports = run_control(print, tuple(args.nodes), **options)
    print(control_section(reports).render())


if __name__ == "__main__":
    main()
