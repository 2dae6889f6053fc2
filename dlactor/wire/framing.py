"""Length-prefixed framing, sans I/O: bytes in, frame bodies out.

A frame is a 4-byte big-endian body length followed by that many bytes (see docs/wire.md).
``FrameDecoder`` owns its receive buffers so that an ``asyncio.BufferedProtocol`` can receive
straight into them: small frames collect in a scratch buffer and are copied out; a large frame
gets its own buffer as soon as its length is known, and the rest of its bytes are received
directly into it, so a 32 MB frame is never copied after the kernel wrote it. That buffer is
allocated without being zero-filled (``numpy.empty``): every byte of it is about to be
overwritten by the kernel, and writing it once more first cost half a memcpy per frame.

Parsing is pull-based: a frame's length is judged only when ``next_frame`` asks for that
frame (``receive_data`` may split frames off early to make room, but never judges a length
over the limit). So a receiver can accept nothing but a small handshake first and raise the
limit once it has checked it (``set_max_frame``), even if the next frame arrived in the same
read: an unauthenticated peer can never make us allocate more than ``HANDSHAKE_MAX_FRAME``.
"""

from __future__ import annotations

from collections import deque
from typing import NoReturn

import numpy as np

from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_MAX_FRAME",
    "HANDSHAKE_SCRATCH",
    "MAX_FRAME_LIMIT",
    "PREFIX_LEN",
    "FrameDecoder",
    "frame_prefix",
]

#: Default largest accepted frame body, in bytes (a run sets its own, from its model and
#: sharing strategy: ``Plan.max_frame``).
DEFAULT_MAX_FRAME: int = 1 << 30
#: Largest frame body accepted before a connection's handshake has finished: a hello is at
#: most 342 bytes (a 64-character run id, two ids, a 32-byte nonce), a challenge or a proof
#: about 120, so 512 is ample.
HANDSHAKE_MAX_FRAME: int = 512
#: The receive buffer of a connection until its handshake has finished: a stranger holds no
#: more than this (and the decoder's bookkeeping) of a node's memory.
HANDSHAKE_SCRATCH: int = 1 << 10
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
    or with ``receive_data`` (copies); then drain complete frames with ``next_frame`` until it
    returns None, before receiving more. ``next_frame`` judges each frame's 4-byte length when
    it gets to that frame: 0 or more than ``max_frame`` raises ``RemoteProtocolError``, after
    which the decoder is dead and every further call except ``bytes_received`` raises
    ``RemoteProtocolError`` too. A body is allocated only for a length within the limit.
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME, scratch_size: int = 1 << 16) -> None:
        if scratch_size < _MIN_SCRATCH:
            raise ValueError(f"scratch_size must be >= {_MIN_SCRATCH}, got {scratch_size}")
        self._max_frame = _checked_max_frame(max_frame)
        # Unparsed bytes live in _scratch[_start:_end]: small frames received but not yet
        # pulled, then at most one incomplete prefix or small frame.
        self._scratch = bytearray(scratch_size)
        self._scratch_view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        # A large frame being received in place: _body[:_filled] holds its bytes so far.
        self._body: memoryview | None = None
        self._filled = 0
        self._offered = 0  # length of the buffer last handed out by get_buffer
        self._queued: deque[memoryview] = deque()  # receive_data's bytes not yet in a buffer
        self._ready: deque[memoryview] = deque()  # frames receive_data split off to make room
        self._bytes_received = 0
        self._error: RemoteProtocolError | None = None

    @property
    def bytes_received(self) -> int:
        """Total bytes fed so far (``buffer_updated`` and ``receive_data``), prefixes included."""
        return self._bytes_received

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed that ``next_frame`` has not returned yet, prefixes included. Once the
        complete frames are drained, they are the start of a frame still incomplete: a
        stream that ends with any cut that frame short."""
        held = self._end - self._start + sum(len(view) for view in self._queued)
        if self._body is not None:
            held += self._filled
        return held + sum(PREFIX_LEN + len(body) for body in self._ready)

    @property
    def max_frame(self) -> int:
        """The limit applied to the next frame length read."""
        return self._max_frame

    def set_max_frame(self, max_frame: int) -> None:
        """Change the limit for every frame whose length has not been judged yet.

        A connection starts with ``HANDSHAKE_MAX_FRAME`` and raises it here once the peer's
        hello has been accepted: a frame received with the hello but over the old limit is
        judged by the new one when ``next_frame`` gets to it.
        """
        self._max_frame = _checked_max_frame(max_frame)

    def grow_scratch(self, scratch_size: int) -> None:
        """Receive small frames into a buffer of ``scratch_size`` bytes from now on (a
        connection starts small, and grows once its handshake is done). The bytes not parsed
        yet move along; it never shrinks, and it waits while a large frame is being received
        in place (that frame is not in the scratch buffer)."""
        self._check_alive()
        if scratch_size <= len(self._scratch) or self._body is not None:
            return
        held = self._end - self._start
        scratch = bytearray(scratch_size)
        scratch[:held] = self._scratch_view[self._start : self._end]
        self._scratch, self._scratch_view = scratch, memoryview(scratch)
        self._start, self._end = 0, held

    def get_buffer(self) -> memoryview:
        """A writable buffer (at least 1 byte) where the next received bytes should go."""
        self._check_alive()
        if self._queued:
            raise LocalProtocolError("get_buffer() while receive_data() bytes are still queued")
        view = self._free_space()
        if not view:
            raise LocalProtocolError("no room to receive: drain next_frame() first")
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last ``get_buffer()``."""
        self._check_alive()
        if not 0 <= nbytes <= self._offered:
            raise LocalProtocolError(f"buffer_updated({nbytes}) but {self._offered} were offered")
        self._offered = 0
        self._bytes_received += nbytes
        self._stored(nbytes)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed arbitrary bytes; they are copied into the decoder's buffers.

        To make room, frames whose length is within the current limit are split off as it
        goes (one copy, even for a large frame). At a length over the limit it stops and
        queues the rest (copied unless ``data`` is ``bytes``) for ``next_frame`` to judge,
        after the caller has perhaps raised the limit.
        """
        self._check_alive()
        view = memoryview(data).cast("B")
        self._bytes_received += len(view)
        while view and not self._queued:
            space = self._free_space()
            if not space:
                if not self._make_room():
                    break
                continue
            n = min(len(space), len(view))
            space[:n] = view[:n]
            self._stored(n)
            view = view[n:]
        if view:
            self._queued.append(view if isinstance(data, bytes) else memoryview(bytes(view)))

    def next_frame(self) -> memoryview | None:
        """The next complete frame body (FIFO), or None.

        Each body is a fresh, writable, one-dimensional byte ``memoryview`` (format ``"B"``)
        over a buffer that nothing else references: a ``bytearray`` copied out of the scratch
        buffer for a small frame, the ``numpy`` array it was received into for a large one.
        """
        self._check_alive()
        if self._ready:
            return self._ready.popleft()
        while (body := self._take_frame()) is None and self._queued:
            self._move_queued()
        return body

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"frame decoder failed earlier: {self._error}")

    def _free_space(self) -> memoryview:
        """Where the next bytes go: the unfilled tail of a large body, else of the scratch."""
        if self._body is not None:
            return self._body[self._filled :]
        self._compact()
        return self._scratch_view[self._end :]

    def _stored(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of ``_free_space()``."""
        if self._body is not None:
            self._filled += nbytes
        else:
            self._end += nbytes

    def _make_room(self) -> bool:
        """The buffers are full: split off the next frame (or start its body) if its length is
        within the limit. False, changing nothing, at a length this must not judge yet."""
        if self._body is not None:  # full means complete
            self._ready.append(self._body)
            self._body = None
            return True
        prefix = self._scratch_view[self._start : self._start + PREFIX_LEN]
        if not 0 < int.from_bytes(prefix, "big") <= self._max_frame:
            return False
        frame = self._take_frame()
        if frame is not None:
            self._ready.append(frame)
        return True

    def _move_queued(self) -> None:
        """Copy queued ``receive_data`` bytes into the free space (there is some whenever the
        last ``_take_frame`` found no complete frame)."""
        space = self._free_space()
        head = self._queued[0]
        n = min(len(space), len(head))
        space[:n] = head[:n]
        self._stored(n)
        if n == len(head):
            self._queued.popleft()
        else:
            self._queued[0] = head[n:]

    def _compact(self) -> None:
        """Move the unparsed bytes to the front of the scratch buffer."""
        if self._start == 0:
            return
        held = self._end - self._start
        if held:
            self._scratch_view[:held] = self._scratch_view[self._start : self._end]
        self._start, self._end = 0, held

    def _take_frame(self) -> memoryview | None:
        """The next frame if it is complete; reads (and checks) its length first. A large
        frame's body is allocated here, once its length has passed the check."""
        if self._body is not None:
            return self._take_large_body()
        if self._end - self._start < PREFIX_LEN:
            return None
        view = self._scratch_view
        body_len = int.from_bytes(view[self._start : self._start + PREFIX_LEN], "big")
        self._check_length(body_len)
        body_start = self._start + PREFIX_LEN
        if PREFIX_LEN + body_len > len(self._scratch):
            self._start_large_body(body_len, body_start)
            return None
        if self._end - body_start < body_len:
            return None
        self._start = body_start + body_len
        return memoryview(bytearray(view[body_start : self._start]))

    def _take_large_body(self) -> memoryview | None:
        body = self._body
        if body is None or self._filled < len(body):
            return None
        self._body = None
        return body

    def _start_large_body(self, body_len: int, body_start: int) -> None:
        # The frame does not fit in scratch, so it cannot be complete there: have < body_len.
        have = self._end - body_start
        body = _uninitialized(body_len)
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
        self._queued.clear()
        self._ready.clear()
        raise self._error


def _uninitialized(nbytes: int) -> memoryview:
    """A writable byte buffer of ``nbytes`` whose memory is not written (not zero-filled):
    its pages are first touched by whatever fills it, the kernel's copy from the socket.
    (numpy also asks for transparent huge pages for big arrays where the kernel allows it,
    so filling a 32 MB body takes a few dozen page faults instead of 8,192.)"""
    return np.empty(nbytes, dtype=np.uint8).data


def _checked_max_frame(max_frame: int) -> int:
    if not 0 < max_frame <= MAX_FRAME_LIMIT:
        raise ValueError(f"max_frame must be in 1..{MAX_FRAME_LIMIT}, got {max_frame}")
    return max_frame
