"""Epidemic Learning in memory: the seeded oracle graph, EL-Local's completion under random
delays, the uniform average, and the config it refuses."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

from dlactor.algorithms.epidemic import EpidemicLearning, oracle_targets
from dlactor.config import ConfigError, apply_overrides, validate_config
from dlactor.context import RoundContext, TrainStats
from dlactor.launch.plan import Plan, make_plan
from dlactor.messages import Message, Payload, Share
from dlactor.node.node import Node, Record
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, run_nodes
from dlactor.transport.base import Transport
from dlactor.wire.errors import RemoteProtocolError

BASE: dict[str, Any] = {
    "name": "el",
    "seed": 5,
    "nodes": 8,
    "rounds": 3,
    "model": {"kind": "mlp", "hidden": [8]},
    "partition": {"kind": "shards", "shards_per_node": 2},
    "training": {"kind": "sgd", "lr": 0.5, "local_steps": 1, "batch_size": 32},
    "evaluation": {"every": 2},
    "launcher": {"round_timeout_s": 20, "start_timeout_s": 60},
    "algorithm": {"kind": "epidemic", "s": 2},
}


def el_plan(*overrides: str, base: dict[str, Any] = BASE) -> Plan:
    return make_plan(validate_config(apply_overrides(base, list(overrides))))


def distinct_models(plan: Plan) -> list[torch.nn.Module]:
    """One model per node, each its own random perturbation of the plan's."""
    models = []
    for i in range(plan.config.nodes):
        model = copy.deepcopy(plan.model)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        models.append(model)
    return models


async def run(nodes: list[Node]) -> None:
    for node in nodes:
        await node.start()
    await run_nodes(nodes)


def network(
    plan: Plan, models: list[torch.nn.Module] | None = None
) -> tuple[list[Node], dict[int, list[Record]]]:
    records: dict[int, list[Record]] = {i: [] for i in range(plan.config.nodes)}
    _, nodes = build_network(
        plan, models=models, on_round=lambda rec: records[rec["node"]].append(rec)
    )
    return nodes, records


def senders_of(targets: list[list[int]], i: int) -> set[int]:
    return {j for j, row in enumerate(targets) if i in row}


def mix(vectors: list[torch.Tensor], targets: list[list[int]]) -> list[torch.Tensor]:
    """One EL averaging step, computed here: x_i <- (x_i + sum_{j -> i} x_j) / (1 + k)."""
    out = []
    for i, own in enumerate(vectors):
        group = [own, *(vectors[j] for j in sorted(senders_of(targets, i)))]
        out.append(torch.stack(group).sum(0) / len(group))
    return out


def vectors_of(models: Iterable[torch.nn.Module]) -> list[torch.Tensor]:
    return [flatten(m.parameters()).double() for m in models]


def test_oracle_targets_are_seeded_distinct_and_never_the_node_itself() -> None:
    for nodes, s in [(8, 2), (10, 3), (6, 5), (40, 6)]:  # both ways of drawing a row
        a = oracle_targets(7, 3, nodes, s)
        assert a == oracle_targets(7, 3, nodes, s)
        assert a != oracle_targets(7, 4, nodes, s) and a != oracle_targets(8, 3, nodes, s)
        for i, row in enumerate(a):
            assert len(row) == len(set(row)) == s and i not in row
            assert all(0 <= t < nodes for t in row)
    # Over many rounds every ordered pair turns up: no target is out of reach.
    pairs = {
        (i, t) for r in range(200) for i, row in enumerate(oracle_targets(1, r, 8, 2)) for t in row
    }
    assert pairs == {(i, j) for i in range(8) for j in range(8) if i != j}


def spy_on_waits(
    node: Node, waited: dict[tuple[int, int], tuple[frozenset[int], frozenset[int]]]
) -> None:
    """Record, per (node, round), whom ``wait_round`` waited for and whom it returned."""
    wait_round = node.mailbox.wait_round

    async def spy(
        r: int, peers: Iterable[int], timeout: float, *, deadline: float | None = None
    ) -> dict[int, Payload]:
        expected = frozenset(peers)
        got = await wait_round(r, expected, timeout, deadline=deadline)
        waited[node.node, r] = expected, frozenset(got)
        return got

    node.mailbox.wait_round = spy  # type: ignore[method-assign,assignment]


async def test_oracle_nodes_wait_for_and_average_exactly_the_seeded_in_neighbours() -> None:
    plan = el_plan()
    nodes, records = network(plan)
    waited: dict[tuple[int, int], tuple[frozenset[int], frozenset[int]]] = {}
    for node in nodes:
        spy_on_waits(node, waited)
    await run(nodes)
    for r in range(plan.config.rounds):
        targets = oracle_targets(plan.config.seed, r, 8, 2)
        assert sum(recs[r]["degree"] for recs in records.values()) == 8 * 2
        for i in range(8):
            rec = records[i][r]
            assert rec["round"] == r and rec["targets"] == sorted(targets[i])
            assert rec["degree"] == len(senders_of(targets, i))
            assert waited[i, r] == (frozenset(senders_of(targets, i)),) * 2
    # Rounds 1 and 2 are evaluation rounds (every 2, and the last).
    assert all("test_acc" in recs[1] and "test_acc" in recs[2] for recs in records.values())
    assert all("test_acc" not in recs[0] for recs in records.values())


async def test_one_oracle_round_is_the_uniform_average_with_the_in_neighbours() -> None:
    plan = el_plan("rounds=1", "training.lr=0")
    models = distinct_models(plan)
    before = vectors_of(models)
    nodes, _ = network(plan, models)
    await run(nodes)
    expected = mix(before, oracle_targets(plan.config.seed, 0, 8, 2))
    for i, after in enumerate(vectors_of(models)):
        assert not torch.allclose(after, before[i])
        torch.testing.assert_close(after, expected[i], rtol=0, atol=1e-5)


def delay_sends(transport: Transport, rng: random.Random) -> None:
    """Each message of ``send_all`` leaves after its own random delay (messages to one peer
    stay in order: a node's next send starts only once this one has finished)."""
    send_all = transport.send_all

    async def slow(peers: Iterable[int], msg: Message, *, timeout: float | None = None) -> None:
        async def one(peer: int) -> None:
            await asyncio.sleep(rng.expovariate(100))
            await send_all([peer], msg, timeout=timeout)

        await asyncio.gather(*(one(peer) for peer in peers))

    transport.send_all = slow  # type: ignore[method-assign]


def count_early(node: Node, early: list[Share]) -> None:
    """Collect the shares that reach ``node`` for a round after the one it is in."""
    put = node.mailbox.put

    def spy(msg: Share, nbytes: int, check: Callable[[], None] | None = None) -> None:
        if msg.round > node.mailbox.current_round:
            early.append(msg)
        put(msg, nbytes, check)

    node.mailbox.put = spy  # type: ignore[method-assign]


async def no_training(ctx: RoundContext) -> TrainStats:
    """lr = 0 would leave the model as it is too, but take the time of real steps: without
    them the random delays alone decide which node runs ahead."""
    return TrainStats(loss=0.0, steps=0, samples=0)


async def test_el_local_completes_every_round_under_random_delays_losing_nothing() -> None:
    plan = el_plan("algorithm.variant=local", "rounds=5", "evaluation.every=5")
    models = distinct_models(plan)
    vectors = vectors_of(models)
    nodes, records = network(plan, models)
    rng = random.Random(11)
    early: list[Share] = []
    for node in nodes:
        node.trainer.train = no_training  # type: ignore[method-assign]
        delay_sends(node.transport, rng)
        count_early(node, early)
    await run(nodes)
    # Some nodes ran a round ahead of others: shares waited in the mailbox for their round.
    assert early
    assert all([rec["round"] for rec in recs] == list(range(5)) for recs in records.values())
    for r in range(5):
        targets = [records[i][r]["targets"] for i in range(8)]
        assert all(len(set(row)) == 2 and i not in row for i, row in enumerate(targets))
        # Every model sent was averaged in once: none lost, none counted twice.
        assert sum(records[i][r]["degree"] for i in range(8)) == 8 * 2
        assert [records[i][r]["degree"] for i in range(8)] == [
            len(senders_of(targets, i)) for i in range(8)
        ]
        # Every contact sent a model or a notice: 7 messages in, 7 out per node and round.
        assert all(records[i][r]["msgs_recv"] == 7 for i in range(8))
        vectors = mix(vectors, targets)
    for i, after in enumerate(vectors_of(models)):
        torch.testing.assert_close(after, vectors[i], rtol=0, atol=1e-5)
    # The nodes drew their own targets: not the oracle's graph.
    assert any(
        records[i][r]["targets"] != sorted(oracle_targets(plan.config.seed, r, 8, 2)[i])
        for i in range(8)
        for r in range(5)
    )


async def test_el_local_draws_only_among_the_topology_neighbours() -> None:
    base = {**BASE, "topology": {"kind": "regular", "degree": 3}}
    plan = el_plan("algorithm.variant=local", "rounds=2", base=base)
    nodes, records = network(plan)
    await run(nodes)
    for i, recs in records.items():
        neighbours = set(plan.graph.neighbors(i))
        for rec in recs:
            assert set(rec["targets"]) <= neighbours
            assert rec["msgs_recv"] == 3  # a model or a notice from each neighbour


def test_check_refuses_malformed_notices_strangers_and_oracle_notices() -> None:
    base = {**BASE, "topology": {"kind": "regular", "degree": 3}}
    plan = el_plan("algorithm.variant=local", base=base)
    node = build_network(plan)[1][0]
    algorithm = node.algorithm
    assert isinstance(algorithm, EpidemicLearning)
    friend = min(plan.graph.neighbors(0))
    stranger = min(set(range(1, 8)) - set(plan.graph.neighbors(0)))
    model = Payload({"params": flatten(node.model.parameters())})
    algorithm.check(node, Share(friend, 0, Payload(meta={"skip": True})))
    algorithm.check(node, Share(friend, 0, model))
    bad = [
        (friend, Payload(meta={"skip": 1})),
        (friend, Payload(meta={"skip": True, "x": 1})),
        (friend, Payload(model.tensors, {"skip": True})),
        (friend, Payload({"params": torch.zeros(3)})),
        (stranger, model),
        (stranger, Payload(meta={"skip": True})),
    ]
    for sender, payload in bad:
        with pytest.raises(RemoteProtocolError):
            algorithm.check(node, Share(sender, 0, payload))
    oracle = build_network(el_plan())[1][0]
    with pytest.raises(RemoteProtocolError, match="notice"):
        oracle.algorithm.check(oracle, Share(1, 0, Payload(meta={"skip": True})))


@pytest.mark.parametrize(
    ("overrides", "topology", "field"),
    [
        (["algorithm.s=8"], False, "algorithm.s"),
        ([], True, "topology"),
        (["sharing.kind=choco"], False, "sharing.kind"),
        (["algorithm.variant=local", "topology.kind=dynamic_regular"], True, "topology.kind"),
        (["algorithm.variant=local", "topology.kind=gossip"], True, "topology.kind"),
    ],
)
def test_config_errors_name_the_field(overrides: list[str], topology: bool, field: str) -> None:
    base = {**BASE, "topology": {"kind": "regular", "degree": 3}} if topology else BASE
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(apply_overrides(base, overrides))


def test_el_local_with_fewer_neighbours_than_s_is_refused_naming_algorithm_s() -> None:
    base = {**BASE, "topology": {"kind": "ring"}}  # every node has 2 neighbours
    with pytest.raises(
        ConfigError, match=r"algorithm\.s: 3 targets per round, but a node has only 2"
    ):
        el_plan("algorithm.variant=local", "algorithm.s=3", base=base)


def test_an_oracle_share_from_a_node_that_did_not_draw_this_one_drops_its_sender() -> None:
    plan = el_plan()
    node = build_network(plan)[1][0]
    targets = oracle_targets(plan.config.seed, 0, plan.config.nodes, plan.config.algorithm.s)
    outsider = min(j for j in range(1, plan.config.nodes) if 0 not in targets[j])
    model = Payload({"params": flatten(node.model.parameters())})
    with pytest.raises(RemoteProtocolError, match="not among node 0's senders in round 0"):
        node.algorithm.check(node, Share(outsider, 0, model))
