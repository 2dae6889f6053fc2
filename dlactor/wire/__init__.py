"""Sans-I/O wire layer: length-prefixed framing and the msgpack tensor codec.

Nothing here touches a socket or an event loop: feed bytes to a ``FrameDecoder``, ``decode``
the frame bodies it returns, and write the buffers ``encode`` returns. See docs/wire.md.
"""

from dlactor.wire.codec import decode, encode, encoded_size
from dlactor.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from dlactor.wire.framing import DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, FrameDecoder, frame_prefix

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "HANDSHAKE_MAX_FRAME",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "decode",
    "encode",
    "encoded_size",
    "frame_prefix",
]
