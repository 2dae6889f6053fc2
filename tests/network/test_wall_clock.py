"""The wall clock over real TCP: the transport really holds a message until the emulated
network would have delivered it (its precision at several sizes is measured by
``make bench``, section "network"; here only that it is emulated at all)."""

from __future__ import annotations

import asyncio
import time

import torch

from dlactor.messages import Message, Overlay, Payload, Share
from dlactor.network.model import MBPS, NetworkModel
from dlactor.network.settings import NetworkSettings
from dlactor.testing import credentials, emulated_tcp
from dlactor.wire.errors import RemoteProtocolError
from tests.network.emulation import Emulation, share

CREDS = credentials(2, run_id="network")


async def test_a_megabyte_over_an_emulated_8_mbit_link_is_held_about_a_second() -> None:
    model = NetworkModel(NetworkSettings(clock="wall", uplink_mbps=8), nodes=2, processes=2, seed=0)
    arrived: list[float] = []
    done = asyncio.Event()

    def deliver(msg: Message, nbytes: int) -> None:
        arrived.append(time.perf_counter())
        done.set()

    receiver = emulated_tcp(model, 1, CREDS[1], deliver)
    sender = emulated_tcp(model, 0, CREDS[0], lambda m, n: None)
    sender.set_peers({1: await receiver.start()})
    await sender.start()
    msg = Share(0, 0, Payload({"x": torch.zeros(250_000)}))
    expected = sender.wire_size(msg) / (8 * MBPS)  # 1.0001 s: a megabyte and its header
    t0 = time.perf_counter()
    await sender.send_all([1], msg)
    async with asyncio.timeout(10):
        await done.wait()
    elapsed = arrived[0] - t0
    await sender.stop()
    await receiver.stop()
    assert 0.9 * expected <= elapsed < 3 * expected, elapsed
    assert receiver.stats.bytes_recv > 1_000_000  # it came over the socket, whole


async def test_wall_clock_overlay_messages_do_not_wait_behind_a_held_share() -> None:
    emu = Emulation(2, clock="wall", uplink_mbps=8)  # a 100 kB share: 0.1 s
    await emu.start()
    await emu.transports[0].send_all([1], share(0))
    await emu.transports[0].send(1, Overlay(0, 0, "ask"))
    await asyncio.sleep(0.03)
    assert [type(m) for m in emu.got[1]] == [Overlay]
    await asyncio.sleep(0.2)
    assert [type(m) for m in emu.got[1]] == [Overlay, Share]
    await emu.stop()


async def test_wall_clock_a_held_message_that_breaks_the_protocol_is_dropped_not_the_node() -> None:
    emu = Emulation(2, clock="wall", latency_ms=30)
    refused: list[int] = []

    def picky(msg: Message, nbytes: int) -> None:
        if isinstance(msg, Share) and msg.round == 0:
            refused.append(msg.round)
            raise RemoteProtocolError("not this one")
        emu.got[1].append(msg)

    emu.transports[1]._deliver = picky
    await emu.start()
    await emu.transports[0].send_all([1], share(0, round=0, floats=10))
    await asyncio.sleep(0.1)
    assert refused == [0] and emu.transports[1].stats.dropped_connections == 1
    await emu.transports[0].send_all([1], share(0, round=1, floats=10))
    await asyncio.sleep(0.1)
    assert [m.round for m in emu.got[1] if isinstance(m, Share)] == [1]  # still delivering
    await emu.stop()
