"""The launcher <-> node control channel: the same frames, codec and handshake as peer
traffic, over one small asyncio stream per node. The node opens it (the initiator) and the
launcher answers as process ``LAUNCHER``: each proves who it is before anything else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from dlactor.messages import Hello, Message
from dlactor.security.credentials import Credentials
from dlactor.security.handshake import Initiator, Responder
from dlactor.security.identity import LAUNCHER
from dlactor.transport.base import HandshakeFailed
from dlactor.transport.tcp import HANDSHAKE_TIMEOUT_S, check_peer_certificate
from dlactor.wire.codec import MAX_HEADER, decode, encode
from dlactor.wire.errors import ProtocolError, RemoteProtocolError
from dlactor.wire.framing import HANDSHAKE_MAX_FRAME, PREFIX_LEN, FrameDecoder

__all__ = [
    "BARRIER_WINDOW",
    "FROM_LAUNCHER_MAX_FRAME",
    "ControlStream",
    "accept_node",
    "post_paced",
    "post_to",
]

#: What the launcher sends (the address book, a stop) is a header only.
FROM_LAUNCHER_MAX_FRAME = PREFIX_LEN + MAX_HEADER
#: Streams the address book may be waiting on at once (see ``post_paced``).
BARRIER_WINDOW = 64


class ControlStream:
    """Reads and writes whole messages on a stream; ``receive`` returns None at EOF.

    ``max_frame`` bounds what the other side may announce. Both ends start at
    ``HANDSHAKE_MAX_FRAME`` and raise it (``set_max_frame``) once the handshake is done.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int = HANDSHAKE_MAX_FRAME,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._decoder = FrameDecoder(max_frame=max_frame, scratch_size=1 << 10)

    @property
    def transport(self) -> asyncio.BaseTransport:
        return self._writer.transport

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self._writer

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        timeout: float = HANDSHAKE_TIMEOUT_S,
    ) -> ControlStream:
        """A node's stream to the launcher, the launcher's identity proven (HandshakeFailed
        otherwise)."""
        tls = credentials.tls
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=tls.client if tls is not None else None,
            ssl_handshake_timeout=timeout if tls is not None else None,
        )
        stream = cls(reader, writer)
        creds = credentials
        initiator = Initiator(creds.run_id, creds.identity, creds.ring, LAUNCHER)
        try:
            async with asyncio.timeout(timeout):
                check_peer_certificate(writer.transport, creds, LAUNCHER)
                await stream.send(initiator.hello())
                await stream.send(initiator.on_challenge(await stream.expect()))
        except (ProtocolError, TimeoutError, ConnectionError) as exc:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            raise HandshakeFailed(LAUNCHER, exc) from exc
        stream.set_max_frame(FROM_LAUNCHER_MAX_FRAME)
        return stream

    def set_max_frame(self, max_frame: int, *, scratch: int = 1 << 16) -> None:
        """The limit for every frame not received yet (see ``FrameDecoder.set_max_frame``),
        and the buffer small frames collect in from now on (never shrunk)."""
        self._decoder.set_max_frame(max_frame)
        self._decoder.grow_scratch(scratch)

    async def receive(self) -> Message | None:
        """The next message, or None when the other side closed. ProtocolError on garbage."""
        while (body := self._decoder.next_frame()) is None:
            data = await self._reader.read(1 << 16)
            if not data:
                return None
            self._decoder.receive_data(data)
        return decode(body)

    async def expect(self) -> Message:
        """The next message; ConnectionError if the stream ends first."""
        msg = await self.receive()
        if msg is None:
            raise ConnectionError("the connection closed during the handshake")
        return msg

    async def send(self, msg: Message) -> None:
        self.post(msg)
        await self._writer.drain()

    def post(self, msg: Message) -> None:
        """Queue a message without waiting (for synchronous callbacks)."""
        post_to((self,), msg)

    def close(self) -> None:
        self._writer.close()


def post_to(streams: Iterable[ControlStream], msg: Message) -> None:
    """Queue one message on many streams, encoded once: the start barrier's address book
    goes to every node, and encoding it (O(nodes)) per node made the barrier O(nodes²). A
    frame's tensors go by reference: they must not change until it is written."""
    frame = encode(msg)
    for stream in streams:
        stream.writer.writelines(frame)


async def post_paced(
    streams: Iterable[ControlStream], msg: Message, *, window: int = BARRIER_WINDOW
) -> None:
    """Queue one message on many streams, encoded once, with at most ``window`` of them
    still holding bytes the kernel has not taken: the start barrier's address book, which
    is O(nodes) bytes for each of the nodes. All at once, every stream kept its own copy
    until its node had read it, and under TLS an encrypted one: O(nodes²) of the launcher's
    memory. A stream that breaks is passed over: its node's end is the supervisor's to
    see."""
    frame = encode(msg)
    waiting: set[asyncio.Future[None]] = set()
    try:
        for stream in streams:
            stream.writer.writelines(frame)
            if not stream.writer.transport.get_write_buffer_size():
                continue  # all in the kernel already
            waiting.add(asyncio.ensure_future(_drained(stream.writer)))
            if len(waiting) >= window:
                _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if waiting:
            await asyncio.wait(waiting)
    finally:
        for task in waiting:
            task.cancel()


async def _drained(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


async def accept_node(stream: ControlStream, credentials: Credentials) -> int:
    """The launcher's side of a control connection's handshake: the node's proven id.
    RemoteProtocolError (or ConnectionError) if it does not prove one."""
    creds = credentials
    responder = Responder(creds.run_id, creds.identity, creds.ring)
    hello = await stream.expect()
    if isinstance(hello, Hello):  # TLS: the certificate first, so we sign for no relay
        check_peer_certificate(stream.transport, creds, hello.sender)
    await stream.send(responder.on_hello(hello))
    node = responder.on_proof(await stream.expect())
    if node == LAUNCHER:
        raise RemoteProtocolError("a process claimed to be the launcher")
    return node
