"""Peer identity on real TCP (127.0.0.1): replays, stolen public keys, one node posing as
another, forged control messages, and TLS."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dlactor.launch.control import ControlStream
from dlactor.launch.supervisor import ForkedNodes, Supervisor
from dlactor.messages import Done, Failed, Message, Payload, Share
from dlactor.security.credentials import Credentials
from dlactor.security.identity import LAUNCHER, Identity
from dlactor.testing import credentials, open_as
from dlactor.transport.base import PeerUnreachable
from dlactor.transport.tcp import TcpTransport
from dlactor.wire.codec import encode
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan

CREDS = credentials(4)
TLS_CREDS = credentials(4, tls=True)


def wire(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in encode(msg))


def share(sender: int, round: int = 0) -> Share:
    return Share(sender, round, Payload({"params": torch.arange(8, dtype=torch.float32)}))


class Inbox(list[Message]):
    def __call__(self, msg: Message, nbytes: int) -> None:
        self.append(msg)


async def node(creds: Credentials, inbox: Inbox | None = None, **kw: float) -> TcpTransport:
    transport = TcpTransport(credentials=creds, deliver=Inbox() if inbox is None else inbox, **kw)  # type: ignore[arg-type]
    await transport.start()
    return transport


async def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def posing_as(process: int, key: Ed25519PrivateKey, creds: Credentials = CREDS[0]) -> Credentials:
    return Credentials(creds.run_id, Identity(process, key), creds.ring, creds.tls)


class Recorder:
    """A TCP relay that records every byte a client sends through it (as a sniffer would)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.sent = target, bytearray()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
            try:
                while data := await src.read(1 << 16):
                    if log:
                        self.sent += data
                    dst.write(data)
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.server.close()
        await self.server.wait_closed()


async def test_a_recorded_handshake_replayed_byte_for_byte_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = await node(CREDS[1], inbox)
    assert receiver.address is not None
    relay = Recorder(receiver.address)
    sender = await node(CREDS[0])
    sender.set_peers({1: await relay.start()})
    await sender.send(1, share(0, 0))
    await wait_until(lambda: len(inbox) == 1)
    recording = bytes(relay.sent)  # hello, proof, then the share

    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        reader, writer = await asyncio.open_connection(*receiver.address)
        writer.write(recording)
        async with asyncio.timeout(5):
            await reader.read()  # the receiver drops the replay
        writer.close()

    assert len(inbox) == 1
    assert receiver.stats.dropped_connections == 1
    assert "process 0 failed to prove its identity" in caplog.text
    for closing in (sender, receiver):
        await closing.stop()
    await relay.stop()


async def test_a_process_that_knows_a_public_key_but_not_its_private_key_cannot_pose_as_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    receiver = await node(CREDS[1], inbox)
    assert receiver.address is not None
    impostor = posing_as(0, Ed25519PrivateKey.generate())  # the ring has 0's public key
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        reader, writer = await open_as(receiver.address, impostor, 1)
        writer.write(wire(share(0)))
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
    assert inbox == []
    assert "process 0 failed to prove its identity" in caplog.text
    await receiver.stop()


async def test_node_j_cannot_pose_as_node_i_neither_by_its_key_nor_inside_its_connection() -> None:
    inbox = Inbox()
    receiver = await node(CREDS[1], inbox)
    assert receiver.address is not None
    j_key = CREDS[3].identity.private_key
    reader, writer = await open_as(receiver.address, posing_as(0, j_key), 1)
    writer.write(wire(share(0)))
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()

    reader, writer = await open_as(receiver.address, CREDS[3], 1)  # honestly node 3...
    writer.write(wire(share(0)))  # ...then a share as node 0
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()

    assert inbox == []
    assert receiver.stats.dropped_connections == 2
    await receiver.stop()


async def test_a_sender_refuses_an_impostor_listening_at_its_peers_address() -> None:
    impostor = await node(posing_as(1, Ed25519PrivateKey.generate()))
    assert impostor.address is not None
    sender = await node(CREDS[0])
    sender.set_peers({1: impostor.address})
    with pytest.raises(PeerUnreachable, match="process 1 failed to prove its identity"):
        await sender.send(1, share(0))
    assert sender.open_connections == 0
    await sender.stop()
    await impostor.stop()


@pytest.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, tuple[str, int]]]:
    """A supervisor's control service on 127.0.0.1, with the run's real credentials."""
    plan = small_plan("nodes=4")
    listener = socket.create_server(("127.0.0.1", 0))
    creds = plan.keys.credentials(LAUNCHER, plan.run_id, keep_others=True)
    sup = Supervisor(
        plan, ForkedNodes([]), listener, tmp_path, show_progress=False, credentials=creds
    )
    server = await asyncio.start_server(sup.serve_control, "127.0.0.1", 0)
    yield sup, server.sockets[0].getsockname()[:2]
    for stream in sup.streams.values():
        stream.close()
    server.close()
    await server.wait_closed()
    listener.close()


async def test_a_forged_done_or_failed_on_the_control_channel_is_refused(
    launcher: tuple[Supervisor, tuple[str, int]],
) -> None:
    sup, addr = launcher
    plan = sup.plan
    real = plan.keys.credentials(1, plan.run_id, keep_others=True)
    for forged in (Done(0), Failed(0, "innocent node 0 blamed")):
        stranger = posing_as(0, Ed25519PrivateKey.generate(), real)
        stream = await ControlStream.connect(*addr, stranger, timeout=2)
        await stream.send(forged)
        assert await stream.receive() is None  # dropped: its proof failed
        stream.close()

    stream = await ControlStream.connect(*addr, real)  # node 1, honestly...
    await stream.send(Done(0))  # ...says node 0 is done
    assert await stream.receive() is None  # dropped
    stream.close()
    await asyncio.sleep(0.01)
    assert sup.done == set() and sup.outcome.status == "ok" and not sup.reported


async def test_a_node_refuses_a_launcher_that_cannot_prove_it_is_the_launcher(
    tmp_path: Path,
) -> None:
    plan = small_plan("nodes=4")
    listener = socket.create_server(("127.0.0.1", 0))
    real = plan.keys.credentials(0, plan.run_id, keep_others=True)
    fake_launcher = posing_as(LAUNCHER, Ed25519PrivateKey.generate(), real)  # knows the ring
    fake = Supervisor(
        plan, ForkedNodes([]), listener, tmp_path, show_progress=False, credentials=fake_launcher
    )
    server = await asyncio.start_server(fake.serve_control, "127.0.0.1", 0)
    with pytest.raises(ConnectionError, match="the launcher failed: process 4294967295 failed"):
        await ControlStream.connect(*server.sockets[0].getsockname()[:2], real)
    server.close()
    await server.wait_closed()
    listener.close()


async def test_over_tls_messages_arrive_and_a_certificate_of_another_node_is_refused() -> None:
    inbox = Inbox()
    receiver = await node(TLS_CREDS[1], inbox)
    sender = await node(TLS_CREDS[0])
    assert receiver.address is not None
    sender.set_peers({1: receiver.address})
    await sender.send(1, share(0))
    await wait_until(lambda: len(inbox) == 1)

    # node 3 has a valid certificate of the run's CA, but it is node 3's, not node 0's
    node_3_as_0 = posing_as(0, TLS_CREDS[3].identity.private_key, TLS_CREDS[3])
    with pytest.raises(RemoteProtocolError, match="closed during the handshake"):
        await open_as(receiver.address, node_3_as_0, 1)  # dropped at its hello
    await wait_until(lambda: receiver.stats.dropped_connections == 1)
    assert len(inbox) == 1
    await sender.stop()
    await receiver.stop()


async def test_a_plain_tcp_client_gets_nothing_from_a_tls_node() -> None:
    inbox = Inbox()
    receiver = await node(TLS_CREDS[1], inbox, handshake_timeout=1.0)
    assert receiver.address is not None
    with pytest.raises(RemoteProtocolError, match="closed during the handshake"):
        await open_as(receiver.address, CREDS[0], 1)
    assert inbox == []
    await receiver.stop()
