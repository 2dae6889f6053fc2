"""The launcher's supervisor on its own: its control channel and how it judges node exits.
Node processes are stand-ins here; a real run is in test_end_to_end.py."""

from __future__ import annotations

import asyncio
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

from dlactor.launch import control as control_module
from dlactor.launch import supervisor as supervisor_module
from dlactor.launch.control import ControlStream
from dlactor.launch.plan import Plan
from dlactor.launch.supervisor import ForkedNodes, Outcome, Supervisor
from dlactor.messages import (
    Done,
    Failed,
    Hello,
    Lost,
    Message,
    Payload,
    Progress,
    Register,
    Share,
    Start,
)
from dlactor.security.credentials import Credentials
from dlactor.security.identity import LAUNCHER, Identity
from dlactor.sharing.ops import flatten
from dlactor.wire.codec import NONCE_LEN, encode
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME, frame_prefix
from tests.conftest import small_plan

KNOCK_ON_TB = (
    "Traceback (most recent call last):\n  ...\n"
    "dlactor.node.mailbox.RoundTimeout: round 3: no message from node(s) [5] within 20 s\n"
)


class StandIn:
    """What ForkedNodes reads of a forked node process: its pid and exit code."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None

    def kill(self) -> None:
        self.exitcode = -9


def wire(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in encode(msg))


def creds(plan: Plan, process: int) -> Credentials:
    """``process``'s credentials (the launcher's: ``LAUNCHER``), every other key kept."""
    return plan.keys.credentials(process, plan.run_id, keep_others=True)


def supervisor(plan: Plan, run_dir: Path) -> Supervisor:
    procs = [StandIn(1 << 22 | i) for i in range(plan.config.nodes)]  # no such pids
    listener = socket.create_server(("127.0.0.1", 0))
    nodes = ForkedNodes(procs)  # type: ignore[arg-type]
    return Supervisor(
        plan, nodes, listener, run_dir, show_progress=False, credentials=creds(plan, LAUNCHER)
    )


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[tuple[Plan, Supervisor, tuple[str, int]]]:
    """A supervisor's control service on 127.0.0.1, as nodes reach it."""
    plan = small_plan()
    sup = supervisor(plan, tmp_path)
    server = await asyncio.start_server(sup.serve_control, "127.0.0.1", 0)
    yield plan, sup, server.sockets[0].getsockname()[:2]
    for stream in sup.streams.values():
        stream.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.01)  # let the closed streams' transports go
    sup.listener.close()


async def exchange(addr: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``; what comes back before the supervisor closes the connection."""
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def connect(addr: tuple[str, int], plan: Plan, node: int) -> ControlStream:
    """``node``'s control stream, its handshake with the launcher done."""
    return await ControlStream.connect(*addr, creds(plan, node), timeout=5)


async def test_a_control_frame_over_the_hello_limit_before_hello_is_dropped_unallocated(
    control: tuple[Plan, Supervisor, tuple[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sup, addr = control
    tracemalloc.start()
    try:
        assert await exchange(addr, frame_prefix(64 << 20) + b"\x00" * 4096) == b""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert f"exceeds the limit {HANDSHAKE_MAX_FRAME}" in capsys.readouterr().err
    assert peak < 16 << 20
    assert sup.streams == {}


async def test_after_its_handshake_a_node_may_send_frames_bigger_than_a_handshake(
    control: tuple[Plan, Supervisor, tuple[str, int]],
) -> None:
    plan, sup, addr = control
    tb = "x" * (4 * HANDSHAKE_MAX_FRAME) + "\nRuntimeError: boom\n"
    stream = await connect(addr, plan, 0)
    await stream.send(Failed(0, tb))

    async with asyncio.timeout(5):
        await sup._finished.wait()

    assert sup.outcome.status == "failed" and sup.outcome.traceback == tb
    # The launcher's side kept its small buffer for small frames (a node's grows to 64 KiB):
    # one per node, it was most of the launcher's memory at 10,000 nodes.
    assert len(sup.streams[0]._decoder._scratch) == supervisor_module.CONTROL_SCRATCH
    assert len(stream._decoder._scratch) == 1 << 16
    stream.close()


@pytest.mark.parametrize(
    ("case", "hello"),
    [
        ("for another run", lambda plan: Hello("other-run", 0, LAUNCHER, bytes(NONCE_LEN))),
        ("to a node, not the launcher", lambda plan: Hello(plan.run_id, 0, 1, bytes(NONCE_LEN))),
        ("from outside the run", lambda plan: Hello(plan.run_id, 99, LAUNCHER, bytes(NONCE_LEN))),
        ("as the launcher", lambda plan: Hello(plan.run_id, LAUNCHER, LAUNCHER, bytes(NONCE_LEN))),
    ],
)
async def test_a_hello_the_launcher_cannot_accept_is_dropped_unanswered(
    case: str,
    hello: Callable[[Plan], Hello],
    control: tuple[Plan, Supervisor, tuple[str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, sup, addr = control

    assert await exchange(addr, wire(hello(plan))) == b""  # no challenge: nothing at all

    assert "dropped a control connection" in capsys.readouterr().err
    assert sup.streams == {}


async def test_a_node_that_cannot_prove_its_id_or_connects_twice_is_dropped(
    control: tuple[Plan, Supervisor, tuple[str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, sup, addr = control
    # knows the run and every public key, but not node 2's private key
    impostor = Credentials(plan.run_id, Identity.generate(2), creds(plan, 2).ring)
    stream = await ControlStream.connect(*addr, impostor, timeout=5)
    assert await stream.receive() is None  # its proof failed
    stream.close()
    assert "dropped a control connection: process 2 failed to prove" in capsys.readouterr().err

    first = await connect(addr, plan, 2)
    second = await connect(addr, plan, 2)
    assert await second.receive() is None
    assert "process 2 connected a second time" in capsys.readouterr().err
    await first.send(Done(2))  # the first connection still serves
    async with asyncio.timeout(5):
        while 2 not in sup.done:
            await asyncio.sleep(0.01)
    for closing in (first, second):
        closing.close()


@pytest.mark.parametrize(
    ("case", "msg"),
    [
        ("wrong size", Share(0, 1, Payload({"params": torch.zeros(3)}))),
        ("no params", Share(0, 1, Payload({"weights": torch.zeros(1210)}))),
        ("wrong dtype", Share(0, 1, Payload({"params": torch.zeros(1210, dtype=torch.int32)}))),
        ("as another node", Progress(3, 0)),
    ],
)
async def test_a_control_message_that_does_not_fit_drops_that_connection_not_the_launcher(
    case: str,
    msg: Message,
    control: tuple[Plan, Supervisor, tuple[str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, sup, addr = control

    stream = await connect(addr, plan, 0)
    for r in (0, 1):  # a node reports a consensus model for the round it just finished
        await stream.send(Progress(0, r))
    await stream.send(msg)
    async with asyncio.timeout(5):
        assert await stream.receive() is None  # dropped
    stream.close()

    assert "dropped a control connection: node 0" in capsys.readouterr().err
    assert sup.outcome.status == "ok"
    good = Share(1, 1, Payload({"params": flatten(plan.model.parameters())}))
    stream = await connect(addr, plan, 1)
    for r in (0, 1):
        await stream.send(Progress(1, r))
    await stream.send(good)
    await stream.send(Done(1))  # seen only if the share before it was taken
    async with asyncio.timeout(5):
        while 1 not in sup.done:
            await asyncio.sleep(0.01)
    assert "dropped" not in capsys.readouterr().err
    stream.close()


async def test_a_node_that_reported_failed_is_not_blamed_again_for_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "KNOCK_ON_GRACE_S", 0.3)
    monkeypatch.setattr(supervisor_module, "STOP_GRACE_S", 0.1)
    plan = small_plan()
    sup = supervisor(plan, tmp_path)
    running = asyncio.ensure_future(sup.run())
    await asyncio.sleep(0.05)
    addr = sup.listener.getsockname()[:2]

    stream = await connect(addr, plan, 2)
    await stream.send(Failed(2, KNOCK_ON_TB))
    async with asyncio.timeout(5):
        while 2 not in sup.reported:
            await asyncio.sleep(0.01)
    stream.close()  # the node closes its control connection and exits, code 1
    sup.nodes.procs[2].exitcode = 1  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        outcome = await running

    assert outcome.status == "failed"
    assert outcome.reason == "node 2 raised an exception"
    assert outcome.traceback == KNOCK_ON_TB


class Placed:
    """A backend's node processes as NodeProcesses: ended in its own words, or killed."""

    def __init__(self, n: int) -> None:
        self.how: dict[int, str] = {}
        self.killed: list[int] = []
        self.pids: list[int] = []

    def ended(self, node: int) -> str | None:
        return self.how.get(node)

    def kill(self, node: int) -> None:
        if node not in self.how:
            self.killed.append(node)
            self.how[node] = "was killed"

    def local_pids(self) -> list[int]:
        return list(self.pids)

    def template_pids(self) -> list[int]:
        return []


def placed(plan: Plan, run_dir: Path) -> tuple[Placed, Supervisor]:
    """A supervisor over stand-ins of a backend's node processes, on a fresh listener."""
    nodes = Placed(plan.config.nodes)
    listener = socket.create_server(("127.0.0.1", 0))
    sup = Supervisor(
        plan, nodes, listener, run_dir, show_progress=False, credentials=creds(plan, LAUNCHER)
    )
    return nodes, sup


@pytest.fixture
def quick_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor gives its nodes 0.1 s, not seconds, to leave after a stop."""
    monkeypatch.setattr(supervisor_module, "STOP_GRACE_S", 0.1)


async def run_connected(
    plan: Plan, sup: Supervisor
) -> tuple[asyncio.Future[Outcome], dict[int, ControlStream]]:
    """The supervisor's run, and every node's control stream to it, handshakes done."""
    running = asyncio.ensure_future(sup.run())
    await asyncio.sleep(0.05)
    addr = sup.listener.getsockname()[:2]
    return running, {n: await connect(addr, plan, n) for n in range(plan.config.nodes)}


@pytest.mark.usefixtures("quick_stop")
async def test_a_node_process_that_ends_unreported_fails_the_run_in_its_backends_words(
    tmp_path: Path,
) -> None:
    plan = small_plan()
    nodes, sup = placed(plan, tmp_path)
    running = asyncio.ensure_future(sup.run())
    await asyncio.sleep(0.05)

    nodes.how[5] = "lost its Ray worker (ActorDiedError: its worker process has died)"
    async with asyncio.timeout(5):
        outcome = await running
    sup.listener.close()

    assert outcome.status == "failed"
    assert (
        outcome.reason == "node 5 lost its Ray worker (ActorDiedError: its worker process has died)"
    )
    assert sorted(nodes.killed) == [n for n in range(plan.config.nodes) if n != 5]


def test_memory_is_sampled_from_the_pids_a_backend_knows_at_each_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray workers report their pids as they start: each sample asks again."""
    from dlactor.metrics import memory

    pss = {os.getpid(): 10, 42: 5}
    monkeypatch.setattr(memory, "pss_bytes", lambda pid: pss[pid])
    pids: list[int] = []
    sampler = memory.MemorySampler(lambda: pids)

    assert sampler.sample() == 10
    pids.append(42)
    assert sampler.sample() == 15
    assert sampler.peak_pss == 15


class FullDisk:
    def write(self, record: object) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_a_consensus_log_that_cannot_be_written_fails_the_run_saying_so(tmp_path: Path) -> None:
    plan = small_plan("nodes=2", "topology.kind=complete")
    sup = supervisor(plan, tmp_path)
    sup.consensus_log = FullDisk()  # type: ignore[assignment]
    params = Payload({"params": flatten(plan.model.parameters())})
    for node in (0, 1):
        for r in range(5):
            sup._on_progress(node, r)
        sup._on_consensus_report(node, 4, params)
    assert sup.outcome.status == "failed"
    assert "could not record the consensus distance" in sup.outcome.reason
    assert "No space left on device" in sup.outcome.reason
    sup.listener.close()


@pytest.mark.parametrize(
    ("name", "messages"),
    [
        ("a round skipped", [Progress(0, 0), Progress(0, 2)]),
        ("a round twice", [Progress(0, 0), Progress(0, 0)]),
        ("a report for a round not finished", [Progress(0, 0), "report 1"]),
        ("two reports for one round", [Progress(0, 0), "report 0", "report 0"]),
    ],
)
async def test_a_node_cannot_lie_about_its_rounds_or_report_a_model_twice(
    name: str,
    messages: list[object],
    control: tuple[Plan, Supervisor, tuple[str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, sup, addr = control
    model = Payload({"params": flatten(plan.model.parameters())})
    stream = await connect(addr, plan, 0)
    for msg in messages:
        if isinstance(msg, str):
            msg = Share(0, int(msg.split()[1]), model)
        await stream.send(msg)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        assert await stream.receive() is None  # dropped
    stream.close()
    assert "dropped a control connection" in capsys.readouterr().err
    assert sup.consensus.pending <= 1


async def test_the_launcher_sums_at_most_max_consensus_rounds_at_once(
    tmp_path: Path,
) -> None:
    plan = small_plan("nodes=2", "topology.kind=complete", "rounds=100")
    sup = supervisor(plan, tmp_path)
    model = Payload({"params": flatten(plan.model.parameters())})
    for r in range(40):  # node 0 runs far ahead of node 1 (or lies that it does)
        sup._on_progress(0, r)
        sup._on_consensus_report(0, r, model)
    assert sup.consensus.pending == supervisor_module.MAX_CONSENSUS_ROUNDS
    sup.listener.close()


@pytest.mark.usefixtures("quick_stop")
async def test_under_continue_a_node_that_raises_or_dies_is_lost_and_the_others_are_told(
    tmp_path: Path,
) -> None:
    plan = small_plan('launcher.on_node_failure="continue"')
    nodes, sup = placed(plan, tmp_path)
    running, streams = await run_connected(plan, sup)
    assert all(isinstance(s, Start) for s in await register_all(streams))
    for n, stream in streams.items():
        await stream.send(Progress(n, 0))
    raised = "Traceback (most recent call last):\n  ...\nValueError: a bug in node 3\n"
    await streams[3].send(Failed(3, raised))
    nodes.how[5] = "lost its Ray worker (ActorDiedError: its worker process has died)"
    told: dict[int, set[int]] = {}
    for n in (0, 7):  # every survivor hears of both
        for _ in range(2):
            msg = await streams[n].receive()
            assert isinstance(msg, Lost) and msg.round == 1
            told.setdefault(n, set()).add(msg.node)
    assert told == {0: {3, 5}, 7: {3, 5}}
    for n, stream in streams.items():
        if n not in (3, 5):
            await stream.send(Done(n))
    async with asyncio.timeout(5):
        outcome = await running
    for stream in streams.values():
        stream.close()
    sup.listener.close()
    assert outcome.status == "degraded"
    assert [(x["node"], x["round"]) for x in outcome.lost] == [(3, 1), (5, 1)]
    assert outcome.lost[0]["cause"] == "raised ValueError: a bug in node 3"
    assert "ActorDiedError" in outcome.lost[1]["cause"]
    assert 3 in nodes.killed  # a node that raised is made sure of


async def register_all(streams: dict[int, ControlStream]) -> list[Message | None]:
    """Every node registers; what each then hears first (the start barrier's Start)."""
    for n, stream in streams.items():
        await stream.send(Register(n, "127.0.0.1", 40000 + n))
    return [await stream.receive() for stream in streams.values()]


async def finish(
    sup: Supervisor, streams: dict[int, ControlStream], running: asyncio.Future[Outcome]
) -> Outcome:
    """Every node reports Done; the run's outcome, its connections and listener closed."""
    for n, stream in streams.items():
        await stream.send(Done(n))
    async with asyncio.timeout(5):
        outcome = await running
    for stream in streams.values():
        stream.close()
    sup.listener.close()
    return outcome


@pytest.mark.usefixtures("quick_stop")
async def test_the_start_barrier_encodes_the_address_book_once_for_every_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Encoded per node, the address book (O(nodes)) made the barrier O(nodes²) in the launcher.
    encoded: list[str] = []

    def counting_encode(msg: Message, **kwargs: int) -> list[bytes | memoryview]:
        encoded.append(type(msg).__name__)
        return encode(msg, **kwargs)

    monkeypatch.setattr(control_module, "encode", counting_encode)
    plan = small_plan()
    _, sup = placed(plan, tmp_path)
    running, streams = await run_connected(plan, sup)
    starts = await register_all(streams)
    outcome = await finish(sup, streams, running)

    assert outcome.status == "ok"
    assert encoded.count("Start") == 1
    book = {n: ("127.0.0.1", 40000 + n) for n in range(plan.config.nodes)}
    assert all(isinstance(s, Start) and s.addresses == book for s in starts)
    assert all(s == starts[0] for s in starts)


async def test_the_run_is_frozen_out_of_the_collector_from_the_barrier_to_its_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen once the barrier has begun, thawed once every connection is closed and its
    handler has returned (thawed before, the closing drew full collections)."""
    plan = small_plan()
    _, sup = placed(plan, tmp_path)
    calls: list[tuple[str, bool]] = []

    class Collector:
        def freeze(self) -> None:
            calls.append(("freeze", sup.outcome.t_start_barrier > 0))

        def unfreeze(self) -> None:
            closed = all(s.writer.is_closing() for s in sup.streams.values())
            returned = all(task.done() for task in sup._handlers)
            log = sup.consensus_log
            calls.append(("unfreeze", closed and returned and log is not None and log._fd < 0))

    monkeypatch.setattr(supervisor_module, "gc", Collector())
    running, streams = await run_connected(plan, sup)
    await register_all(streams)  # the barrier has sent Start: it returns soon after
    for _ in range(500):  # up to 5 s (a run that finishes first freezes nothing)
        if calls:
            break
        await asyncio.sleep(0.01)
    outcome = await finish(sup, streams, running)

    assert outcome.status == "ok"
    assert calls == [("freeze", True), ("unfreeze", True)]


async def test_a_run_that_ends_before_its_barrier_freezes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    class Collector:
        def freeze(self) -> None:
            calls.append("freeze")

        def unfreeze(self) -> None:
            calls.append("unfreeze")

    monkeypatch.setattr(supervisor_module, "gc", Collector())
    plan = small_plan("launcher.start_timeout_s=0.3")
    _, sup = placed(plan, tmp_path)
    async with asyncio.timeout(10):
        outcome = await sup.run()
    sup.listener.close()

    assert outcome.status == "failed" and "start barrier" in outcome.reason
    assert calls == []


@pytest.mark.usefixtures("quick_stop")
async def test_every_node_of_the_run_is_admitted_however_many_connect_at_once(
    tmp_path: Path,
) -> None:
    # A launcher forks every node before its loop runs: all N control connections wait in
    # its backlog and are accepted at once, more than max_pending_handshakes of them. Their
    # handshakes then took turns, and the newest pushed out the oldest mid-handshake: 1024-node
    # runs failed now and then with a node's Register met by "Connection lost".
    plan = small_plan("security.max_pending_handshakes=2")
    _, sup = placed(plan, tmp_path)
    addr = sup.listener.getsockname()[:2]
    nodes = range(plan.config.nodes)
    connecting = [asyncio.ensure_future(connect(addr, plan, n)) for n in nodes]
    await asyncio.sleep(0.2)  # every connection in the backlog before the launcher accepts
    running = asyncio.ensure_future(sup.run())
    streams = dict(zip(nodes, await asyncio.gather(*connecting), strict=True))
    starts = await register_all(streams)
    # Once every node is in, strangers get max_pending_handshakes slots again.
    idle = [await asyncio.open_connection(*addr) for _ in range(5)]
    async with asyncio.timeout(5):
        while sup._strangers and len(sup._strangers) != 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert len(sup._strangers) == 2
    for _, writer in idle:
        writer.close()
    outcome = await finish(sup, streams, running)
    assert all(isinstance(s, Start) for s in starts)
    assert outcome.status == "ok"


class SlowStream:
    """What ``post_paced`` uses of a control stream: its writer holds what it is given until
    ``released``, as a socket whose node is not reading yet (``broken``: it resets)."""

    outstanding = 0
    most = 0

    def __init__(self, released: asyncio.Event, *, broken: bool = False) -> None:
        self.writer = self.transport = self
        self.released, self.broken = released, broken
        self.frames: list[bytes] = []

    def writelines(self, frame: list[bytes]) -> None:
        self.frames.append(b"".join(bytes(b) for b in frame))

    def get_write_buffer_size(self) -> int:
        return 0 if self.released.is_set() else len(self.frames[-1])

    async def drain(self) -> None:
        SlowStream.outstanding += 1
        SlowStream.most = max(SlowStream.most, SlowStream.outstanding)
        try:
            await self.released.wait()
        finally:
            SlowStream.outstanding -= 1
        if self.broken:
            raise ConnectionResetError("the node went away")


async def test_the_address_book_waits_on_a_few_streams_at_a_time() -> None:
    """At most ``window`` streams hold the book unsent at once, so the launcher never holds
    a copy per node; a stream that breaks is passed over; every stream gets it, once."""
    released = asyncio.Event()
    streams = [SlowStream(released, broken=i % 7 == 0) for i in range(100)]
    start = Start({0: ("127.0.0.1", 1)}, 1.0)
    sending = asyncio.ensure_future(control_module.post_paced(streams, start, window=8))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert sum(bool(s.frames) for s in streams) == 8 and SlowStream.outstanding == 8
    released.set()
    await asyncio.wait_for(sending, 5)
    assert all(s.frames == [wire(start)] for s in streams)
    assert SlowStream.most == 8 and SlowStream.outstanding == 0
