"""A run's keys as the launcher holds them, and one process's credentials.

``RunKeys`` holds private keys (in the launcher, and in a forked node until it ``take``s its
own) and the public key ring, plus the run's TLS CA and certificates when TLS is on.
``Credentials`` is what one process's transports get: its identity, the ring it checks
peers against, and its TLS contexts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dlactor.security.identity import LAUNCHER, Identity, KeyRing, public_bytes
from dlactor.security.tls import RunCA, TlsContexts

__all__ = ["Credentials", "RunKeys"]


@dataclass
class Credentials:
    """One process's: who it is, whom it trusts (``ring``, completed from the address book
    at the start barrier with ``learn``), and its TLS contexts when TLS is on."""

    run_id: str
    identity: Identity
    ring: KeyRing
    tls: TlsContexts | None = None

    def learn(self, keys: Mapping[int, bytes]) -> None:
        self.ring = self.ring.with_keys(keys)


class RunKeys:
    """The run's key pairs as the launcher holds them, the public key ring, and with TLS the
    run's CA and every process's certificate.

    ``credentials`` in a forked node process keeps that node's private key and drops every
    other (the launcher's, the CA's); ``forget`` in the launcher drops a node's once it is
    forked. Pickling (Ray) carries the public half only, and refuses while private keys are
    in it (``public_only`` first).
    """

    def __init__(
        self,
        private: dict[int, Ed25519PrivateKey],
        ring: KeyRing,
        *,
        ca: RunCA | None = None,
        ca_pem: bytes | None = None,
        certificates: dict[int, bytes] | None = None,
    ) -> None:
        self._private = private
        self.ring = ring
        self._ca = ca
        self.ca_pem = ca.pem if ca is not None else ca_pem
        self.certificates = dict(certificates or {})

    @classmethod
    def make(cls, processes: Iterable[int] = ()) -> RunKeys:
        """Key pairs for the launcher and every process in ``processes`` (none: the nodes
        make their own and ``add_public`` them, as Ray's do)."""
        private = {p: Ed25519PrivateKey.generate() for p in [LAUNCHER, *processes]}
        return cls(private, KeyRing({p: public_bytes(k) for p, k in private.items()}))

    @property
    def tls(self) -> bool:
        return self.ca_pem is not None

    def add_public(self, keys: Mapping[int, bytes]) -> None:
        self.ring = self.ring.with_keys(keys)

    def enable_tls(self, run_id: str) -> None:
        """Make the run's CA (once) and a certificate for every process of the ring."""
        if self._ca is None:
            self._ca = RunCA(run_id)
            self.ca_pem = self._ca.pem
        for process, key in self.ring.items():
            if process not in self.certificates:
                self.certificates[process] = self._ca.issue(process, key)

    def credentials(self, process: int, run_id: str, *, keep_others: bool = False) -> Credentials:
        """``process``'s credentials. Unless ``keep_others`` (the launcher, tests), every
        other private key here is dropped: what a forked node does first."""
        key = self._private.get(process)
        if key is None:
            raise LookupError(f"no private key for process {process} here")
        if not keep_others:
            self._private, self._ca = {process: key}, None
        return self.credentials_for(Identity(process, key), run_id)

    def credentials_for(self, identity: Identity, run_id: str) -> Credentials:
        """Credentials around an identity the process made itself (a Ray node's): its public
        key must be the ring's for its id."""
        if self.ring.get(identity.process) != identity.public:
            raise LookupError(f"the key ring has another key for process {identity.process}")
        tls = None
        if self.ca_pem is not None:
            certificate = self.certificates[identity.process]
            tls = TlsContexts.make(identity, certificate, self.ca_pem)
        return Credentials(run_id, identity, self.ring, tls)

    def forget(self, process: int) -> None:
        self._private.pop(process, None)

    def public_only(self) -> RunKeys:
        return RunKeys({}, self.ring, ca_pem=self.ca_pem, certificates=self.certificates)

    def __getstate__(self) -> object:
        if self._private or self._ca is not None:
            raise TypeError("RunKeys holding private keys must not be pickled")
        return (self.ring, self.ca_pem, self.certificates)

    def __setstate__(self, state: tuple[KeyRing, bytes | None, dict[int, bytes]]) -> None:
        ring, ca_pem, certificates = state
        self.__init__({}, ring, ca_pem=ca_pem, certificates=certificates)  # type: ignore[misc]
