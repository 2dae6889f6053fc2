"""Per-process identities: an Ed25519 key pair for every process of a run, and the public keys
of all of them (the key ring), with which each proves who it is on every connection.

The launcher is a process of the run too, with the id :data:`LAUNCHER`. Who holds which
private key:

- Local backend: the launcher makes every node's key pair before it forks
  (``dlactor.security.credentials.RunKeys``). A forked node keeps its own key and drops every
  other one it inherited, the launcher's and the CA's included, before it reads a byte from
  the network; the launcher drops each node's key once that node is forked. A key object
  dropped is freed by OpenSSL, which clears its memory.
- Ray: every node's actor makes its own key pair (:meth:`Identity.generate`) and gives the
  launcher its public key through Ray; its private key never leaves that process.

Only public keys travel: in the plan, and in the address book the launcher sends at the
start barrier over the authenticated control channel. Nothing here writes a key to disk.
The primitives are the ``cryptography`` package's; nothing here is written by hand but the
choice of what is signed (see :mod:`dlactor.security.handshake`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dlactor.wire.codec import KEY_LEN, SIGNATURE_LEN

__all__ = ["LAUNCHER", "Identity", "KeyRing", "public_bytes"]

#: The launcher's process id in handshakes (node ids are below 2**32 - 1).
LAUNCHER = (1 << 32) - 1


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


class Identity:
    """One process's private key: it signs, nothing reads it out."""

    __slots__ = ("_key", "process", "public")

    def __init__(self, process: int, key: Ed25519PrivateKey) -> None:
        self.process = process
        self._key = key
        self.public = public_bytes(key)

    @classmethod
    def generate(cls, process: int) -> Identity:
        return cls(process, Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """For the TLS certificate of this process only (``dlactor.security.tls``)."""
        return self._key

    def __repr__(self) -> str:
        return f"Identity(process={self.process}, public={self.public.hex()[:16]}...)"


class KeyRing(Mapping[int, bytes]):
    """Every process's public key, by process id (the launcher's under :data:`LAUNCHER`)."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        for process, key in keys.items():
            if len(key) != KEY_LEN:
                raise ValueError(f"public key of process {process} is not {KEY_LEN} bytes")
        self._raw = dict(keys)
        self._parsed: dict[int, Ed25519PublicKey] = {}

    def __getitem__(self, process: int) -> bytes:
        return self._raw[process]

    def __iter__(self) -> Iterator[int]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def verify(self, process: int, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is ``process``'s over ``data``; False for a process this
        ring does not know."""
        if process not in self._raw or len(signature) != SIGNATURE_LEN:
            return False
        key = self._parsed.get(process)
        if key is None:
            key = self._parsed[process] = Ed25519PublicKey.from_public_bytes(self._raw[process])
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def with_keys(self, more: Mapping[int, bytes]) -> KeyRing:
        return KeyRing({**self._raw, **more})

    def __getstate__(self) -> dict[int, bytes]:  # travels to Ray workers: public keys only
        return self._raw

    def __setstate__(self, state: dict[int, bytes]) -> None:
        self.__init__(state)  # type: ignore[misc]
