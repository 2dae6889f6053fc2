"""TLS for every connection of a run, with a certificate authority made for that run alone.

The launcher makes the run's CA (an Ed25519 key and a self-signed certificate, valid for a
year) and issues every process a certificate for that process's own identity key: the TLS
key is the key the handshake signs with, so TLS adds no key to keep. Both sides of every
connection present their certificate and verify the other's against the run's CA (TLS 1.3,
mutual); then each checks that the peer's certificate holds the public key the key ring has
for the process it expects (the initiator: the one it dialled; the responder: the one the
hello claims). A certificate the CA issued to another process of the run is refused: no
process can sit between two others, even with a valid certificate of its own.

Python's ``ssl`` loads a private key only from a file: it is written as PEM to an anonymous
in-memory file (``memfd_create``, Linux), loaded, and the file closed; it never touches a
disk.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID

from dlactor.security.identity import Identity, public_bytes
from dlactor.wire.errors import RemoteProtocolError

__all__ = ["RunCA", "TlsContexts", "peer_public_key", "warm_up_tls"]

VALID_FOR = datetime.timedelta(days=365)


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


class RunCA:
    """The run's certificate authority: it lives in the launcher and signs certificates."""

    def __init__(self, run_id: str) -> None:
        self._key = Ed25519PrivateKey.generate()
        self._name = _name(f"dlactor run {run_id} CA")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, None)
        )
        self.pem = cert.public_bytes(Encoding.PEM)

    def issue(self, process: int, public_key: bytes) -> bytes:
        """A PEM certificate binding ``public_key`` to ``process``."""
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"dlactor process {process}"))
            .issuer_name(self._name)
            .public_key(Ed25519PublicKey.from_public_bytes(public_key))
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, None)
        )
        return cert.public_bytes(Encoding.PEM)


@dataclass(frozen=True)
class TlsContexts:
    """One process's TLS contexts: ``server`` for connections it accepts, ``client`` for
    those it opens. Both present its certificate and require the peer's."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def make(cls, identity: Identity, certificate: bytes, ca: bytes) -> TlsContexts:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False  # the peer is checked by its key, not a host name
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=ca.decode())
            _load_chain(ctx, identity, certificate)
        return cls(server, client)


def warm_up_tls() -> None:
    """Make and drop one process's TLS contexts, with a throwaway CA and key: OpenSSL sets up
    its providers and decoders the first time a process loads a key and a CA. Done once in
    the template that nodes are forked from, each node then shares that state instead of
    building its own, in private memory and CPU at its start."""
    ca = RunCA("warm-up")
    key = Ed25519PrivateKey.generate()
    identity = Identity(0, key)
    TlsContexts.make(identity, ca.issue(0, public_bytes(key)), ca.pem)


def _load_chain(ctx: ssl.SSLContext, identity: Identity, certificate: bytes) -> None:
    """Load the certificate and its private key through an in-memory file, never a disk."""
    key = identity.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.memfd_create("dlactor-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, certificate + key)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def peer_public_key(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The raw public key in the peer's verified certificate; RemoteProtocolError without one."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise RemoteProtocolError("the peer presented no TLS certificate")
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise RemoteProtocolError("the peer's certificate does not hold an Ed25519 key")
    return public_bytes(key)
