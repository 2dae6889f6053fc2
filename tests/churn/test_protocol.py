"""Churn on the in-memory transport: offline rounds keep the online nodes' average exact,
nobody waits for an offline node, a returning node goes on from its own model, and a node
that dies is dropped as soon as the launcher says so while the others finish."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dlactor.churn.availability import Availability
from dlactor.config import validate_config
from dlactor.launch.plan import Plan, make_plan
from dlactor.messages import Payload, Share
from dlactor.node.node import Node
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, build_services, run_nodes
from dlactor.transport.base import PeerUnreachable
from tests.conftest import SMALL, small_plan

CHURN = ["training.lr=0.0", "rounds=12", "availability.offline=0.3", "availability.mean_offline=2"]


def _distinct_models(plan: Plan) -> list[torch.nn.Module]:
    """A model per node, node i's shifted by i: averages are then far from trivial."""
    models = []
    for i in range(plan.config.nodes):
        model = copy.deepcopy(plan.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(i))
        models.append(model)
    return models


async def _run_with_snapshots(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> tuple[
    list[torch.Tensor], dict[tuple[int, int], torch.Tensor], list[tuple[int, int, list[int]]]
]:
    """Run ``plan`` in memory; each node's model vector after each round, and every wait
    for a round's senders (node, round, senders)."""
    models = _distinct_models(plan)
    start = [flatten(m.parameters()) for m in models]
    after: dict[tuple[int, int], torch.Tensor] = {}
    waits: list[tuple[int, int, list[int]]] = []
    collect = Node.collect

    async def recorded(self: Node, r: int, senders: Any, timeout: float, **kw: Any) -> Any:
        senders = list(senders)
        waits.append((self.node, r, senders))
        return await collect(self, r, senders, timeout, **kw)

    monkeypatch.setattr(Node, "collect", recorded)
    net, nodes = build_network(plan, models=models)

    def snapshot(record: dict[str, Any]) -> None:
        node = record["node"]
        after[(node, record["round"])] = flatten(nodes[node].model.parameters()).clone()

    for node in nodes:
        node.on_round = snapshot
    actors = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await run_nodes(actors)
    return start, after, waits


@pytest.mark.parametrize("topology", ["regular", "dynamic_regular", "peer_sampler"])
async def test_offline_rounds_keep_the_online_average_and_nobody_waits_for_them(
    topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = [] if topology == "regular" else [f"topology.kind={topology}", "topology.degree=3"]
    plan = small_plan(*CHURN, *extra)
    availability = plan.availability
    assert availability is not None
    start, after, waits = await _run_with_snapshots(plan, monkeypatch)
    n, rounds = plan.config.nodes, plan.config.rounds
    churned = 0
    for r in range(rounds):
        online = availability.online_nodes(r).tolist()
        before = {i: start[i] if r == 0 else after[(i, r - 1)] for i in range(n)}
        for i in range(n):
            if i not in online:  # an offline node's model does not move
                assert torch.equal(after[(i, r)], before[i]), (i, r)
                churned += 1
        if online:  # the online nodes' average is the same after the round as before
            mean_before = torch.stack([before[i] for i in online]).mean(0)
            mean_after = torch.stack([after[(i, r)] for i in online]).mean(0)
            torch.testing.assert_close(mean_after, mean_before, atol=2e-5, rtol=0)
    assert churned > 10  # the schedule really took nodes offline
    assert waits
    for node, r, senders in waits:  # only online nodes are waited for, by online nodes
        assert availability.online(node, r)
        assert all(availability.online(s, r) for s in senders), (node, r, senders)
    returned = [  # nodes that came back (what they start from: the test below)
        (i, r)
        for i in range(n)
        for r in range(1, rounds)
        if availability.online(i, r) and not availability.online(i, r - 1)
    ]
    assert returned


async def test_a_returning_node_rejoins_with_the_model_it_left_with() -> None:
    plan = small_plan("training.lr=0.0", "rounds=6", "availability.offline=0.3")
    availability = plan.availability
    assert availability is not None
    # node 0 offline in rounds 2 and 3 only: a schedule made by hand
    toggles = [np.array([2, 4]) if i == 0 else np.array([], dtype=np.int64) for i in range(8)]
    by_hand = Availability(8, 6, np.ones(8, dtype=bool), toggles)
    plan = dataclasses.replace(plan, availability=by_hand)
    models = _distinct_models(plan)
    _, nodes = build_network(plan, models=models)
    seen: dict[int, torch.Tensor] = {}

    def on_round(record: dict[str, Any]) -> None:
        if record["node"] == 0:
            seen[record["round"]] = flatten(nodes[0].model.parameters()).clone()
            assert record.get("online", True) == (record["round"] not in (2, 3))

    nodes[0].on_round = on_round
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    assert torch.equal(seen[2], seen[1]) and torch.equal(seen[3], seen[1])
    assert not torch.equal(seen[4], seen[3])  # back, and averaging again


async def test_fedavg_samples_only_online_clients() -> None:
    data = {k: v for k, v in SMALL.items() if k != "topology"}
    data = {**data, "algorithm": {"kind": "fedavg", "fraction": 0.5}, "rounds": 8}
    data["availability"] = {"offline": 0.4, "mean_offline": 2}
    plan = make_plan(validate_config(data))
    availability = plan.availability
    assert availability is not None
    records: dict[int, list[dict[str, Any]]] = {}
    _, nodes = build_network(plan)
    for node in nodes:
        node.on_round = lambda rec: records.setdefault(rec["node"], []).append(rec)
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    server = plan.servers[0]
    for rec in records[server]:
        online = set(availability.online_nodes(rec["round"]).tolist())
        assert set(rec["clients"]) <= online
        assert len(rec["clients"]) == min(4, len(online))
    for client in range(8):
        for rec in records[client]:
            if rec.get("sampled"):
                assert availability.online(client, rec["round"])


def _continue_plan(*extra: str) -> Plan:
    return small_plan(
        "training.lr=0.0",
        "rounds=10",
        'launcher.on_node_failure="continue"',
        "launcher.round_timeout_s=30",
        *extra,
    )


async def test_a_dead_node_is_dropped_as_soon_as_the_launcher_says_so() -> None:
    plan = _continue_plan()
    models = _distinct_models(plan)
    _, nodes = build_network(plan, models=models)
    victim, r_lost = 3, 4
    hang = asyncio.get_running_loop().create_future()
    train = nodes[victim].trainer.train

    async def dies_in_round(ctx: Any) -> Any:
        if ctx.round == r_lost:
            await hang  # it stops here: never shares round 4
        return await train(ctx)

    nodes[victim].trainer.train = dies_in_round  # type: ignore[method-assign]
    after: dict[tuple[int, int], torch.Tensor] = {}

    def snapshot(record: dict[str, Any]) -> None:
        i = record["node"]
        after[(i, record["round"])] = flatten(nodes[i].model.parameters()).clone()

    for node in nodes:
        node.on_round = snapshot
        await node.start()
    t0 = time.time()
    for node in nodes:
        node.connect({}, t0)
    tasks = {node.node: asyncio.create_task(node.run()) for node in nodes}
    while (victim, r_lost - 1) not in after:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # its neighbours are now waiting for its round-4 share
    tasks[victim].cancel()
    await nodes[victim].stop()
    for node in nodes:
        if node.node != victim:
            node.lose(victim, r_lost)  # the launcher's word
    survivors = [t for i, t in tasks.items() if i != victim]
    async with asyncio.timeout(10):  # far below the round timeout of 30 s
        await asyncio.gather(*survivors)
    for node in nodes:
        await node.stop()
    alive = [i for i in range(8) if i != victim]
    assert all((i, 9) in after for i in alive)  # the survivors finished every round
    # from round 4 on only survivors mix: their average is what it was after round 3
    torch.testing.assert_close(
        torch.stack([after[(i, 9)] for i in alive]).mean(0),
        torch.stack([after[(i, r_lost - 1)] for i in alive]).mean(0),
        atol=2e-5,
        rtol=0,
    )


async def test_a_send_to_a_dead_peer_waits_for_the_launchers_word() -> None:
    plan = _continue_plan()
    _, nodes = build_network(plan)
    for node in nodes[:2]:
        await node.start()
    sender = nodes[0]
    sender.connect({}, time.time())
    share = Share(0, 0, Payload({"params": flatten(sender.model.parameters())}))
    await nodes[1].stop()  # dead: the memory network refuses sends to it
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, sender.lose, 1, 0)
    t0 = loop.time()
    await sender.send([1], share)  # waits for the word, then goes on
    assert 0.15 < loop.time() - t0 < 5
    sender.survive = False  # under on_node_failure = "stop", the same send fails the node
    sender.lost.clear()
    with pytest.raises(PeerUnreachable):
        await sender.send([1], share)
    await sender.stop()


async def test_a_node_back_from_a_long_absence_waits_for_its_neighbours_to_catch_up(
    tmp_path: Path,
) -> None:
    """Offline, a node skips ahead at once; its neighbours take a round each. Its first
    round back waits for them longer than one round timeout, without failing."""
    trace = tmp_path / "away.csv"
    trace.write_text("node,start,end\n0,1,10\n")
    plan = small_plan(
        "training.lr=0.0",
        "rounds=12",
        'availability.kind="trace"',
        f'availability.path="{trace}"',
        "launcher.round_timeout_s=0.25",
    )
    _, nodes = build_network(plan)
    for node in nodes[1:]:  # the others take 0.1 s a round: 9 rounds are 0.9 s
        train = node.trainer.train

        async def slow(ctx: Any, train: Any = train) -> Any:
            await asyncio.sleep(0.1)
            return await train(ctx)

        node.trainer.train = slow  # type: ignore[method-assign]
    for node in nodes:
        await node.start()
    await run_nodes(nodes)  # a RoundTimeout would fail it
    peer = next(iter(plan.graph.neighbors(0)))
    assert nodes[0].round_allowance(12, [peer]) == 0.25  # back in step: one round timeout
    assert nodes[0].round_allowance(12, [peer]) < nodes[0].round_allowance(20, [peer])
