"""The frozen message types: the whole wire vocabulary.

Every frame on every connection carries exactly one of these. Every connection opens
with the handshake (``Hello``, ``Challenge``, ``Proof``: see ``dlactor.security.handshake``).
Then peer-to-peer connections carry ``Share`` frames, and ``Overlay`` frames for
topologies that talk (a peer sampler, gossip peer sampling). The launcher's control
connection carries ``Register``, ``Start``, ``Progress``, ``Done``, ``Failed``, ``Stop``
and ``Lost`` (a run going on without a node). The encoding is in ``dlactor.wire.codec``
and ``docs/wire.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = [
    "PROTOCOL_VERSION",
    "Challenge",
    "Done",
    "Failed",
    "Hello",
    "Lost",
    "Message",
    "MetaValue",
    "Overlay",
    "Payload",
    "Progress",
    "Proof",
    "Register",
    "Share",
    "Start",
    "Stop",
]

PROTOCOL_VERSION = 2

#: Values a strategy may put in a payload's ``meta``: msgpack scalars and flat lists of them.
MetaValue = int | float | str | bytes | bool | None | list[int | float | str | bytes | bool | None]


@dataclass(frozen=True, slots=True)
class Payload:
    """What a sharing strategy sends in one round: named tensors plus scalar metadata."""

    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    meta: Mapping[str, MetaValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every connection: who opens it, whom it is for, and a fresh nonce for
    the other side to sign."""

    run_id: str
    sender: int
    target: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    """The answer to a ``Hello``: the responder's own fresh nonce, and its signature over the
    handshake transcript (which holds both nonces)."""

    sender: int
    nonce: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """The initiator's signature over the transcript: the last frame of the handshake."""

    signature: bytes


@dataclass(frozen=True, slots=True)
class Share:
    """A node's payload for one round, sent to one neighbour.

    ``clock``, only in a run with an emulated network (``[network]``): the times, on the
    run's clock, at which its first and last byte reach the receiver's downlink
    (docs/network.md).
    """

    sender: int
    round: int
    payload: Payload
    clock: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Overlay:
    """A topology service's message between two processes of a run: a node asking the peer
    sampler for its neighbours, a gossip view shuffle, an edge proposal and its answer.

    ``op`` names the operation (the service defines its own); ``nodes`` are node ids and
    ``values`` integers that go with them (degrees, ages), or are empty.
    """

    sender: int
    round: int
    op: str
    nodes: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    clock: tuple[float, float] | None = None  # as Share's


@dataclass(frozen=True, slots=True)
class Register:
    """Node -> launcher: I listen on ``host:port`` and am ready for the start barrier;
    ``agreement`` is my X25519 public key when my sharing masks (secure aggregation)."""

    sender: int
    host: str
    port: int
    agreement: bytes = b""


@dataclass(frozen=True, slots=True)
class Start:
    """Launcher -> node: everyone registered; here is the address book (the start barrier):
    where each process listens, its public key, and the X25519 public keys of the nodes
    that mask (``agreement``)."""

    addresses: Mapping[int, tuple[str, int]]
    t0: float
    keys: Mapping[int, bytes] = field(default_factory=dict)
    agreement: Mapping[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Progress:
    """Node -> launcher: round ``round`` is complete."""

    sender: int
    round: int


@dataclass(frozen=True, slots=True)
class Done:
    """Node -> launcher: all rounds complete, results flushed."""

    sender: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Node -> launcher: the node raised; ``traceback`` is the formatted exception."""

    sender: int
    traceback: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Launcher -> node: stop now (another node failed, or the user pressed Ctrl-C)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Lost:
    """Launcher -> node: learning node ``node`` is gone since round ``round`` (it died; the
    run goes on without it, ``launcher.on_node_failure = "continue"``): stop waiting for it."""

    node: int
    round: int
    reason: str


Message = (
    Hello
    | Challenge
    | Proof
    | Share
    | Overlay
    | Register
    | Start
    | Progress
    | Done
    | Failed
    | Stop
    | Lost
)
