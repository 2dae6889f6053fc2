"""Benchmark 2: TcpTransport throughput on 127.0.0.1 against a bare asyncio ceiling.

Every case runs in two fresh processes forked from the benchmark: a receiver (uvloop)
and a sender. Both implementations move the same frames (a `Share` of one float32
tensor, encoded by dlactor), and both receivers time the same thing: from the delivery
of the last warm-up message to the delivery of the last message, on the receiver's
monotonic clock, so connection set-up and slow start are left out.

- dlactor: a `TcpTransport` sender (`send` = `writelines` + `drain`, uvloop) and a
  `TcpTransport` receiver (its `BufferedProtocol` + `FrameDecoder` + `decode`, the
  connection's handshake answered, every message delivered to a callback). Both processes
  first set glibc's malloc thresholds as a node process does (`set_malloc_thresholds`).
- bare ceiling: a blocking `socket.sendall` loop of the same frame bytes, in pieces of at
  most 1 MiB (after the connection's handshake, so that it can also feed a dlactor
  receiver; one `sendall` of a whole 32 MB frame was half as fast), and an asyncio
  `BufferedProtocol` (uvloop) receiving into one preallocated, reused buffer (one frame, at
  least 64 KiB like `FrameDecoder`'s scratch buffer), counting bytes; no parsing at all once
  it has answered the handshake (so that it can also be fed by a dlactor sender).

Both sides are processes 0 (sender) and 1 (receiver) of one run, with keys made before the
processes are forked; the handshake is part of the set-up, outside the timed span.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import torch
import uvloop
from report import Section, Table, Verdict

from dlactor.messages import Message, Payload, Share
from dlactor.metrics.memory import MMAP_THRESHOLD, set_malloc_thresholds
from dlactor.security.handshake import Initiator, Responder
from dlactor.testing import credentials
from dlactor.transport.tcp import TcpTransport
from dlactor.wire import decode, encode, encoded_size
from dlactor.wire.framing import PREFIX_LEN

RUN_ID = "bench"
#: The sender's and the receiver's credentials (processes 0 and 1; the forked processes
#: inherit them).
SENDER, RECEIVER = credentials(2, run_id=RUN_ID)[:2]
CASE_TIMEOUT_S = 90.0
TARGET_SHARE = 0.70
TARGET_FROM = 4 << 20  # the target applies at 4 MB and above
KIB, MIB = 1 << 10, 1 << 20
SEND_CHUNK = 1 * MIB  # the bare sender's sendall size for frames larger than this


@dataclass(frozen=True)
class Case:
    """One message size and how many messages to time (after ``warmup`` untimed ones)."""

    tensor_bytes: int
    messages: int
    warmup: int

    def share(self, round_: int = 0) -> Share:
        tensor = torch.ones(self.tensor_bytes // 4, dtype=torch.float32)
        return Share(sender=0, round=round_, payload=Payload(tensors={"w": tensor}, meta={}))

    @cached_property
    def wire_bytes(self) -> int:
        return encoded_size(encode(self.share()))

    @property
    def total(self) -> int:
        return self.warmup + self.messages


#: Bounded by bytes: ~0.12 GB of 4 KB messages, 1-2 GB of the bigger ones.
CASES = (
    Case(4 * KIB, 30_000, 2_000),
    Case(256 * KIB, 4_000, 200),
    Case(4 * MIB, 400, 20),
    Case(32 * MIB, 60, 4),
)


class _Clock:
    """Times the span between two thresholds of a growing count (messages or bytes)."""

    def __init__(self, begin_at: int, end_at: int) -> None:
        self.count, self.begin_at, self.end_at = 0, begin_at, end_at
        self.t_begin = 0.0
        self.done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()

    def add(self, n: int) -> None:
        before = self.count
        self.count += n
        if before < self.begin_at <= self.count:
            self.t_begin = time.monotonic()
        if before < self.end_at <= self.count:
            self.done.set_result((self.t_begin, time.monotonic()))


class _Sink(asyncio.BufferedProtocol):
    """The bare ceiling's receiver: answers the handshake as the receiver, then every byte
    into one preallocated buffer, counted (the bytes after the proof only)."""

    def __init__(self, clock: _Clock, size: int) -> None:
        self.clock = clock
        self.buffer = memoryview(bytearray(size))
        self.transport: asyncio.Transport | None = None
        self.responder: Responder | None = Responder(RUN_ID, RECEIVER.identity, RECEIVER.ring)
        self.pending = bytearray()  # handshake bytes not parsed yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.responder is not None:
            self.pending += self.buffer[:nbytes]
            nbytes = self._handshake()
        self.clock.add(nbytes)

    def _handshake(self) -> int:
        """Answer the hello, check the proof; the bytes received after the proof."""
        while self.responder is not None and len(self.pending) >= PREFIX_LEN:
            end = PREFIX_LEN + int.from_bytes(self.pending[:PREFIX_LEN], "big")
            if len(self.pending) < end:
                return 0
            msg = decode(self.pending[PREFIX_LEN:end])
            del self.pending[:end]
            if self.responder.claimed is None:
                assert self.transport is not None
                self.transport.writelines(encode(self.responder.on_hello(msg)))
            else:
                self.responder.on_proof(msg)
                self.responder = None
        return len(self.pending) if self.responder is None else 0


def _receiver(
    main: Callable[[Case, Connection], Any], *, as_node: bool = False
) -> Callable[[Case, Connection], None]:
    """A receiver process body: run ``main`` on uvloop, report its result or its error.

    ``as_node``: first set glibc's malloc thresholds as a node process does.
    """

    def body(case: Case, conn: Connection) -> None:
        try:
            if as_node:
                _node_malloc()
            conn.send(("timing", uvloop.run(main(case, conn))))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))

    return body


def _node_malloc() -> None:
    if not set_malloc_thresholds():
        raise OSError("set_malloc_thresholds: no glibc mallopt here")


async def _dlactor_receive(case: Case, conn: Connection) -> tuple[float, float]:
    clock = _Clock(case.warmup, case.total)
    transport = TcpTransport(credentials=RECEIVER, deliver=lambda msg, nbytes: clock.add(1))
    conn.send(("address", await transport.start()))
    try:
        return await asyncio.wait_for(clock.done, CASE_TIMEOUT_S)
    finally:
        await transport.stop()


async def _bare_receive(
    case: Case, conn: Connection, sink_bytes: int | None = None
) -> tuple[float, float]:
    """Count bytes into one reused buffer: one frame (at least 64 KiB), or ``sink_bytes``."""
    clock = _Clock(case.warmup * case.wire_bytes, case.total * case.wire_bytes)
    size = sink_bytes or max(case.wire_bytes, 64 * KIB)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Sink(clock, size), "127.0.0.1", 0)
    conn.send(("address", server.sockets[0].getsockname()[:2]))
    try:
        return await asyncio.wait_for(clock.done, CASE_TIMEOUT_S)
    finally:
        server.close()


def _ignore(msg: Message, nbytes: int) -> None:
    pass


async def _dlactor_send(case: Case, address: tuple[str, int]) -> None:
    transport = TcpTransport(credentials=SENDER, deliver=_ignore)
    transport.set_peers({1: address})
    msg = case.share()
    for _ in range(case.total):
        await transport.send(1, msg)  # encodes every time, as a node does
    await transport.stop()


def dlactor_sender(case: Case, address: tuple[str, int]) -> None:
    _node_malloc()
    uvloop.run(_dlactor_send(case, address))


def bare_sender(case: Case, address: tuple[str, int]) -> None:
    frame = memoryview(b"".join(encode(case.share())))
    # One sendall of a whole 32 MB frame ran at half the speed of 1 MiB pieces here.
    pieces = [frame[i : i + SEND_CHUNK] for i in range(0, len(frame), SEND_CHUNK)]
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _bare_handshake(sock)  # so that a dlactor receiver accepts the connection
        for _ in range(case.total):
            for piece in pieces:
                sock.sendall(piece)


def _bare_handshake(sock: socket.socket) -> None:
    """The sender's side of the handshake, on a blocking socket."""
    initiator = Initiator(RUN_ID, SENDER.identity, SENDER.ring, 1)
    sock.sendall(b"".join(encode(initiator.hello())))
    length = int.from_bytes(_recv_exactly(sock, PREFIX_LEN), "big")
    challenge = decode(bytearray(_recv_exactly(sock, length)))
    sock.sendall(b"".join(encode(initiator.on_challenge(challenge))))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the receiver closed the connection during the handshake")
        data += chunk
    return bytes(data)


#: name: (receiver, sender). The mixed pairs show which side limits dlactor; the last one
#: shows what the node's malloc thresholds buy.
DEFAULT_MALLOC = "dlactor, receiver with glibc's default malloc thresholds"
SMALL_SINK = "bare, receiver reusing a 64 KiB buffer (no frame is ever whole)"
IMPLS = {
    "dlactor": (_receiver(_dlactor_receive, as_node=True), dlactor_sender),
    "bare": (_receiver(_bare_receive), bare_sender),
    "dlactor sender -> bare receiver": (_receiver(_bare_receive), dlactor_sender),
    "bare sender -> dlactor receiver": (_receiver(_dlactor_receive, as_node=True), bare_sender),
    SMALL_SINK: (_receiver(partial(_bare_receive, sink_bytes=64 * KIB)), bare_sender),
    DEFAULT_MALLOC: (_receiver(_dlactor_receive), dlactor_sender),
}


def _expect(conn: Connection, tag: str, procs: Sequence[BaseProcess]) -> Any:
    """The receiver's next report, which must be ``tag``; fails fast if a process died."""
    deadline = time.monotonic() + CASE_TIMEOUT_S
    while not conn.poll(0.1):
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
            why = f"{dead[0].name} exited with {dead[0].exitcode}" if dead else "timed out"
            raise RuntimeError(f"transport benchmark: waiting for {tag}: {why}")
    got, value = conn.recv()
    if got != tag:
        raise RuntimeError(f"transport benchmark: expected {tag}, receiver said {got}: {value}")
    return value


def run_once(impl: str, case: Case) -> float:
    """Seconds the receiver took for ``case.messages`` messages (after the warm-up)."""
    receiver, sender = IMPLS[impl]
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    procs = [ctx.Process(target=receiver, args=(case, theirs), name=f"{impl}-receiver")]
    procs[0].start()
    try:
        address = _expect(ours, "address", procs)
        procs.append(ctx.Process(target=sender, args=(case, address), name=f"{impl}-sender"))
        procs[1].start()
        t_begin, t_end = _expect(ours, "timing", procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return t_end - t_begin


@dataclass(frozen=True)
class Throughput:
    case: Case
    seconds: dict[str, list[float]]  # by implementation, one per repetition

    def gbps(self, impl: str) -> list[float]:
        moved = self.case.messages * self.case.wire_bytes
        return [moved / s / 1e9 for s in self.seconds[impl]]

    def median_gbps(self, impl: str) -> float:
        return statistics.median(self.gbps(impl))

    @property
    def share(self) -> float:
        return self.median_gbps("dlactor") / self.median_gbps("bare")


@dataclass(frozen=True)
class TransportResult:
    cases: list[Throughput]
    allocation: list[AllocCost]


def run_transport(
    progress: Callable[[str], None], reps: int = 3, scale: float = 1.0
) -> TransportResult:
    cases = [Case(c.tensor_bytes, max(10, int(c.messages * scale)), c.warmup) for c in CASES]
    seconds: dict[Case, dict[str, list[float]]] = {c: {i: [] for i in IMPLS} for c in cases}
    for rep in range(reps):  # interleaved, so that drift hits both implementations alike
        for case in cases:
            for impl in IMPLS:
                took = run_once(impl, case)
                seconds[case][impl].append(took)
                gbps = case.messages * case.wire_bytes / took / 1e9
                progress(f"transport {rep + 1}/{reps}: {_size(case)} {impl}: {gbps:.2f} GB/s")
    allocation = [AllocCost.measure(case.wire_bytes - 4) for case in cases[-2:]]  # bodies
    return TransportResult([Throughput(case, seconds[case]) for case in cases], allocation)


def _size(case: Case) -> str:
    n = case.tensor_bytes
    return f"{n // MIB} MB" if n >= MIB else f"{n // KIB} KB"


def _cell(result: Throughput, impl: str) -> str:
    gbps = result.gbps(impl)
    msgs = result.median_gbps(impl) * 1e9 / result.case.wire_bytes
    return f"{statistics.median(gbps):.2f} ({min(gbps):.2f}-{max(gbps):.2f}); {msgs:,.0f} msg/s"


def _verdict(r: Throughput) -> Verdict:
    return Verdict(
        f"TCP throughput at {_size(r.case)} >= {TARGET_SHARE:.0%} of the bare ceiling",
        f"{r.share:.0%} ({r.median_gbps('dlactor'):.2f} vs {r.median_gbps('bare'):.2f} GB/s)",
        r.share >= TARGET_SHARE,
    )


def main_table(results: list[Throughput]) -> Table:
    headers = ["tensor", "frame bytes", "messages timed", "dlactor GB/s (min-max); msg/s"]
    headers += ["bare ceiling GB/s (min-max); msg/s", "dlactor / bare", "target"]
    table = Table(headers)
    for r in results:
        target = f">= {TARGET_SHARE:.0%}" if r.case.tensor_bytes >= TARGET_FROM else "-"
        size, frame, timed = _size(r.case), f"{r.case.wire_bytes:,}", f"{r.case.messages:,}"
        table.add(
            size, frame, timed, _cell(r, "dlactor"), _cell(r, "bare"), f"{r.share:.0%}", target
        )
    return table


def mixed_table(results: list[Throughput]) -> Table:
    """Median GB/s of every sender/receiver pairing: shows which side limits dlactor."""
    table = Table(["tensor", *(f"{impl} (GB/s)" for impl in IMPLS)])
    for r in results:
        table.add(_size(r.case), *(f"{r.median_gbps(impl):.2f}" for impl in IMPLS))
    return table


@dataclass(frozen=True)
class AllocCost:
    """What receiving one large frame into a fresh `FrameDecoder` body costs: allocating it
    (``numpy.empty``, not zero-filled) and filling it, as the kernel's copy does."""

    nbytes: int
    default_ms: float  # allocate + fill, glibc's default malloc thresholds
    default_faults: float  # minor page faults per frame
    node_ms: float  # allocate + fill, after set_malloc_thresholds (as a node)
    node_faults: float
    copy_ms: float  # filling a buffer that is reused (already mapped)

    @classmethod
    def measure(cls, nbytes: int, reps: int = 30) -> AllocCost:
        """Measured in a forked child: the malloc thresholds are process-wide."""
        ctx = mp.get_context("fork")
        ours, theirs = ctx.Pipe()
        child = ctx.Process(target=_measure_allocation, args=(nbytes, reps, theirs))
        child.start()
        try:
            got: AllocCost = _expect(ours, "allocation", [child])
        finally:
            child.join(timeout=10)
        return got


def _measure_allocation(nbytes: int, reps: int, conn: Connection) -> None:
    try:
        src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
        default = _fresh_body(src, reps)
        _node_malloc()
        node = _fresh_body(src, reps)
        dst = np.empty_like(src)
        copy_ms = statistics.median(_timed(lambda: np.copyto(dst, src), reps))
        conn.send(("allocation", AllocCost(nbytes, *default, *node, copy_ms)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _fresh_body(src: np.ndarray, reps: int) -> tuple[float, float]:
    """Median ms of allocating a body as `FrameDecoder` does and filling it, and the minor
    page faults each took (the body is dropped each time, as a delivered message is)."""

    def receive() -> None:
        body = np.empty(len(src), dtype=np.uint8)
        np.copyto(body, src)

    receive()  # let glibc's thresholds adapt as they would in a running node
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = _timed(receive, reps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps
    return statistics.median(times), faults


def allocation_table(costs: list[AllocCost]) -> Table:
    headers = ["body size", "fresh body + fill, glibc defaults: ms (page faults)"]
    headers += ["fresh body + fill, node malloc thresholds: ms (page faults)"]
    table = Table([*headers, "fill a reused buffer ms"])
    for c in costs:
        table.add(
            f"{c.nbytes // MIB} MB",
            f"{c.default_ms:.2f} ({c.default_faults:,.0f})",
            f"{c.node_ms:.2f} ({c.node_faults:,.0f})",
            f"{c.copy_ms:.2f}",
        )
    return table


def _timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def transport_section(result: TransportResult) -> tuple[Section, list[Verdict]]:
    cases = result.cases
    tables = [main_table(cases), mixed_table(cases), allocation_table(result.allocation)]
    verdicts = [_verdict(r) for r in cases if r.case.tensor_bytes >= TARGET_FROM]
    reps = len(cases[0].seconds["dlactor"])
    section = Section("2. Transport: TcpTransport throughput on 127.0.0.1", _intro(reps), tables)
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    for r in cases:
        if r.case.tensor_bytes >= TARGET_FROM and r.share < TARGET_SHARE:
            section.notes.append(_why_slow(r, result.allocation))
    section.notes += [note for r in cases if (note := _above_ceiling(r))]
    return section, verdicts


def _above_ceiling(r: Throughput) -> str:
    """A note if a pairing that keeps whole frames beat the bare pair by more than 5%."""
    best = max((impl for impl in IMPLS if impl != SMALL_SINK), key=r.median_gbps)
    if r.median_gbps(best) <= 1.05 * r.median_gbps("bare"):
        return ""
    return (
        f"At {_size(r.case)} the bare pair is not the fastest way to receive whole frames: "
        f'"{best}" moved {r.median_gbps(best):.2f} GB/s against its '
        f"{r.median_gbps('bare'):.2f}; the target above still uses the bare pair."
    )


def _why_slow(r: Throughput, costs: list[AllocCost]) -> str:
    """What the tables say about a missed case: which side limits, what allocation costs."""
    into_dlactor = r.median_gbps("bare sender -> dlactor receiver")
    from_dlactor = r.median_gbps("dlactor sender -> bare receiver")
    side = "receiver" if into_dlactor < from_dlactor else "sender"
    text = (
        f"At {_size(r.case)} the dlactor {side} is the side that limits: a bare sender into a "
        f"dlactor receiver moves {into_dlactor:.2f} GB/s, a dlactor sender into a bare "
        f"receiver {from_dlactor:.2f} GB/s."
    )
    cost = next((c for c in costs if c.nbytes == r.case.wire_bytes - 4), None)
    if side == "receiver" and cost is not None:
        text += (
            f" Receiving one {_size(r.case)} frame into a fresh body takes {cost.node_ms:.2f} ms "
            f"and {cost.node_faults:,.0f} page faults with the node's malloc thresholds "
            f"({cost.default_ms:.2f} ms and {cost.default_faults:,.0f} with glibc's defaults), "
            f"against {cost.copy_ms:.2f} ms to fill a buffer that is already mapped."
        )
    default = r.median_gbps(DEFAULT_MALLOC)
    text += (
        f" With glibc's default malloc thresholds in the receiver, dlactor moves "
        f"{default:.2f} GB/s, {default / r.median_gbps('bare'):.0%} of the bare ceiling."
    )
    return text


def _intro(reps: int) -> str:
    return (
        (__doc__ or "").split("\n\n", 1)[1].strip()
        + f"\n\nTwo processes per case (sender and receiver, one core each on this 2-core "
        f"machine). GB/s counts frame bytes (length prefix, header and tensor); each cell is "
        f"the median of {reps} runs, interleaved with the other pairings, with the slowest "
        "and fastest in brackets. The first table is the benchmark; the second pairs each "
        "dlactor side with the bare other side to show which one limits, gives a bare "
        "receiver that only ever holds 64 KiB (an upper bound no receiver that keeps whole "
        "messages can reach), and in its last column a dlactor pair whose receiver keeps "
        "glibc's default malloc thresholds (what `set_malloc_thresholds` buys); the third "
        "times, in a forked process, receiving one frame larger than `FrameDecoder`'s 64 KiB "
        "scratch buffer into the fresh body it allocates for it (`numpy.empty`, not "
        f"zero-filled), with glibc's default thresholds and with the node's "
        f"(M_MMAP_THRESHOLD = {MMAP_THRESHOLD // MIB} MiB)."
    )
