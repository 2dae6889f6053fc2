"""Protocol errors that say whose fault they are.

``LocalProtocolError``: we were asked to put something on the wire that the protocol cannot
carry (an unsupported dtype, an oversize frame, a meta value of the wrong type...). It is a bug
on this side; the connection is fine.

``RemoteProtocolError``: the bytes we received are not a valid frame or message. It is the
peer's fault; the transport drops that connection (never the node).
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every wire-protocol error."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""
