"""The connection handshake, sans I/O: mutual challenge-response over fresh nonces.

Every connection, node to node and node to launcher, opens with three frames::

    initiator -> responder   hello      run id, initiator id, responder id, nonce_i
    responder -> initiator   challenge  responder id, nonce_r, sig_r(transcript "responder")
    initiator -> responder   proof      sig_i(transcript "initiator")

where the transcript is the msgpack array ``["dlactor-handshake", version, role, run id,
initiator id, responder id, nonce_i, nonce_r]`` and each signature is the signer's Ed25519
key over it. Each side checks the other's signature with the public key the key ring holds
for the id it claims; the responder accepts nothing else until the proof is good.

What that gives: a recording replays nothing (each side signs the other's fresh 32-byte
nonce); a signature is bound to the run, both ids and the signer's role, so it cannot be
reflected, relayed to another peer or another run, or used to claim another id; a process
that knows a public key but not its private key cannot answer. It authenticates the
connection's start only: integrity of what follows is TLS's job (``security.tls``).
"""

from __future__ import annotations

import os

import msgpack

from dlactor.messages import PROTOCOL_VERSION, Challenge, Hello, Message, Proof
from dlactor.security.identity import Identity, KeyRing
from dlactor.wire.codec import NONCE_LEN
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["Initiator", "Responder"]

_LABEL = "dlactor-handshake"


def _transcript(
    role: str, run_id: str, initiator: int, responder: int, nonce_i: bytes, nonce_r: bytes
) -> bytes:
    fields = [_LABEL, PROTOCOL_VERSION, role, run_id, initiator, responder, nonce_i, nonce_r]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


class Initiator:
    """The side that opened the connection and wants to talk to ``peer``."""

    def __init__(self, run_id: str, me: Identity, ring: KeyRing, peer: int) -> None:
        self.run_id, self.me, self.ring, self.peer = run_id, me, ring, peer
        self.nonce = os.urandom(NONCE_LEN)

    def hello(self) -> Hello:
        return Hello(self.run_id, self.me.process, self.peer, self.nonce)

    def on_challenge(self, msg: Message) -> Proof:
        """The proof to send, once the responder proved it is ``peer``."""
        if not isinstance(msg, Challenge):
            raise RemoteProtocolError(f"expected a challenge, got {type(msg).__name__}")
        if msg.sender != self.peer:
            raise RemoteProtocolError(f"process {self.peer}'s address answered as {msg.sender}")
        args = (self.run_id, self.me.process, self.peer, self.nonce, msg.nonce)
        if not self.ring.verify(self.peer, msg.signature, _transcript("responder", *args)):
            raise RemoteProtocolError(f"process {self.peer} failed to prove its identity")
        return Proof(self.me.sign(_transcript("initiator", *args)))


class Responder:
    """The side that accepted the connection: ``on_hello``, then ``on_proof``."""

    def __init__(self, run_id: str, me: Identity, ring: KeyRing) -> None:
        self.run_id, self.me, self.ring = run_id, me, ring
        self.nonce = os.urandom(NONCE_LEN)
        self._hello: Hello | None = None

    @property
    def claimed(self) -> int | None:
        """The id the initiator claims (not proven until ``on_proof`` returns)."""
        return None if self._hello is None else self._hello.sender

    def on_hello(self, msg: Message) -> Challenge:
        if not isinstance(msg, Hello):
            raise RemoteProtocolError(f"expected a hello first, got {type(msg).__name__}")
        if msg.run_id != self.run_id:
            raise RemoteProtocolError(f"hello for run {msg.run_id!r}, this is {self.run_id!r}")
        if msg.target != self.me.process:
            raise RemoteProtocolError(f"hello for process {msg.target} reached {self.me.process}")
        if msg.sender not in self.ring or msg.sender == self.me.process:
            raise RemoteProtocolError(f"hello from process {msg.sender}, not a peer of this run")
        self._hello = msg
        args = (self.run_id, msg.sender, self.me.process, msg.nonce, self.nonce)
        return Challenge(self.me.process, self.nonce, self.me.sign(_transcript("responder", *args)))

    def on_proof(self, msg: Message) -> int:
        """The initiator's id, now proven."""
        hello = self._hello
        if hello is None:
            raise RemoteProtocolError("proof before hello")
        if not isinstance(msg, Proof):
            raise RemoteProtocolError(f"expected a proof, got {type(msg).__name__}")
        args = (self.run_id, hello.sender, self.me.process, hello.nonce, self.nonce)
        if not self.ring.verify(hello.sender, msg.signature, _transcript("initiator", *args)):
            raise RemoteProtocolError(f"process {hello.sender} failed to prove its identity")
        return hello.sender
