"""Rosters (what a receiver tells its senders on the peer sampler and gossip): bounded,
validated, never a way for a receiver to single a sender out."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import pytest

import dlactor.node.node as node_module
from dlactor.config import ConfigError
from dlactor.context import Roster
from dlactor.messages import Overlay
from dlactor.node.rosters import RosterBook, roster_message
from dlactor.testing import build_network, build_services, run_nodes
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan


def roster(sender: int, r: int, peers: dict[int, float]) -> Overlay:
    return roster_message(sender, r, {sender: 0.0, **peers})


async def test_a_roster_comes_for_the_current_round_or_one_later_round_per_sender() -> None:
    book = RosterBook(0, nodes=8, max_peers=3)
    book.put(roster(1, 0, {0: 0.25, 2: 0.25}))
    book.put(roster(2, 3, {0: 0.25}))  # ahead by three rounds: a neighbour gone ahead
    with pytest.raises(RemoteProtocolError, match="both ahead"):
        book.put(roster(2, 4, {0: 0.25}))
    with pytest.raises(RemoteProtocolError, match="two rosters"):
        book.put(roster(1, 0, {0: 0.25, 2: 0.25}))
    got, _ = await book.wait(0, frozenset({1}), timeout=1)
    assert got == {1: Roster(frozenset({0, 2}), 0.25)}
    book.put(roster(1, 0, {0: 0.25}))  # late: ignored
    assert await book.wait(1, frozenset(), timeout=1) == ({}, 0.0)  # no neighbours this round
    got, _ = await book.wait(3, frozenset({2}), timeout=1)
    assert got == {2: Roster(frozenset({0}), 0.25)}
    with pytest.raises(TimeoutError, match=re.escape("no roster from node(s) [5]")):
        await book.wait(4, frozenset({5}), timeout=0.01)


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (roster(1, 0, {0: 0.2, 9: 0.2}), "not learning nodes"),
        (roster(1, 0, {0: 0.2, 2: 0.2, 3: 0.2, 4: 0.2}), "more than 3"),
        (roster(1, 0, {2: 0.2}), "does not name this node"),
        (roster(1, 0, {0: 0.0}), "weighs this node 0.0"),
        (Overlay(1, 0, "roster", [2, 0], [1, 1]), "not sorted"),
        (Overlay(1, 0, "roster", [0], []), "not sorted"),
    ],
)
def test_a_malformed_roster_drops_its_connection(msg: Overlay, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=words):
        RosterBook(0, nodes=8, max_peers=3).put(msg)


async def test_a_receiver_that_weighs_its_senders_down_gets_skip_notices_not_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node 0 lies in its rosters (a weight of 5e-324 would make its senders send it ~0 but
    one model): its senders, who weigh it as the symmetric mixing matrix says, send it skip
    notices instead; it keeps its own model every round, and the rest of the run goes on."""
    real = roster_message

    def lying(node: int, r: int, weights: dict[int, float]) -> Overlay:
        if node == 0:
            weights = {p: 5e-324 for p in weights}
        return real(node, r, weights)

    monkeypatch.setattr(node_module, "roster_message", lying)
    plan = small_plan("rounds=3", "topology.kind=peer_sampler", "sharing.kind=secure")
    records: dict[int, list[dict]] = defaultdict(list)
    net, nodes = build_network(plan, on_round=lambda rec: records[rec["node"]].append(rec))
    actors = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await asyncio.wait_for(run_nodes(actors), 60)
    assert all(r["secure_skipped"] for r in records[0])
    others = [r for i in range(1, 8) for r in records[i]]
    assert not any(r["secure_rejected"] for r in others)


def test_a_secure_run_beyond_the_address_books_room_is_refused() -> None:
    with pytest.raises(ConfigError, match="nodes: 40000: the start barrier"):
        small_plan("nodes=40000", "topology.kind=ring", "sharing.kind=secure")
