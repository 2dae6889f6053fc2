"""The ``overlay`` frame: topology services' messages (docs/wire.md)."""

from __future__ import annotations

import msgpack
import pytest

from dlactor.messages import PROTOCOL_VERSION, Overlay
from dlactor.wire.codec import MAX_OVERLAY, decode, encode
from dlactor.wire.errors import LocalProtocolError, RemoteProtocolError


def body(header: dict) -> bytearray:  # type: ignore[type-arg]
    packed = msgpack.packb(header, use_bin_type=True)
    return bytearray(len(packed).to_bytes(4, "big") + packed)


def good(**changes: object) -> dict:  # type: ignore[type-arg]
    header = {"v": PROTOCOL_VERSION, "k": "overlay", "s": 1, "r": 2, "op": "pick", "n": [], "x": []}
    return {**header, **changes}


@pytest.mark.parametrize(
    "msg",
    [
        Overlay(0, 0, "ask"),
        Overlay(3, 17, "peers", [1, 2, 9], [5, 5, 5]),
        Overlay(9, 1, "shuffle", list(range(100)), [0] * 100),
        Overlay(1, 2, "x" * 32, [0], [2**63 - 1]),
    ],
)
def test_overlay_messages_round_trip(msg: Overlay) -> None:
    assert decode(bytearray(b"".join(encode(msg))[4:])) == msg


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (good(op=""), "op"),
        (good(op="y" * 33), "op"),
        (good(op=3), "op"),
        (good(n=[1, -1]), "nodes"),
        (good(n=[True]), "nodes"),
        (good(n={"a": 1}), "not a list"),
        (good(x=[2**63]), "values"),
        (good(n=[0] * (MAX_OVERLAY + 1)), "at most"),
        (good(s=-1), "sender"),
        ({k: v for k, v in good().items() if k != "x"}, "missing"),
    ],
)
def test_malformed_overlay_headers_are_the_senders_fault(header: dict, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RemoteProtocolError, match=why):
        decode(body(header))


def test_an_overlay_we_could_not_decode_is_never_sent() -> None:
    with pytest.raises(LocalProtocolError, match="op"):
        encode(Overlay(0, 0, ""))
    with pytest.raises(LocalProtocolError, match="nodes"):
        encode(Overlay(0, 0, "ask", [-2]))
