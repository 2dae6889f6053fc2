"""The peer sampler, on the in-memory transport: one service actor answering every node.

Its graphs must be d-regular, a function of the seed, and consistent (if i is told j, j is
told i); nodes mix with the round's weights, so with learning rate 0 they still reach the
exact average; hostile answers and asks drop the connection, not the node or the sampler.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from functools import partial

import networkx as nx
import pytest
import torch

from dlactor.messages import Message, Overlay
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network, build_services, run_nodes
from dlactor.topology.dynamic import random_regular_at
from dlactor.topology.sampler import ASK, PEERS, PeerSampler, SampledTopology
from dlactor.transport.link import Link
from dlactor.transport.memory import MemoryNetwork
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan

NODES, DEGREE, ROUNDS = 12, 3, 8


def sampler_plan(*overrides: str):  # type: ignore[no-untyped-def]
    return small_plan(
        f"nodes={NODES}",
        "topology.kind=peer_sampler",
        f"topology.degree={DEGREE}",
        f"rounds={ROUNDS}",
        *overrides,
    )


async def neighbour_sets(seed: int) -> dict[int, dict[int, frozenset[int]]]:
    """round -> node -> the neighbours the sampler gave it, through real nodes and a real
    sampler on one memory network."""
    plan = sampler_plan(f"seed={seed}", "training.lr=0")
    got: dict[int, dict[int, frozenset[int]]] = defaultdict(dict)
    recorded: dict[int, list[int]] = {}

    def collect(record: dict) -> None:  # type: ignore[type-arg]
        if "peers" in record:
            recorded[record["node"]] = record["peers"]
        got[record["round"]][record["node"]] = frozenset(recorded[record["node"]])

    net, nodes = build_network(plan, on_round=collect)
    (sampler,) = build_services(plan, net)
    for actor in [*nodes, sampler]:
        await actor.start()
    await run_nodes([*nodes, sampler])
    assert isinstance(sampler, PeerSampler) and sampler.answers == NODES * ROUNDS
    return got


async def test_every_round_is_the_seeded_d_regular_graph_and_both_ends_agree() -> None:
    got = await neighbour_sets(seed=5)
    assert sorted(got) == list(range(ROUNDS))
    graphs = []
    for r, sets in got.items():
        expected = random_regular_at(NODES, DEGREE, 5, r)
        assert sets == {i: frozenset(expected[i]) for i in range(NODES)}, f"round {r}"
        for i, peers in sets.items():
            assert len(peers) == DEGREE and i not in peers
            assert all(i in sets[j] for j in peers), f"round {r}: {i} lists {peers}"
        graphs.append(frozenset(frozenset(e) for e in expected.edges))
    assert len(set(graphs)) == ROUNDS  # a fresh graph every round


async def test_the_same_seed_gives_the_same_graphs_and_another_seed_others() -> None:
    a, b, c = await neighbour_sets(5), await neighbour_sets(5), await neighbour_sets(6)
    assert a == b
    assert a != c


async def test_gossip_averaging_over_sampled_graphs_reaches_the_exact_average() -> None:
    plan = sampler_plan("training.lr=0", "rounds=30")
    models = [plan.config.model.build(plan.dataset, seed=50 + i) for i in range(NODES)]
    x0 = torch.stack([flatten(m.parameters()).double() for m in models])
    net, nodes = build_network(plan, models=models)
    actors = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await run_nodes(actors)
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-6)  # weights doubly stochastic
    spread0 = (x0 - x0.mean(0)).norm(dim=1).max().item()
    assert (x - x.mean(0)).norm(dim=1).max().item() < 1e-4 * spread0


async def test_a_node_asks_one_round_ahead() -> None:
    net = MemoryNetwork()
    asked: list[int] = []

    def sampler_deliver(msg: Message, nbytes: int) -> None:
        assert isinstance(msg, Overlay)
        asked.append(msg.round)
        graph = random_regular_at(4, 2, 0, msg.round)
        reply = Overlay(4, msg.round, PEERS, sorted(graph[0]), [2, 2])
        asyncio.get_running_loop().create_task(sampler.send(0, reply))

    sampler = net.transport(4, sampler_deliver)
    topo = SampledTopology(node=0, nodes=4, sampler=4, rounds=5, timeout=5)
    transport = net.transport(0, lambda msg, nbytes: topo.on_overlay(msg))  # type: ignore[arg-type]
    link = Link(0, transport)
    link.ready.set()
    topo.attach(link)
    for t in (sampler, transport):
        await t.start()
    first = sorted(random_regular_at(4, 2, 0, 0)[0])
    assert await topo.neighbors(0, 0) == frozenset(first)
    await asyncio.sleep(0.01)
    assert asked == [0, 1]  # round 1 asked as soon as round 0 was answered
    assert await topo.weights(0, 0) == pytest.approx({0: 1 / 3, **dict.fromkeys(first, 1 / 3)})
    await topo.aclose()
    for t in (sampler, transport):
        await t.stop()


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (Overlay(4, 0, PEERS, [0, 1], [2, 2]), "outside the run"),  # names the node itself
        (Overlay(4, 0, PEERS, [1, 9], [2, 2]), "outside the run"),
        (Overlay(4, 0, PEERS, [1, 1], [2, 2]), "repeats"),
        (Overlay(4, 0, PEERS, [1, 2], [2]), "misses degrees"),
        (Overlay(4, 0, PEERS, [1, 2], [0, 2]), "impossible degrees"),
        (Overlay(4, 3, PEERS, [1, 2], [2, 2]), "not asked"),
        (Overlay(2, 0, PEERS, [1, 3], [2, 2]), "only the sampler"),
        (Overlay(4, 0, "pick", [], []), "only the sampler"),
    ],
)
async def test_a_bad_answer_is_the_senders_protocol_error(msg: Overlay, why: str) -> None:
    topo = SampledTopology(node=0, nodes=4, sampler=4, rounds=5, timeout=5)

    class Link:
        node = 0

        def spawn(self, peer: int, msg: Overlay) -> None:
            pass

        async def send(self, peer: int, msg: Overlay) -> None:
            pass

    topo.attach(Link())
    topo._ask(0)
    with pytest.raises(RemoteProtocolError, match=why):
        topo.on_overlay(msg)
    await topo.aclose()


@pytest.mark.parametrize(
    "msg",
    [
        Overlay(0, 0, "peers", [], []),  # not an ask
        Overlay(0, 0, ASK, [1], []),  # an ask carries nothing
        Overlay(0, 99, ASK),  # a round past the run
        Overlay(7, 0, ASK),  # not a node (the sampler is 4; nodes are 0..3)
    ],
)
async def test_the_sampler_drops_what_is_not_an_ask_of_this_run(msg: Overlay) -> None:
    net = MemoryNetwork()
    sampler = PeerSampler(
        node=4, nodes=4, degree=2, seed=0, rounds=5, transport=partial(net.transport, 4)
    )
    with pytest.raises(RemoteProtocolError):
        sampler.deliver(msg, 40)
    sampler.deliver(Overlay(0, 0, ASK), 40)  # a good one still works
    with pytest.raises(RemoteProtocolError, match="twice"):
        sampler.deliver(Overlay(0, 0, ASK), 40)
    await sampler.stop()


def test_the_config_checks_the_degree_against_the_nodes() -> None:
    from dlactor.config import ConfigError

    with pytest.raises(ConfigError, match="topology"):
        small_plan("nodes=5", "topology.kind=peer_sampler", "topology.degree=3")  # 15 odd
    plan = sampler_plan()
    assert plan.processes == NODES + 1 and plan.services == 1
    assert plan.role(NODES) == f"peer_sampler service (process {NODES})"
    assert nx.is_regular(plan.graph) and plan.graph.degree[0] == DEGREE
