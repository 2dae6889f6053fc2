"""The handshake, sans I/O: who can complete it, and what no recording or key can forge."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlactor.messages import Challenge, Hello, Message, Proof
from dlactor.security.credentials import RunKeys
from dlactor.security.handshake import Initiator, Responder
from dlactor.security.identity import LAUNCHER, Identity
from dlactor.wire.codec import decode, encode
from dlactor.wire.errors import RemoteProtocolError

RUN = "run-7"
KEYS = RunKeys.make(range(4))
RING = KEYS.ring


def me(process: int) -> Identity:
    return KEYS.credentials(process, RUN, keep_others=True).identity


def over_the_wire(msg: Message) -> Message:
    """What the other side decodes: the message through the real codec."""
    return decode(bytearray(b"".join(bytes(b) for b in encode(msg))[4:]))


def handshake(initiator: Initiator, responder: Responder) -> int:
    challenge = responder.on_hello(over_the_wire(initiator.hello()))
    proof = initiator.on_challenge(over_the_wire(challenge))
    return responder.on_proof(over_the_wire(proof))


def test_two_processes_of_the_run_prove_who_they_are_to_each_other() -> None:
    assert handshake(Initiator(RUN, me(0), RING, 1), Responder(RUN, me(1), RING)) == 0


def test_a_node_and_the_launcher_prove_who_they_are_to_each_other() -> None:
    assert handshake(Initiator(RUN, me(2), RING, LAUNCHER), Responder(RUN, me(LAUNCHER), RING)) == 2


def test_a_recorded_hello_and_proof_replayed_to_a_new_connection_are_refused() -> None:
    initiator = Initiator(RUN, me(0), RING, 1)
    hello = initiator.hello()
    proof = initiator.on_challenge(Responder(RUN, me(1), RING).on_hello(hello))

    replayed_to = Responder(RUN, me(1), RING)  # a new connection: a fresh nonce
    replayed_to.on_hello(hello)
    with pytest.raises(RemoteProtocolError, match="failed to prove"):
        replayed_to.on_proof(proof)


def test_a_recorded_challenge_replayed_to_a_new_initiator_is_refused() -> None:
    recorded = Responder(RUN, me(1), RING).on_hello(Initiator(RUN, me(0), RING, 1).hello())
    with pytest.raises(RemoteProtocolError, match="failed to prove"):
        Initiator(RUN, me(0), RING, 1).on_challenge(recorded)


def test_a_process_that_knows_a_public_key_but_not_its_private_key_cannot_pose_as_it() -> None:
    impostor = Identity(0, Ed25519PrivateKey.generate())  # claims 0, holds another key
    responder = Responder(RUN, me(1), RING)
    with pytest.raises(RemoteProtocolError, match="process 0 failed to prove"):
        handshake(Initiator(RUN, impostor, RING, 1), responder)


def test_node_j_cannot_pose_as_node_i_with_its_own_key() -> None:
    j_as_i = Identity(0, KEYS.credentials(3, RUN, keep_others=True).identity.private_key)
    with pytest.raises(RemoteProtocolError, match="process 0 failed to prove"):
        handshake(Initiator(RUN, j_as_i, RING, 1), Responder(RUN, me(1), RING))


def test_an_impostor_answering_at_a_peers_address_is_refused_by_the_initiator() -> None:
    initiator = Initiator(RUN, me(0), RING, 1)
    fake = Responder(RUN, Identity(1, Ed25519PrivateKey.generate()), RING)
    with pytest.raises(RemoteProtocolError, match="process 1 failed to prove"):
        initiator.on_challenge(fake.on_hello(initiator.hello()))


def test_another_peer_answering_is_refused_even_with_its_own_valid_signature() -> None:
    initiator = Initiator(RUN, me(0), RING, 1)
    hello = initiator.hello()
    relay = Responder(RUN, me(2), RING)  # node 2 answers a hello meant for node 1
    with pytest.raises(RemoteProtocolError, match="hello for process 1 reached 2"):
        relay.on_hello(hello)
    challenge = Responder(RUN, me(2), RING).on_hello(Hello(RUN, 0, 2, hello.nonce))
    with pytest.raises(RemoteProtocolError, match="answered as 2"):
        initiator.on_challenge(challenge)


def test_a_responders_signature_reflected_as_the_proof_is_refused() -> None:
    initiator = Initiator(RUN, me(0), RING, 1)
    responder = Responder(RUN, me(1), RING)
    challenge = responder.on_hello(initiator.hello())
    with pytest.raises(RemoteProtocolError, match="failed to prove"):
        responder.on_proof(Proof(challenge.signature))


def test_a_handshake_of_another_run_is_refused() -> None:
    hello = Initiator("other-run", me(0), RING, 1).hello()
    with pytest.raises(RemoteProtocolError, match="this is 'run-7'"):
        Responder(RUN, me(1), RING).on_hello(hello)


@pytest.mark.parametrize("sender", [1, 99, LAUNCHER - 1])
def test_a_hello_from_itself_or_from_a_process_outside_the_run_is_refused(sender: int) -> None:
    with pytest.raises(RemoteProtocolError, match="not a peer of this run"):
        Responder(RUN, me(1), RING).on_hello(Hello(RUN, sender, 1, bytes(32)))


def test_messages_out_of_order_are_refused() -> None:
    responder = Responder(RUN, me(1), RING)
    with pytest.raises(RemoteProtocolError, match="proof before hello"):
        responder.on_proof(Proof(bytes(64)))
    with pytest.raises(RemoteProtocolError, match="expected a hello"):
        responder.on_hello(Proof(bytes(64)))
    with pytest.raises(RemoteProtocolError, match="expected a challenge"):
        Initiator(RUN, me(0), RING, 1).on_challenge(Hello(RUN, 1, 0, bytes(32)))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ids = st.sampled_from([0, 1, 2, 3, 7, LAUNCHER])
blobs = st.one_of(st.binary(min_size=0, max_size=80), st.binary(min_size=32, max_size=32))
handshake_messages = st.one_of(
    st.builds(Hello, st.sampled_from([RUN, "x"]), ids, ids, blobs),
    st.builds(Challenge, ids, blobs, st.binary(min_size=64, max_size=64)),
    st.builds(Proof, st.binary(min_size=64, max_size=64)),
)


@FUZZ
@given(first=handshake_messages, second=handshake_messages)
def test_fuzzed_handshake_messages_never_authenticate_and_raise_only_remote_errors(
    first: Message, second: Message
) -> None:
    responder = Responder(RUN, me(1), RING)
    try:
        responder.on_hello(first)
        responder.on_proof(second)
    except RemoteProtocolError:
        pass
    else:  # pragma: no cover - a forged proof that verifies would be a break
        pytest.fail(f"{first!r} then {second!r} authenticated as {responder.claimed}")
    with pytest.raises(RemoteProtocolError):
        Initiator(RUN, me(0), RING, 1).on_challenge(first)


@FUZZ
@given(data=st.data())
def test_fuzzed_handshake_bytes_raise_only_remote_protocol_errors(data: st.DataObject) -> None:
    """Mutated real handshake frames through the decoder and the responder."""
    initiator = Initiator(RUN, me(0), RING, 1)
    body = bytearray(b"".join(bytes(b) for b in encode(initiator.hello()))[4:])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(body)))
    responder = Responder(RUN, me(1), RING)
    try:
        challenge = responder.on_hello(decode(body[:cut]))
        responder.on_proof(decode(bytearray(body)))
    except RemoteProtocolError:
        return
    raise AssertionError(f"mutated bytes authenticated: {challenge!r}")  # pragma: no cover
