"""The launcher <-> node control channel: the same frames and codec as peer traffic,
over one small asyncio stream per node."""

from __future__ import annotations

import asyncio

from dlactor.messages import Message
from dlactor.wire.codec import decode, encode
from dlactor.wire.framing import DEFAULT_MAX_FRAME, FrameDecoder

__all__ = ["CONTROL_MAX_FRAME", "ControlStream"]

CONTROL_MAX_FRAME = DEFAULT_MAX_FRAME  # consensus reports carry whole models


class ControlStream:
    """Reads and writes whole messages on a stream; ``receive`` returns None at EOF.

    ``max_frame`` bounds what the other side may announce. The launcher accepts only a
    hello-sized frame (``HANDSHAKE_MAX_FRAME``) from a connection until it has checked its
    hello, then calls ``set_max_frame``; a node trusts the launcher it dialled.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int = CONTROL_MAX_FRAME,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._decoder = FrameDecoder(max_frame=max_frame)

    @classmethod
    async def connect(cls, host: str, port: int) -> ControlStream:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def set_max_frame(self, max_frame: int) -> None:
        """The limit for every frame not received yet (see ``FrameDecoder.set_max_frame``)."""
        self._decoder.set_max_frame(max_frame)

    async def receive(self) -> Message | None:
        """The next message, or None when the other side closed. ProtocolError on garbage."""
        while (body := self._decoder.next_frame()) is None:
            data = await self._reader.read(1 << 16)
            if not data:
                return None
            self._decoder.receive_data(data)
        return decode(body)

    async def send(self, msg: Message) -> None:
        self._writer.writelines(encode(msg, max_frame=CONTROL_MAX_FRAME))
        await self._writer.drain()

    def post(self, msg: Message) -> None:
        """Queue a small message without waiting (for synchronous callbacks)."""
        self._writer.writelines(encode(msg, max_frame=CONTROL_MAX_FRAME))

    def close(self) -> None:
        self._writer.close()
