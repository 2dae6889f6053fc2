"""The TCP transport on 127.0.0.1: delivery, accounting, and what it does with bad peers."""

import asyncio
import gc
import logging
import time
import tracemalloc
import weakref
from collections.abc import Callable

import psutil
import pytest
import torch

from dlactor.messages import Hello, Message, Payload, Share
from dlactor.transport.base import SendTimeout, TransportClosed
from dlactor.transport.tcp import TcpTransport
from dlactor.wire.codec import encode
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME, frame_prefix

RUN, SECRET = "run-1", "s3cret"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Message, int]] = []
        self.arrived = asyncio.Event()

    def __call__(self, msg: Message, nbytes: int) -> None:
        self.messages.append((msg, nbytes))
        self.arrived.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.arrived.clear()
                await self.arrived.wait()


def transport(node: int, inbox: Inbox, **kw: object) -> TcpTransport:
    return TcpTransport(node=node, run_id=RUN, secret=SECRET, deliver=inbox, **kw)  # type: ignore[arg-type]


def share(sender: int, round: int, n: int = 1000) -> Share:
    return Share(sender, round, Payload({"params": torch.arange(n, dtype=torch.float32)}))


async def pair() -> tuple[TcpTransport, TcpTransport, Inbox]:
    inbox = Inbox()
    receiver = transport(1, inbox)
    sender = transport(0, Inbox())
    addr = await receiver.start()
    await sender.start()
    sender.set_peers({1: addr})
    return sender, receiver, inbox


async def raw_client(addr: tuple[str, int], *chunks: bytes) -> bytes:
    """Connect, write ``chunks``, return what comes back before the server closes."""
    reader, writer = await asyncio.open_connection(*addr)
    for chunk in chunks:
        writer.write(chunk)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()  # b"" once the server drops us
    writer.close()
    return data


def wire(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in encode(msg))


class StalledPeer:
    """Accepts connections and never reads them: the socket buffers fill and sends block."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def sockets_to(port: int) -> list[object]:
    """This process's TCP sockets whose remote end is ``port``."""
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr[1] == port]


def sockets_on(port: int) -> list[object]:
    """This process's connected TCP sockets with either end at ``port`` (not the listener)."""
    return [
        c
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and port in (c.laddr[1], c.raddr[1])
    ]


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_messages_arrive_in_order_with_their_wire_size() -> None:
    sender, receiver, inbox = await pair()
    for r in range(3):
        await sender.send(1, share(0, r))
    await inbox.wait_for(3)
    assert [m.round for m, _ in inbox.messages] == [0, 1, 2]  # type: ignore[union-attr]
    assert torch.equal(inbox.messages[0][0].payload.tensors["params"], torch.arange(1000.0))  # type: ignore[union-attr]
    frame = sum(len(b) for b in encode(share(0, 0)))
    hello = sum(len(b) for b in encode(Hello(RUN, SECRET, 0)))
    assert sender.stats.bytes_sent == 3 * frame + hello
    assert receiver.stats.bytes_recv == sender.stats.bytes_sent
    assert sender.stats.msgs_sent == 4 and receiver.stats.msgs_recv == 4
    await sender.stop()
    await receiver.stop()


async def test_one_connection_per_peer_is_opened_lazily_and_reused() -> None:
    sender, receiver, inbox = await pair()
    assert sender.open_connections == 0
    for r in range(5):
        await sender.send_all([1], share(0, r))
    await inbox.wait_for(5)
    assert sender.open_connections == 1
    assert receiver.open_connections == 1
    sender.close_peer(1)
    await wait_until(lambda: sender.open_connections == receiver.open_connections == 0)
    await sender.send(1, share(0, 5))  # a new connection
    await inbox.wait_for(6)
    assert sender.open_connections == receiver.open_connections == 1
    await sender.stop()
    await receiver.stop()


async def test_a_message_written_before_close_peer_reaches_a_peer_that_reads_it_late() -> None:
    """close_peer right after a send must not cut off what the peer has not read yet, even
    when the peer reads it long after close_timeout: the close is graceful, never aborted."""
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    sender = transport(0, Inbox(), close_timeout=0.2)
    sender.set_peers({1: addr})
    await sender.send(1, share(0, 0, n=16))
    await inbox.wait_for(1)
    (conn,) = receiver._inbound
    conn._transport.pause_reading()  # type: ignore[union-attr]
    # Let the send return with most of its 32 MB still in our buffer (a drain returns with
    # up to the high-water mark unflushed; this makes that part large).
    sender._out[1].transport.set_write_buffer_limits(high=64 << 20)
    big = share(0, 1, n=8 << 20)

    await sender.send(1, big)
    sender.close_peer(1)
    await asyncio.sleep(0.5)  # more than close_timeout
    conn._transport.resume_reading()  # type: ignore[union-attr]

    await inbox.wait_for(2, timeout=20)
    assert torch.equal(
        inbox.messages[1][0].payload.tensors["params"], big.payload.tensors["params"]
    )  # type: ignore[union-attr]
    await wait_until(lambda: sender.open_connections == receiver.open_connections == 0)
    assert receiver.stats.dropped_connections == 0
    await sender.stop()
    await receiver.stop()


async def test_a_connection_its_peer_closed_is_forgotten_socket_and_protocol() -> None:
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    port = receiver.address[1]
    await sender.send(1, share(0, 0))
    await inbox.wait_for(1)
    (conn,) = receiver._inbound
    protocol = weakref.ref(conn)
    del conn

    sender.close_peer(1)

    await wait_until(lambda: receiver.open_connections == 0 and sender.open_connections == 0)
    await wait_until(lambda: sockets_on(port) == [])
    gc.collect()
    assert protocol() is None
    await sender.stop()
    await receiver.stop()


async def test_a_peer_that_closes_in_the_middle_of_a_frame_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    frame = wire(share(5, 0))

    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        _, writer = await asyncio.open_connection(*addr)
        writer.write(wire(Hello(RUN, SECRET, 5)) + frame[:1000])
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: receiver.open_connections == 0)

    assert "node 5 closed its connection 1000 bytes into a frame" in caplog.text
    assert inbox.messages == []
    await receiver.stop()


async def test_stop_aborts_a_closed_connection_still_flushing_to_a_peer_that_stopped_reading() -> (
    None
):
    peer = StalledPeer()
    port = (await peer.start())[1]
    sender = transport(0, Inbox(), close_timeout=0.2)
    sender.set_peers({1: ("127.0.0.1", port)})
    await sender.send(1, share(0, 0, n=16))
    sender._out[1].transport.set_write_buffer_limits(high=64 << 20)
    await sender.send(1, share(0, 1, n=8 << 20))  # returns with most of it unflushed
    sender.close_peer(1)
    await asyncio.sleep(0.1)
    assert sender.open_connections == 1, "still flushing to a peer that does not read"

    t0 = time.monotonic()
    async with asyncio.timeout(5):
        await sender.stop()

    assert time.monotonic() - t0 < 2
    assert sender.open_connections == 0
    assert sockets_to(port) == []
    await peer.stop()


async def test_a_32_mb_message_arrives_intact() -> None:
    sender, receiver, inbox = await pair()
    big = share(0, 0, n=8 << 20)
    await sender.send(1, big)
    await inbox.wait_for(1, timeout=20)
    assert torch.equal(
        inbox.messages[0][0].payload.tensors["params"], big.payload.tensors["params"]
    )  # type: ignore[union-attr]
    await sender.stop()
    await receiver.stop()


async def test_send_waits_for_a_slow_reader_instead_of_buffering_without_bound() -> None:
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    sender = transport(0, Inbox())
    sender.set_peers({1: addr})
    await sender.send(1, share(0, 0, n=16))  # connects and handshakes
    await inbox.wait_for(1)
    (conn,) = receiver._inbound
    conn._transport.pause_reading()  # type: ignore[union-attr]
    sending = asyncio.ensure_future(sender.send(1, share(0, 1, n=16 << 20)))  # 64 MB
    await asyncio.sleep(0.5)
    assert not sending.done(), "drain() returned while the peer read nothing"
    conn._transport.resume_reading()  # type: ignore[union-attr]
    async with asyncio.timeout(20):
        await sending
    await inbox.wait_for(2, timeout=20)
    await sender.stop()
    await receiver.stop()


@pytest.mark.parametrize(
    ("name", "chunks"),
    [
        ("garbage", [b"\x00\x00\x00\x08GARBAGE!"]),
        ("oversize length", [b"\xff\xff\xff\xff"]),
        ("share before hello", [b"".join(bytes(b) for b in encode(share(5, 0)))]),
        ("wrong secret", [b"".join(bytes(b) for b in encode(Hello(RUN, "guess", 5)))]),
        ("wrong run", [b"".join(bytes(b) for b in encode(Hello("other-run", SECRET, 5)))]),
        ("empty frame", [b"\x00\x00\x00\x00"]),
        ("64 MiB frame before hello", [frame_prefix(64 << 20) + b"\x00" * 1000]),
        ("hello-sized limit before hello", [frame_prefix(HANDSHAKE_MAX_FRAME + 1) + b"\x00" * 8]),
    ],
)
async def test_a_bad_peer_is_dropped_and_logged_while_the_node_carries_on(
    name: str, chunks: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    addr = receiver.address
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        assert await raw_client(addr, *chunks) == b""
    assert receiver.stats.dropped_connections == 1
    assert "dropped connection" in caplog.text
    assert inbox.messages == []
    await sender.send(1, share(0, 0))  # the node still works for honest peers
    await inbox.wait_for(1)
    await sender.stop()
    await receiver.stop()


async def test_a_peer_that_lies_about_its_id_after_hello_is_dropped() -> None:
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    addr = receiver.address
    hello = b"".join(bytes(b) for b in encode(Hello(RUN, SECRET, 5)))
    forged = b"".join(bytes(b) for b in encode(share(6, 0)))
    assert await raw_client(addr, hello, forged) == b""
    assert receiver.stats.dropped_connections == 1
    assert inbox.messages == []
    await sender.stop()
    await receiver.stop()


async def test_a_frame_length_over_the_handshake_limit_before_hello_is_refused_unallocated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
            dropped = await raw_client(receiver.address, frame_prefix(64 << 20) + b"\x00" * 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dropped == b""
    assert f"exceeds the limit {HANDSHAKE_MAX_FRAME}" in caplog.text
    assert peak < 16 << 20, "the receiver allocated the body a stranger announced"
    await sender.send(1, share(0, 0))  # honest peers are still served
    await inbox.wait_for(1)
    await sender.stop()
    await receiver.stop()


async def test_after_the_hello_a_big_frame_in_the_same_write_is_accepted() -> None:
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    big = share(5, 0, n=50_000)  # 200 kB, far over the handshake limit
    _, writer = await asyncio.open_connection(*addr)
    writer.write(wire(Hello(RUN, SECRET, 5)) + wire(big))  # one write, likely one read
    await writer.drain()

    await inbox.wait_for(1)

    assert torch.equal(inbox.messages[0][0].payload.tensors["params"], torch.arange(50_000.0))  # type: ignore[union-attr]
    writer.close()
    await receiver.stop()


async def test_stop_returns_promptly_and_closes_every_socket_when_a_peer_stopped_reading() -> None:
    peer = StalledPeer()
    port = (await peer.start())[1]
    sender = transport(0, Inbox(), close_timeout=0.2)
    sender.set_peers({1: ("127.0.0.1", port)})
    sending = asyncio.ensure_future(sender.send(1, share(0, 0, n=8 << 20)))  # 32 MB
    await asyncio.sleep(0.3)
    assert not sending.done(), "the peer's buffers should be full by now"

    t0 = time.monotonic()
    async with asyncio.timeout(5):
        await sender.stop()

    assert time.monotonic() - t0 < 2
    with pytest.raises(TransportClosed):
        await sending
    assert sockets_to(port) == []
    await peer.stop()


async def test_a_connection_completed_after_stop_is_closed_not_kept() -> None:
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    sender = transport(0, Inbox())
    sender.set_peers({1: addr})
    sending = asyncio.ensure_future(sender.send(1, share(0, 0)))
    await asyncio.sleep(0)  # the send is now connecting

    await sender.stop()

    with pytest.raises(TransportClosed):
        await sending
    assert sender.open_connections == 0
    assert sockets_to(addr[1]) == []
    await receiver.stop()


async def test_send_all_with_a_timeout_names_the_peers_that_did_not_take_the_message() -> None:
    peer = StalledPeer()
    stalled = await peer.start()
    inbox = Inbox()
    receiver = transport(2, inbox)
    sender = transport(0, Inbox(), close_timeout=0.2)
    sender.set_peers({1: stalled, 2: await receiver.start()})

    with pytest.raises(SendTimeout, match=r"node\(s\) \[1\] did not take the message within 0.5 s"):
        await sender.send_all([1, 2], share(0, 0, n=8 << 20), timeout=0.5)

    await inbox.wait_for(1, timeout=20)  # the peer that reads got it
    await sender.stop()
    await receiver.stop()
    await peer.stop()
