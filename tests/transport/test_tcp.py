"""The TCP transport on 127.0.0.1: delivery, accounting, and what it does with bad peers."""

import asyncio
import contextlib
import gc
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dlactor.messages import Challenge, Hello, Message, Payload, Proof, Share
from dlactor.security.credentials import Credentials
from dlactor.security.handshake import Initiator, Responder
from dlactor.security.identity import Identity
from dlactor.testing import credentials, open_as
from dlactor.transport import tcp as tcp_module
from dlactor.transport.base import (
    HandshakeFailed,
    PeerUnreachable,
    SendTimeout,
    TransportClosed,
)
from dlactor.transport.tcp import TcpTransport, read_handshake_frame
from dlactor.wire.codec import NONCE_LEN, SIGNATURE_LEN, encode
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME, frame_prefix

RUN = "run-1"
#: Processes 0..7 of the run (and the launcher's, last): every key is kept in this process.
CREDS = credentials(8, run_id=RUN)
NONCE = bytes(NONCE_LEN)


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
    return TcpTransport(credentials=CREDS[node], deliver=inbox, **kw)  # type: ignore[arg-type]


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
    """Connect, write ``chunks``, return what comes back before the server closes.

    A server that drops us with some of our bytes unread closes with a reset (the kernel's
    answer to unread data), one that had read them all with a FIN: either ends what we got.
    """
    reader, writer = await asyncio.open_connection(*addr)
    data = bytearray()
    try:
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        async with asyncio.timeout(5):
            while block := await reader.read(1 << 16):
                data += block
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return bytes(data)


def wire(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in encode(msg))


def size(msg: Message) -> int:
    return len(wire(msg))


#: Wire sizes of the handshake between two single-digit processes (nonces and signatures
#: have fixed lengths, so these are every handshake's).
HELLO = size(Hello(RUN, 0, 1, NONCE))
CHALLENGE = size(Challenge(1, NONCE, bytes(SIGNATURE_LEN)))
PROOF = size(Proof(bytes(SIGNATURE_LEN)))


async def answer_handshake(
    creds: Credentials, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> int:
    """Answer a connection's handshake as ``creds``' process; the initiator's proven id."""
    responder = Responder(creds.run_id, creds.identity, creds.ring)
    writer.write(wire(responder.on_hello(await read_handshake_frame(reader))))
    return responder.on_proof(await read_handshake_frame(reader))


class StalledPeer:
    """Answers the handshake as ``creds``' process (the one the sender dialled), then never
    reads again: the socket buffers fill and sends block."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await answer_handshake(self.creds, reader, writer)

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
    frame = size(share(0, 0))
    # the connection's handshake is counted too: hello and proof one way, challenge the other
    assert sender.stats.bytes_sent == 3 * frame + HELLO + PROOF
    assert receiver.stats.bytes_recv == sender.stats.bytes_sent
    assert sender.stats.bytes_recv == receiver.stats.bytes_sent == CHALLENGE
    assert sender.stats.msgs_sent == 5 and receiver.stats.msgs_recv == 5
    assert sender.stats.msgs_recv == receiver.stats.msgs_sent == 1
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
        _, writer = await open_as(addr, CREDS[5], 1)
        writer.write(frame[:1000])
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: receiver.open_connections == 0)

    assert "node 5 closed its connection 1000 bytes into a frame" in caplog.text
    assert inbox.messages == []
    await receiver.stop()


async def test_stop_aborts_a_closed_connection_still_flushing_to_a_peer_that_stopped_reading() -> (
    None
):
    peer = StalledPeer(CREDS[1])
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
        ("share before hello", [wire(share(5, 0, n=4))]),
        ("proof before hello", [wire(Proof(bytes(SIGNATURE_LEN)))]),
        ("wrong run", [wire(Hello("other-run", 5, 1, NONCE))]),
        ("hello to another process", [wire(Hello(RUN, 5, 2, NONCE))]),
        ("hello from a process outside the run", [wire(Hello(RUN, 99, 1, NONCE))]),
        ("hello from the receiver's own id", [wire(Hello(RUN, 1, 1, NONCE))]),
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


async def test_a_peer_that_claims_an_id_whose_key_it_lacks_fails_its_proof_and_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It knows the run and every public key, but not process 5's private key: it gets a
    challenge, its proof fails, and the share it sends after it is never delivered."""
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    ring = CREDS[0].ring
    impostor = Credentials(RUN, Identity(5, Ed25519PrivateKey.generate()), ring)
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        reader, writer = await open_as(receiver.address, impostor, 1)
        writer.write(wire(share(5, 0)))
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
    assert receiver.stats.dropped_connections == 1
    assert "process 5 failed to prove its identity" in caplog.text
    assert inbox.messages == []
    await sender.send(1, share(0, 0))  # the node still works for honest peers
    await inbox.wait_for(1)
    await sender.stop()
    await receiver.stop()


async def test_a_peer_that_lies_about_its_id_after_its_handshake_is_dropped() -> None:
    sender, receiver, inbox = await pair()
    assert receiver.address is not None
    reader, writer = await open_as(receiver.address, CREDS[5], 1)
    writer.write(wire(share(6, 0)))
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
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


async def test_after_the_proof_a_big_frame_in_the_same_write_is_accepted() -> None:
    inbox = Inbox()
    receiver = transport(1, inbox)
    addr = await receiver.start()
    big = share(5, 0, n=50_000)  # 200 kB, far over the handshake limit
    reader, writer = await asyncio.open_connection(*addr)
    initiator = Initiator(RUN, CREDS[5].identity, CREDS[5].ring, 1)
    writer.write(wire(initiator.hello()))
    proof = initiator.on_challenge(await read_handshake_frame(reader))
    writer.write(wire(proof) + wire(big))  # one write, likely one read
    await writer.drain()

    await inbox.wait_for(1)

    assert torch.equal(inbox.messages[0][0].payload.tensors["params"], torch.arange(50_000.0))  # type: ignore[union-attr]
    writer.close()
    await receiver.stop()


async def test_stop_returns_promptly_and_closes_every_socket_when_a_peer_stopped_reading() -> None:
    peer = StalledPeer(CREDS[1])
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
    peer = StalledPeer(CREDS[1])
    stalled = await peer.start()
    inbox = Inbox()
    receiver = transport(2, inbox)
    sender = transport(0, Inbox(), close_timeout=0.2)
    sender.set_peers({1: stalled, 2: await receiver.start()})

    # 32 MB never fit in the stalled peer's socket buffers, however long we wait; the timeout
    # leaves the peer that reads time to take them on a loaded machine
    with pytest.raises(SendTimeout, match=r"node\(s\) \[1\] did not take the message within 3 s"):
        await sender.send_all([1, 2], share(0, 0, n=8 << 20), timeout=3.0)

    await inbox.wait_for(1, timeout=20)  # the peer that reads got it
    await sender.stop()
    await receiver.stop()
    await peer.stop()


async def test_a_connection_whose_handshake_completes_after_stop_is_closed_not_kept() -> None:
    """Stopped while the peer has not answered our hello yet: when its challenge comes, the
    connection is aborted and the send raises TransportClosed, as for a connect that
    completes after stop."""
    got_hello, answer = asyncio.Event(), asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        creds = CREDS[1]
        responder = Responder(creds.run_id, creds.identity, creds.ring)
        challenge = responder.on_hello(await read_handshake_frame(reader))
        got_hello.set()
        await answer.wait()
        writer.write(wire(challenge))
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = transport(0, Inbox())
    sender.set_peers({1: ("127.0.0.1", port)})
    sending = asyncio.ensure_future(sender.send(1, share(0, 0)))
    async with asyncio.timeout(5):
        await got_hello.wait()

    await sender.stop()
    answer.set()

    try:
        with pytest.raises(TransportClosed):
            await sending
        assert sender.open_connections == 0
        await wait_until(lambda: sockets_to(port) == [])
    finally:
        await sender.stop()  # whatever the send left open
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_stranger_that_does_not_finish_its_handshake_in_time_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = transport(1, inbox, handshake_timeout=0.3)
    addr = await receiver.start()
    initiator = Initiator(RUN, CREDS[5].identity, CREDS[5].ring, 1)
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        silent = asyncio.ensure_future(raw_client(addr))  # says nothing at all
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(wire(initiator.hello()))  # says hello, never proves anything
        await read_handshake_frame(reader)
        async with asyncio.timeout(5):
            assert await silent == b""
            assert await reader.read() == b""
        writer.close()
    assert receiver.stats.dropped_connections == 2
    assert caplog.text.count("did not finish its handshake within 0.3 s") == 2
    assert "a peer claiming to be 5" in caplog.text
    await wait_until(lambda: receiver.open_connections == 0)
    sender = transport(0, Inbox())
    sender.set_peers({1: addr})
    await sender.send(1, share(0, 0))  # honest peers are still served
    await inbox.wait_for(1)
    await sender.stop()
    await receiver.stop()


async def test_strangers_over_max_pending_push_out_the_oldest_and_a_peer_still_gets_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = transport(1, inbox, max_pending=3)
    addr = await receiver.start()
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        idle = [await asyncio.open_connection(*addr) for _ in range(5)]
        await wait_until(lambda: receiver.open_connections == 3)
        flood = [await asyncio.open_connection(*addr) for _ in range(20)]
        await wait_until(lambda: receiver.stats.dropped_connections == 22)
    assert len(caplog.records) == 10, "a flood of strangers does not flood the log"
    assert receiver.open_connections == 3  # the newest three of the flood
    flooded = receiver.stats.dropped_connections
    for reader, _ in idle:  # all five were pushed out by the flood
        async with asyncio.timeout(5):
            assert await reader.read() == b""

    sender = transport(0, Inbox())
    sender.set_peers({1: addr})
    await sender.send(1, share(0, 0))  # pushes out one more idle stranger, not itself
    await inbox.wait_for(1)
    assert receiver.stats.dropped_connections == flooded + 1
    assert len(receiver._pending) == 2  # the honest peer is no longer a stranger
    for _, writer in idle + flood:
        writer.close()
    await sender.stop()
    await receiver.stop()


async def test_a_peer_that_never_answers_our_hello_fails_the_send_in_handshake_timeout() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = transport(0, Inbox(), handshake_timeout=0.3)
    sender.set_peers({1: ("127.0.0.1", port)})
    t0 = time.monotonic()
    with pytest.raises(PeerUnreachable, match="handshake with node 1 failed") as failed:
        await sender.send(1, share(0, 0))
    assert time.monotonic() - t0 < 2
    assert isinstance(failed.value.__cause__, HandshakeFailed)
    assert isinstance(failed.value.__cause__.__cause__, TimeoutError)
    assert sender.open_connections == 0
    await wait_until(lambda: sockets_to(port) == [])
    await sender.stop()
    for writer in writers:
        writer.transport.abort()
    server.close()
    await server.wait_closed()


async def test_a_frame_begun_by_a_peer_must_complete_within_frame_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = transport(1, inbox, frame_timeout=0.3)
    addr = await receiver.start()
    frame = wire(share(5, 0))
    reader, writer = await open_as(addr, CREDS[5], 1)
    writer.write(frame)  # a whole frame: delivered, and no deadline after it
    await inbox.wait_for(1)
    await asyncio.sleep(0.5)
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        writer.write(frame[:100])  # the start of another, and nothing more
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    writer.close()
    assert "dropped connection from node 5: sent less than a frame within 0.3 s" in caplog.text
    assert receiver.stats.dropped_connections == 1
    assert len(inbox.messages) == 1
    await receiver.stop()


# A fresh interpreter (the test session has threads of its own): two transports under uvloop,
# one sending to the other: the process's thread count before and after.
THREADS_AFTER_START = """
import os, sys, uvloop
from dlactor.messages import Progress
from dlactor.testing import credentials
from dlactor.transport.tcp import TcpTransport

def threads():
    return len(os.listdir(f"/proc/{os.getpid()}/task"))

async def main():
    before = threads()
    creds = credentials(2)
    a = TcpTransport(credentials=creds[0], deliver=lambda *_: None, host=sys.argv[1])
    b = TcpTransport(credentials=creds[1], deliver=lambda *_: None, host=sys.argv[1])
    a.set_peers({1: await b.start()})
    b.set_peers({0: await a.start()})
    await a.send(1, Progress(0, 0))
    print(before, threads())
    await a.stop()
    await b.stop()

uvloop.run(main())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="threads read from /proc")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_transport_on_an_ip_address_starts_no_resolver_threads(host: str) -> None:
    """uvloop resolves a host given as a string, even an IP address, in libuv's thread pool:
    4 threads that stay for the process's life (about 0.8 MiB of a node's private memory)."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    out = subprocess.run(
        [sys.executable, "-c", THREADS_AFTER_START, host], capture_output=True, text=True
    )
    if "Cannot assign requested address" in out.stderr:
        pytest.skip(f"{host} is not configured here")
    assert out.returncode == 0, out.stderr
    before, after = (int(n) for n in out.stdout.split())
    assert after == before


async def test_a_connect_that_times_out_is_tried_again_like_a_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At round 0 of a 1024-node run on 2 cores a node can be off the CPU for longer than the
    # handshake timeout while its connect completes; the run failed with PeerUnreachable.
    sender, receiver, inbox = await pair()
    sender.handshake_timeout = 0.2
    real = asyncio.open_connection
    calls = 0

    async def first_one_hangs(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            sender.handshake_timeout = 5  # for the second attempt (this one's timer runs)
            await asyncio.sleep(10)
        return await real(*args, **kwargs)

    monkeypatch.setattr(tcp_module.asyncio, "open_connection", first_one_hangs)
    await sender.send(1, share(0, 0))
    await inbox.wait_for(1)
    assert calls == 2
    await sender.stop()
    await receiver.stop()
