"""Length-prefixed framing, sans I/O: bytes in, frame bodies out.

A frame is a 4-byte big-endian body length followed by that many bytes (see docs/wire.md).
``FrameDecoder`` owns its receive buffers so that an ``asyncio.BufferedProtocol`` can receive
straight into them: small frames collect in a scratch buffer and are copied out; a large frame
gets its own ``bytearray`` as soon as its length is known, and the rest of its bytes are
received directly into it, so a 32 MB frame is never copied after the kernel wrote it.
"""

from __future__ import annotations

from collections import deque
from typing import NoReturn

from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "MAX_FRAME_LIMIT", "PREFIX_LEN", "FrameDecoder", "frame_prefix"]

#: Default largest accepted frame body, in bytes.
DEFAULT_MAX_FRAME: int = 1 << 30
#: The length prefix is a u32: no body can be longer than this.
MAX_FRAME_LIMIT: int = (1 << 32) - 1
#: Bytes in the length prefix.
PREFIX_LEN: int = 4
_MIN_SCRATCH = 16


def frame_prefix(body_len: int) -> bytes:
    """The 4-byte big-endian length prefix of a frame whose body is ``body_len`` bytes."""
    if not 0 < body_len <= MAX_FRAME_LIMIT:
        raise LocalProtocolError(f"frame body length {body_len} is not in 1..{MAX_FRAME_LIMIT}")
    return body_len.to_bytes(PREFIX_LEN, "big")


class FrameDecoder:
    """Bytes in, frame bodies out. Owns its receive buffers.

    Use it either like an ``asyncio.BufferedProtocol`` (``get_buffer`` then ``buffer_updated``)
    or with ``receive_data`` (copies); then drain complete frames with ``next_frame``.
    A frame's 4-byte length is checked as soon as it is complete: 0 or more than ``max_frame``
    raises ``RemoteProtocolError``, after which the decoder is dead and every further call
    except ``bytes_received`` raises ``RemoteProtocolError`` too.
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME, scratch_size: int = 1 << 16) -> None:
        if not 0 < max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME_LIMIT}, got {max_frame}")
        if scratch_size < _MIN_SCRATCH:
            raise ValueError(f"scratch_size must be >= {_MIN_SCRATCH}, got {scratch_size}")
        self._max_frame = max_frame
        # Unparsed bytes live in _scratch[_start:_end]: at most one incomplete prefix or one
        # incomplete frame small enough (prefix included) to fit in the scratch buffer.
        self._scratch = bytearray(scratch_size)
        self._scratch_view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        # A large frame being received in place: _body[:_filled] holds its bytes so far.
        self._body: bytearray | None = None
        self._filled = 0
        self._offered = 0  # length of the buffer last handed out by get_buffer
        self._frames: deque[bytearray] = deque()
        self._bytes_received = 0
        self._error: RemoteProtocolError | None = None

    @property
    def bytes_received(self) -> int:
        """Total bytes consumed so far, length prefixes included."""
        return self._bytes_received

    def get_buffer(self) -> memoryview:
        """A writable buffer (at least 1 byte) where the next received bytes should go."""
        self._check_alive()
        if self._body is not None:
            view = memoryview(self._body)[self._filled :]
        else:
            self._compact()
            view = self._scratch_view[self._end :]
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last ``get_buffer()``."""
        self._check_alive()
        if not 0 <= nbytes <= self._offered:
            raise LocalProtocolError(f"buffer_updated({nbytes}) but {self._offered} were offered")
        self._offered = 0
        self._bytes_received += nbytes
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                self._frames.append(self._body)
                self._body = None
        else:
            self._end += nbytes
            self._parse_scratch()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed arbitrary bytes (copied into the decoder's buffers)."""
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            buf = self.get_buffer()
            n = min(len(buf), len(view) - pos)
            buf[:n] = view[pos : pos + n]
            self.buffer_updated(n)
            pos += n

    def next_frame(self) -> bytearray | None:
        """The next complete frame body (FIFO), or None. Each is a fresh, unshared bytearray."""
        self._check_alive()
        return self._frames.popleft() if self._frames else None

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"frame decoder failed earlier: {self._error}")

    def _compact(self) -> None:
        """Move the unparsed bytes to the front of the scratch buffer."""
        if self._start == 0:
            return
        held = self._end - self._start
        if held:
            self._scratch_view[:held] = self._scratch_view[self._start : self._end]
        self._start, self._end = 0, held

    def _parse_scratch(self) -> None:
        """Split complete frames off the scratch buffer; start a large frame if one begins."""
        view = self._scratch_view
        while self._end - self._start >= PREFIX_LEN:
            body_len = int.from_bytes(view[self._start : self._start + PREFIX_LEN], "big")
            self._check_length(body_len)
            body_start = self._start + PREFIX_LEN
            if PREFIX_LEN + body_len > len(self._scratch):
                self._start_large_body(body_len, body_start)
                return
            if self._end - body_start < body_len:
                return
            self._frames.append(bytearray(view[body_start : body_start + body_len]))
            self._start = body_start + body_len

    def _start_large_body(self, body_len: int, body_start: int) -> None:
        # The frame does not fit in scratch, so it cannot be complete there: have < body_len.
        have = self._end - body_start
        body = bytearray(body_len)
        body[:have] = self._scratch_view[body_start : self._end]
        self._body, self._filled = body, have
        self._start = self._end = 0

    def _check_length(self, body_len: int) -> None:
        if body_len == 0:
            self._fail("frame with body length 0")
        if body_len > self._max_frame:
            self._fail(f"frame body length {body_len} exceeds the limit {self._max_frame}")

    def _fail(self, reason: str) -> NoReturn:
        self._error = RemoteProtocolError(reason)
        self._body = None
        self._frames.clear()
        raise self._error
