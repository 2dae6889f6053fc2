"""Gossip peer sampling (Cyclon) and the edges agreed from its views, on the in-memory
transport: no sampler, no central node.

The services run alone here (no learning), driven round by round like nodes would, with
random delays so that picks, answers and shuffles interleave in many orders.
"""

from __future__ import annotations

import asyncio
import random

import networkx as nx
import numpy as np
import pytest
import torch

from dlactor.messages import Overlay
from dlactor.sharing.ops import flatten
from dlactor.testing import run_in_memory
from dlactor.topology.gossip import (
    PICK,
    SHUFFLE,
    CyclonView,
    GossipTopology,
    bootstrap_contacts,
)
from dlactor.transport.link import Link
from dlactor.transport.memory import MemoryNetwork, MemoryTransport
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan


class Swarm:
    """Gossip topologies on one memory network, each with its own transport and link."""

    def __init__(self, capacity: int, *, degree: int = 4, view: int = 8, shuffle: int = 4) -> None:
        self.net = MemoryNetwork()
        self.capacity, self.degree, self.view, self.shuffle = capacity, degree, view, shuffle
        self.topos: dict[int, GossipTopology] = {}
        self.transports: dict[int, MemoryTransport] = {}

    async def add(self, node: int, contacts: list[int], rounds: int = 1000) -> None:
        topo = GossipTopology(
            node=node, nodes=self.capacity, degree=self.degree, view_size=self.view,
            shuffle_length=self.shuffle, seed=11, rounds=rounds, contacts=contacts, timeout=10,
            answer_timeout=2.0,
        )  # fmt: skip
        transport = self.net.transport(node, lambda msg, nbytes: topo.on_overlay(msg))  # type: ignore[arg-type]
        link = Link(node, transport)
        link.ready.set()  # no address book to wait for on the memory network
        topo.attach(link)
        await transport.start()
        self.topos[node], self.transports[node] = topo, transport

    async def kill(self, node: int) -> None:
        await self.topos.pop(node).aclose()
        await self.transports.pop(node).stop()

    async def round(self, r: int, jitter: random.Random | None = None) -> dict[int, frozenset[int]]:
        async def one(node: int, topo: GossipTopology) -> frozenset[int]:
            if jitter is not None:
                await asyncio.sleep(jitter.random() * 0.002)
            return await topo.neighbors(node, r)

        items = list(self.topos.items())
        sets = await asyncio.gather(*(one(n, t) for n, t in items))
        await asyncio.sleep(0.002)  # the round's shuffle answers arrive
        return dict(zip([n for n, _ in items], sets, strict=True))

    def view_graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.topos)
        for node, topo in self.topos.items():
            g.add_edges_from((node, peer) for peer in topo.view.nodes)
        return g

    async def close(self) -> None:
        for node in list(self.topos):
            await self.kill(node)


def assert_consistent(sets: dict[int, frozenset[int]], degree: int) -> None:
    for i, peers in sets.items():
        assert i not in peers and len(peers) <= degree
        for j in peers:
            assert i in sets[j], f"{i} lists {j} but {j} lists {sorted(sets[j])}"


async def test_every_round_both_ends_agree_and_degrees_stay_within_the_bound() -> None:
    swarm = Swarm(24)
    for i in range(24):
        await swarm.add(i, bootstrap_contacts(i, 24, 8))
    jitter = random.Random(3)
    degrees = []
    for r in range(40):
        sets = await swarm.round(r, jitter)
        assert_consistent(sets, swarm.degree)
        degrees += [len(p) for p in sets.values()]
    assert np.mean(degrees) >= 0.9 * swarm.degree  # nearly every slot filled
    await swarm.close()


async def test_views_fill_stay_connected_and_mix_beyond_the_bootstrap_ring() -> None:
    n = 32
    swarm = Swarm(n)
    for i in range(n):
        await swarm.add(i, bootstrap_contacts(i, n, 2))  # each starts knowing 2 nodes
    met: dict[int, set[int]] = {i: set() for i in range(n)}
    forgotten: set[int] = set()
    for r in range(60):
        for i, peers in (await swarm.round(r)).items():
            met[i] |= peers
        views = swarm.view_graph()
        assert nx.is_weakly_connected(views), f"round {r}"
        # Cyclon moves a node's last pointer when a node shuffles with it, and the node puts
        # a fresh one back with its own next shuffle: nobody is forgotten two rounds running
        now = {node for node, indegree in views.in_degree() if indegree == 0}
        assert not now & forgotten, f"round {r}: {now & forgotten} in no view since {r - 1}"
        forgotten = now
    assert all(len(t.view) == swarm.view for t in swarm.topos.values())  # views filled
    # a ring with 2 contacts each could only ever pair a node with its 2 ring neighbours
    assert min(len(m) for m in met.values()) >= 10
    await swarm.close()


async def test_dead_nodes_leave_the_views_and_live_ones_stay() -> None:
    n = 20
    swarm = Swarm(n)
    for i in range(n):
        await swarm.add(i, bootstrap_contacts(i, n, 8))
    for r in range(10):
        await swarm.round(r)
    dead = {3, 7, 11, 15}
    for node in dead:
        await swarm.kill(node)
    await swarm.round(10)  # its edges were agreed before the deaths: some lead nowhere
    for r in range(11, 60):
        sets = await swarm.round(r)
        assert not dead & set().union(*sets.values()), f"round {r}"
        assert_consistent(sets, swarm.degree)
    for node, topo in swarm.topos.items():
        assert not dead & set(topo.view.nodes), (
            f"node {node} still lists {dead & set(topo.view.nodes)}"
        )
        assert len(topo.view) >= swarm.view - 1
    assert nx.is_strongly_connected(swarm.view_graph())
    await swarm.close()


async def test_a_node_that_joins_late_with_one_contact_is_found() -> None:
    n = 16
    swarm = Swarm(n + 1)
    for i in range(n):
        await swarm.add(i, bootstrap_contacts(i, n, 8))
    for r in range(15):
        await swarm.round(r)
    await swarm.add(n, [5])  # knows one node; nobody knows it
    knows_newcomer = []
    picked = False
    for r in range(15, 45):
        sets = await swarm.round(r)
        assert_consistent(sets, swarm.degree)
        picked |= bool(sets[n])
        knows_newcomer.append(sum(n in t.view for i, t in swarm.topos.items() if i != n))
    assert len(swarm.topos[n].view) == swarm.view  # its view filled
    # it spread through the others' views (a node is in about view-size views on average;
    # the count moves by a few each round as shuffles carry entries around)
    assert np.mean(knows_newcomer[-10:]) >= 3 and min(knows_newcomer[-10:]) >= 1
    assert picked
    await swarm.close()


async def test_gossip_averaging_over_the_agreed_graphs_reaches_the_exact_average() -> None:
    plan = small_plan("nodes=12", "topology.kind=gossip", "topology.degree=3",
                      "topology.view_size=6", "topology.shuffle_length=3",
                      "training.lr=0", "rounds=40")  # fmt: skip
    models = [plan.config.model.build(plan.dataset, seed=70 + i) for i in range(12)]
    x0 = torch.stack([flatten(m.parameters()).double() for m in models])
    records = await run_in_memory(plan, models=models)
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-6)
    spread0 = (x0 - x0.mean(0)).norm(dim=1).max().item()
    assert (x - x.mean(0)).norm(dim=1).max().item() < 1e-3 * spread0
    # the topology's own messages are counted (in the rounds node 0 sent any: which rounds
    # those are depends on timing, as gossip's edges do) and are part of what it sent (over
    # the run: a reply sent from a message handler can fall in the round after the one whose
    # record counted it)
    talked = [r for r in records[0] if r["overlay_msgs_sent"] > 0]
    assert len(talked) >= 10 and all(r["overlay_bytes_sent"] > 0 for r in talked)
    sent = sum(r["bytes_sent"] for r in records[0])
    assert sent >= sum(r["overlay_bytes_sent"] for r in records[0]) > 0


def test_cyclon_shuffle_sends_the_oldest_away_with_a_fresh_self_entry() -> None:
    view = CyclonView(0, 4, 3, np.random.default_rng(0), [1, 2, 3, 4])
    view.ages = {1: 5, 2: 1, 3: 9, 4: 0}
    partner, nodes, ages = view.start_shuffle()  # type: ignore[misc]
    assert partner == 3 and 3 not in view  # the oldest, taken out
    assert nodes[0] == 0 and ages[0] == 0 and len(nodes) == 3
    assert all(view.ages[n] == a for n, a in zip(nodes[1:], ages[1:], strict=True))
    assert view.ages == {1: 6, 2: 2, 4: 1}  # everyone aged by one
    # merge: own entry skipped, known ones keep the younger age, empty slot filled first,
    # then entries sent away are replaced
    view.merge([0, 1, 7, 8], [0, 2, 3, 4], sent=nodes[1:])
    assert 0 not in view and view.ages[1] == 2 and 7 in view and 8 in view
    assert len(view) == 4


def test_cyclon_answer_sends_its_own_entries_and_merges_the_shuffle() -> None:
    view = CyclonView(5, 3, 2, np.random.default_rng(1), [1, 2, 3])
    back, ages = view.answer([9, 4], [0, 3])
    assert len(back) == 2 and set(back) <= {1, 2, 3} and len(ages) == 2
    assert 9 in view and 4 in view and len(view) == 3  # replaced what it sent


async def test_a_pick_that_arrives_before_the_address_book_is_answered_after_it() -> None:
    """Over TCP a peer's pick can come in before this process has read its Start (and so
    before it can reach anyone): the answer waits for the addresses instead of being lost."""
    net = MemoryNetwork()
    got: list[Overlay] = []
    picker = net.transport(0, lambda msg, nbytes: got.append(msg))  # type: ignore[arg-type,func-returns-value]
    topo = GossipTopology(node=1, nodes=4, degree=2, view_size=3, shuffle_length=2, seed=0,
                          rounds=5, contacts=[0, 2], timeout=5)  # fmt: skip
    picked = net.transport(1, lambda msg, nbytes: topo.on_overlay(msg))  # type: ignore[arg-type]
    link = Link(1, picked)
    topo.attach(link)
    for t in (picker, picked):
        await t.start()
    await picker.send(1, Overlay(0, 0, PICK))
    await asyncio.sleep(0.01)
    assert got == []  # not connected yet: the accept waits
    link.ready.set()
    await asyncio.sleep(0.01)
    assert [(m.op, m.round) for m in got] == [("accept", 0)]
    with pytest.raises(RemoteProtocolError, match="twice"):
        topo.on_overlay(Overlay(0, 0, PICK))
    await topo.aclose()
    for t in (picker, picked):
        await t.stop()


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (Overlay(1, 0, "ask"), "gossip topology"),
        (Overlay(40, 0, PICK), "not a peer"),
        (Overlay(1, 0, PICK, [2], []), "should not"),
        (Overlay(1, 0, SHUFFLE, [2, 3], [1]), "ages"),
        (Overlay(1, 0, SHUFFLE, [2, 3, 4, 5, 6], [0, 0, 0, 0, 0]), "at most"),
        (Overlay(1, 0, SHUFFLE, [2, 2], [0, 0]), "unknown"),
        (Overlay(1, 0, SHUFFLE, [99], [0]), "unknown"),
    ],
)
def test_bad_gossip_is_the_senders_protocol_error(msg: Overlay, why: str) -> None:
    topo = GossipTopology(node=0, nodes=8, degree=2, view_size=4, shuffle_length=4, seed=0,
                          rounds=3, contacts=[1, 2], timeout=1)  # fmt: skip
    with pytest.raises(RemoteProtocolError, match=why):
        topo.on_overlay(msg)


def test_settings_are_checked() -> None:
    from dlactor.config import ConfigError

    with pytest.raises(ConfigError, match="shuffle_length"):
        small_plan("topology.kind=gossip", "topology.view_size=4", "topology.shuffle_length=5")
    with pytest.raises(ConfigError, match="topology"):
        small_plan("nodes=4", "topology.kind=gossip", "topology.degree=4")
    plan = small_plan(
        "nodes=10", "topology.kind=gossip", "topology.view_size=4", "topology.shuffle_length=2"
    )
    assert plan.services == 0
    assert sorted(plan.graph[0]) == [1, 2, 8, 9]  # the bootstrap views
