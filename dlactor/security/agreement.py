"""Pairwise mask secrets for secure aggregation: an X25519 key pair per process, and the
masks two processes derive from the secret they agree on.

Each process that masks (a learning node whose sharing is ``secure``) makes its own X25519
key pair when it is built, in its own process: the private key never leaves that object,
is never written anywhere and is never sent. Its public key travels in the node's
``Register`` to the launcher and, with every other node's, in the address book of the start
barrier (``Start``), over the control channel both ends have authenticated
(docs/security.md), so a node knows whose public key it agrees with.

Two nodes j and k agree on ``s_jk = HKDF-SHA256(X25519(j, k), info = run id, min, max)``:
the same on both ends, different for every pair and every run (each run makes fresh key
pairs, and the run id is in the derivation). The mask of the pair for a message to receiver
``i`` in round ``r`` is the AES-256-CTR keystream under ``s_jk`` from the counter block
(r, i, 0): a different stream per pair, receiver and round. AES-CTR rather than ChaCha20:
on cores with AES instructions OpenSSL makes it several times faster, and a round generates
d x (d - 1) model-sized streams. Every primitive is the ``cryptography`` package's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["AGREEMENT_KEY_LEN", "PairwiseKeys", "scratch_size"]

#: Bytes of an X25519 public key.
AGREEMENT_KEY_LEN = 32
_INFO = b"dlactor secure aggregation v1"
_MAX_ROUND = (1 << 64) - 1
_MAX_RECEIVER = (1 << 32) - 1
#: Most words in one stream: its 32-bit block counter's range (16 bytes, 4 words a block).
MAX_WORDS = 4 << 32
_BLOCK = 16


def scratch_size(words: int) -> int:
    """Bytes of a buffer ``PairwiseKeys.mask`` can write ``words`` words into (OpenSSL's
    ``update_into`` asks for a block's room beyond the data)."""
    return 4 * words + _BLOCK


class PairwiseKeys:
    """One process's X25519 key pair and the pairwise secrets it has agreed on.

    ``learn`` takes the run's public keys (the address book's); ``mask`` is the keystream
    this process and ``peer`` share for a message to ``receiver`` in ``round``.
    """

    __slots__ = ("_key", "_publics", "_secrets", "_zeros", "process", "public", "run_id")

    def __init__(self, process: int, run_id: str) -> None:
        self.process, self.run_id = process, run_id
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._publics: dict[int, bytes] = {}
        self._secrets: dict[int, bytes] = {}
        self._zeros = b""  # the plaintext a keystream is the encryption of

    def learn(self, publics: Mapping[int, bytes]) -> None:
        """The run's public keys by process (the start barrier's address book)."""
        for process, key in publics.items():
            if len(key) != AGREEMENT_KEY_LEN:
                raise ValueError(f"process {process}'s agreement key is not 32 bytes")
            if process == self.process and key != self.public:
                raise ValueError(f"the address book has another agreement key for {process}")
        self._publics.update(publics)

    def secret(self, peer: int) -> bytes:
        """The 32-byte secret this process and ``peer`` agree on (computed once, then kept)."""
        secret = self._secrets.get(peer)
        if secret is not None:
            return secret
        if peer == self.process:
            raise ValueError("a process agrees no secret with itself")
        public = self._publics.get(peer)
        if public is None:
            raise LookupError(f"process {self.process} has no agreement key for process {peer}")
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(public))
        low, high = sorted((self.process, peer))
        info = b"%s|%s|%d|%d" % (_INFO, self.run_id.encode(), low, high)
        secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
        self._secrets[peer] = secret
        return secret

    def mask(
        self,
        peer: int,
        receiver: int,
        round: int,
        words: int,
        scratch: bytearray | None = None,
    ) -> np.ndarray:
        """``words`` uint32 words of the keystream shared with ``peer`` for a message to
        ``receiver`` in ``round`` (AES-256-CTR from the counter block (round, receiver, 0)).

        Written into ``scratch`` when given (at least ``scratch_size(words)`` bytes, reused
        across calls: the array returned is a view of it), else into a new buffer."""
        if not 0 <= round <= _MAX_ROUND or not 0 <= receiver <= _MAX_RECEIVER:
            raise ValueError(f"round {round} or receiver {receiver} out of range")
        if not 0 <= words <= MAX_WORDS:
            raise ValueError(f"{words} words is more than one stream holds")
        nbytes = 4 * words
        if len(self._zeros) < nbytes:
            self._zeros = bytes(nbytes)
        if scratch is None:
            scratch = bytearray(scratch_size(words))
        block = round.to_bytes(8, "big") + receiver.to_bytes(4, "big") + bytes(4)
        cipher = Cipher(algorithms.AES(self.secret(peer)), modes.CTR(block)).encryptor()
        cipher.update_into(memoryview(self._zeros)[:nbytes], scratch)
        return np.frombuffer(scratch, dtype=np.uint32, count=words)

    def __repr__(self) -> str:
        return f"PairwiseKeys(process={self.process}, public={self.public.hex()[:16]}...)"
