"""What a stranger or a peer can make a node hold, and what a NaN can do, on real TCP."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch

from dlactor.messages import Payload, Share
from dlactor.node.node import Node
from dlactor.sharing.ops import all_finite
from dlactor.testing import build_tcp_nodes, credentials, open_as, run_nodes
from dlactor.transport.tcp import MAX_PER_PEER, TcpTransport
from dlactor.wire.codec import encode
from dlactor.wire.framing import frame_prefix
from tests.conftest import small_plan

CREDS = credentials(3)


async def receiver(**kw: float) -> TcpTransport:
    transport = TcpTransport(credentials=CREDS[1], deliver=lambda m, n: None, **kw)  # type: ignore[arg-type]
    await transport.start()
    return transport


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """How long until the other side closed the connection (it must within ``seconds``)."""
    t0 = time.monotonic()
    async with asyncio.timeout(seconds):
        while await reader.read(1 << 16):
            pass
    return time.monotonic() - t0


async def test_a_frame_larger_than_the_run_allows_is_refused_after_the_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = small_plan()
    assert plan.max_frame < 8 << 20, "the limit follows the model, not 1 GiB"
    node = await receiver(max_frame=plan.max_frame)
    assert node.address is not None
    reader, writer = await open_as(node.address, CREDS[0], 1)
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        writer.write(frame_prefix(plan.max_frame + 1))
        await closed_within(reader, 5.0)
    writer.close()
    assert f"exceeds the limit {plan.max_frame}" in caplog.text
    await node.stop()


class NaNInjector:
    """An insider holding node 3's key: sends NaN models for rounds to come."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def attack(self, address: tuple[str, int], rounds: range) -> None:
        creds = self.node.transport.credentials  # type: ignore[attr-defined]
        _, writer = await open_as(address, creds, 0)
        poison = Payload({"params": torch.full((self.node_params(),), float("nan"))})
        for r in rounds:
            writer.write(b"".join(bytes(b) for b in encode(Share(3, r, poison))))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    def node_params(self) -> int:
        return sum(p.numel() for p in self.node.model.parameters())


async def test_a_nan_payload_is_dropped_and_the_run_ends_with_every_node_finite(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = small_plan("nodes=4", "topology.kind=complete", "rounds=6")
    nodes = build_tcp_nodes(plan)
    addresses = {node.node: await node.start() for node in nodes}
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        await NaNInjector(nodes[3]).attack(addresses[0], range(0, 6))
        await run_nodes(nodes, addresses)
    assert "node 3 sent an unusable payload: tensor 'params' holds NaN or Inf" in caplog.text
    assert nodes[0].transport.stats.dropped_connections >= 1
    assert all(all_finite(node.model.parameters()) for node in nodes)


async def test_with_allow_nonfinite_a_nan_payload_is_taken_as_a_study_asks() -> None:
    plan = small_plan(
        "nodes=4", "topology.kind=complete", "rounds=1", "security.allow_nonfinite=true"
    )
    nodes = build_tcp_nodes(plan)
    addresses = {node.node: await node.start() for node in nodes}
    with torch.no_grad():
        next(nodes[3].model.parameters()).fill_(float("nan"))
    nodes[3].trainer.train = _no_training  # type: ignore[method-assign]
    await run_nodes(nodes, addresses)
    assert not all_finite(nodes[0].model.parameters())


async def _no_training(ctx: object) -> object:
    from dlactor.context import TrainStats

    return TrainStats(loss=float("nan"), steps=0, samples=0)


async def test_a_peer_may_hold_only_a_few_connections_to_a_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = await receiver()
    assert node.address is not None
    held = [await open_as(node.address, CREDS[0], 1) for _ in range(MAX_PER_PEER)]
    with caplog.at_level(logging.WARNING, logger="dlactor.transport"):
        reader, writer = await open_as(node.address, CREDS[0], 1)
        await closed_within(reader, 5.0)
    writer.close()
    assert f"node 0 has {MAX_PER_PEER} connections to this node already" in caplog.text
    assert len(node._by_peer[0]) == MAX_PER_PEER
    for _, w in held:
        w.close()
    await node.stop()


async def test_a_bug_in_what_handles_a_message_drops_that_connection_not_the_node() -> None:
    calls: list[object] = []

    def buggy(msg: object, nbytes: int) -> None:
        calls.append(msg)
        if len(calls) == 1:
            raise ValueError("a strategy's bug")

    node = TcpTransport(credentials=CREDS[1], deliver=buggy)  # type: ignore[arg-type]
    address = await node.start()
    sender = TcpTransport(credentials=CREDS[0], deliver=lambda m, n: None)
    sender.set_peers({1: address})
    await sender.send(1, Share(0, 0, Payload()))
    async with asyncio.timeout(5):
        while node.stats.dropped_connections == 0:
            await asyncio.sleep(0.01)
    sender.close_peer(1)
    await sender.send(1, Share(0, 1, Payload()))  # a new connection: the node still serves
    async with asyncio.timeout(5):
        while len(calls) < 2:
            await asyncio.sleep(0.01)
    await sender.stop()
    await node.stop()


async def test_a_node_whose_share_overflows_to_inf_stops_instead_of_sending_it() -> None:
    from dlactor.node.node import ModelDiverged
    from dlactor.testing import build_network

    plan = small_plan("nodes=4", "topology.kind=complete", "rounds=1")
    _, nodes = build_network(plan)
    original = nodes[2].sharing.outgoing

    async def overflowing(ctx: object) -> Payload:
        payload = await original(ctx)  # type: ignore[arg-type]
        return Payload({name: t * float("inf") for name, t in payload.tensors.items()})

    nodes[2].sharing.outgoing = overflowing  # type: ignore[method-assign]
    for n in nodes:
        await n.start()
    with pytest.raises(ModelDiverged, match=r"node 2's share holds NaN or Inf .* round 0"):
        await nodes[2].run_round(0)
    for n in nodes:
        await n.stop()
