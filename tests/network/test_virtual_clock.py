"""The emulated network's arithmetic on the virtual clock, message by message: latency,
uplink and downlink queues, traces (the issue's "done when" cases)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.network.files import TraceRow
from tests.network.emulation import MBPS, Emulation, share


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_message_arrives_after_latency_plus_size_over_bandwidth() -> None:
    emu = Emulation(2, uplink_mbps=8, downlink_mbps=8, latency_ms=50)
    await emu.start()
    msg = share(0)
    nbytes = emu.transports[0].wire_size(msg)
    await emu.transports[0].send_all([1], msg)
    await _settle()
    arrival = emu.transports[1].take_shares(0, [0])
    assert arrival == pytest.approx(0.05 + nbytes / (8 * MBPS))
    assert nbytes > 100_000  # the whole frame, header and framing included
    await emu.stop()


async def test_k_messages_through_one_uplink_take_k_times_as_long() -> None:
    k = 6
    emu = Emulation(k + 1, uplink_mbps=10, latency_ms=20)
    await emu.start()
    msg = share(0)
    nbytes = emu.transports[0].wire_size(msg)
    await emu.transports[0].send_all(range(1, k + 1), msg)
    await _settle()
    arrivals = [emu.transports[j].take_shares(0, [0]) for j in range(1, k + 1)]
    one = nbytes / (10 * MBPS)
    # the copies share the uplink: each is through when all k are
    assert arrivals == pytest.approx([0.02 + k * one] * k)
    # a second send queues behind the first
    await emu.transports[0].send_all([1], share(0, round=1))
    await _settle()
    assert emu.transports[1].take_shares(1, [0]) == pytest.approx(0.02 + (k + 1) * one)


async def test_two_senders_into_one_downlink_share_it() -> None:
    emu = Emulation(3, downlink_mbps=10, latency_ms=30)
    await emu.start()
    for sender in (0, 1):
        await emu.transports[sender].send_all([2], share(sender))
    await _settle()
    nbytes = emu.transports[0].wire_size(share(0))
    one = nbytes / (10 * MBPS)
    assert emu.transports[2].take_shares(0, [0, 1]) == pytest.approx(0.03 + 2 * one)
    # alone, the same message takes half as long
    alone = Emulation(2, downlink_mbps=10, latency_ms=30)
    await alone.start()
    await alone.transports[0].send_all([1], share(0))
    await _settle()
    assert alone.transports[1].take_shares(0, [0]) == pytest.approx(0.03 + one)


async def test_the_slower_end_of_a_link_sets_its_pace() -> None:
    slow = [{"name": "slow", "nodes": [1], "downlink_mbps": 5}]  # the receiver's downlink
    emu = Emulation(2, uplink_mbps=100, downlink_mbps=100, latency_ms=10, classes=slow)
    await emu.start()
    nbytes = emu.transports[0].wire_size(share(0))
    await emu.transports[0].send_all([1], share(0))
    await _settle()
    assert emu.transports[1].take_shares(0, [0]) == pytest.approx(0.01 + nbytes / (5 * MBPS))


async def test_a_traces_bandwidth_change_takes_effect_at_its_time() -> None:
    trace = [TraceRow(1.0, "*", 4.0, None, None, 2), TraceRow(3.0, 0, None, None, 100.0, 3)]
    emu = Emulation(2, files={"trace": trace}, uplink_mbps=8, latency_ms=50)
    await emu.start()
    nbytes = emu.transports[0].wire_size(share(0))
    sender, receiver = emu.transports[0], emu.transports[1]
    arrivals = []
    for r, t_send in enumerate((0.2, 2.0, 4.0)):
        emu.clocks[0].t = t_send
        await sender.send_all([1], share(0, round=r))
        await _settle()
        arrivals.append(receiver.take_shares(r, [0]) - t_send)
    assert arrivals[0] == pytest.approx(0.05 + nbytes / (8 * MBPS))  # before the change
    assert arrivals[1] == pytest.approx(0.05 + nbytes / (4 * MBPS))  # after it: half the rate
    # node 0's access latency of 100 ms is added to its links from t = 3 on
    assert arrivals[2] == pytest.approx(0.15 + nbytes / (4 * MBPS))


async def test_a_latency_matrix_gives_each_link_its_own_latency() -> None:
    import numpy as np

    matrix = np.array([[0.0, 0.010, 0.200], [0.010, 0.0, 0.050], [0.200, 0.050, 0.0]])
    emu = Emulation(3, files={"latency_matrix": matrix})
    await emu.start()
    await emu.transports[0].send_all([1, 2], share(0))
    await _settle()
    assert emu.transports[1].take_shares(0, [0]) == pytest.approx(0.010)
    assert emu.transports[2].take_shares(0, [0]) == pytest.approx(0.200)


async def test_overlay_messages_take_latency_but_do_not_queue_behind_shares() -> None:
    from dlactor.messages import Overlay

    emu = Emulation(2, uplink_mbps=1, latency_ms=40)
    await emu.start()
    await emu.transports[0].send_all([1], share(0))  # 0.8 s on a 1 Mbit/s uplink
    await emu.transports[0].send(1, Overlay(0, 0, "ask"))
    await _settle()
    assert 0.04 <= emu.transports[1].overlay_arrival(0) < 0.05


@settings(max_examples=60, deadline=None)
@given(
    sends=st.lists(
        st.tuples(
            st.integers(0, 2),  # sender
            st.floats(0.0, 5.0),  # its clock when it sends
            st.integers(1, 20_000),  # floats in the share
        ),
        min_size=1,
        max_size=12,
    ),
    up=st.floats(0.1, 1000.0),
    down=st.floats(0.1, 1000.0),
    latency=st.floats(0.0, 500.0),
    jitter=st.floats(0.0, 100.0),
    loss=st.floats(0.0, 0.2),
)
def test_no_message_arrives_before_it_was_sent(
    sends: list[tuple[int, float, int]],
    up: float,
    down: float,
    latency: float,
    jitter: float,
    loss: float,
) -> None:
    async def main() -> None:
        emu = Emulation(
            4,
            uplink_mbps=up,
            downlink_mbps=down,
            latency_ms=latency,
            jitter_ms=jitter,
            loss=loss,
        )
        await emu.start()
        sent_at: dict[int, float] = {}
        for r, (sender, t, floats) in enumerate(sends):
            emu.clocks[sender].t = t
            await emu.transports[sender].send_all([3], share(sender, round=r, floats=floats))
            sent_at[r] = t
        await _settle()
        for r, (sender, _, _) in enumerate(sends):
            arrival = emu.transports[3].take_shares(r, [sender])
            assert arrival >= sent_at[r]
        await emu.stop()

    asyncio.run(main())


def test_a_frame_encoded_once_is_restamped_per_peer_without_copying_its_tensors() -> None:
    from dlactor.messages import Overlay, Payload, Share
    from dlactor.wire.codec import decode, encode, restamp
    from dlactor.wire.errors import LocalProtocolError
    from dlactor.wire.framing import PREFIX_LEN

    def decoded(buffers: list[bytes | memoryview]) -> object:
        return decode(bytearray(b"".join(buffers)[PREFIX_LEN:]))

    tensors = {"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3)}
    share = Share(2, 5, Payload(tensors, {"k": 1}), (0.0, 0.0))
    frame = encode(share)
    again = restamp(frame, (1.25, 3.5))
    got = decoded(again)
    assert isinstance(got, Share) and (got.sender, got.round, got.clock) == (2, 5, (1.25, 3.5))
    assert got.payload.meta == {"k": 1}
    assert all(torch.equal(got.payload.tensors[k], v) for k, v in tensors.items())
    assert all(a is b for a, b in zip(frame[1:], again[1:], strict=True))  # tensors shared
    ask = Overlay(2, 5, "ask", [1, 2], [3, 4], clock=(0.0, 0.0))
    assert decoded(restamp(encode(ask), (0.5, 0.75))) == dataclasses.replace(ask, clock=(0.5, 0.75))
    with pytest.raises(LocalProtocolError):
        restamp(encode(Overlay(2, 5, "ask")), (1.0, 2.0))  # no stamp to rewrite
    with pytest.raises(LocalProtocolError):
        restamp(encode(Overlay(2, 5, "ask", clock=(0.0, 0.0))), (2.0, 1.0))
