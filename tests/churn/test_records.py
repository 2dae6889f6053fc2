"""What a churned run's records say about its topology, and the peer sampler's graphs after
a loss."""

from __future__ import annotations

from typing import Any

from dlactor.metrics.topology import round_topologies
from dlactor.topology.sampler import CACHED_ROUNDS, PeerSampler
from dlactor.transport.memory import MemoryNetwork


def test_offline_and_lost_nodes_have_no_edges_in_the_rounds_they_are_away() -> None:
    def rec(node: int, r: int, **extra: Any) -> dict[str, Any]:
        return {"node": node, "round": r, **extra}

    records = {  # a triangle; node 2 offline in round 1, node 1 lost after round 1
        0: [rec(0, 0, peers=[1, 2], weights=[0.3, 0.3]), rec(0, 1), rec(0, 2)],
        1: [rec(1, 0, peers=[0, 2], weights=[0.3, 0.3]), rec(1, 1)],
        2: [rec(2, 0, peers=[0, 1], weights=[0.3, 0.3]), rec(2, 1, online=False), rec(2, 2)],
    }
    rounds = {topo.round: topo.edges() for topo, _ in round_topologies(records, 3)}
    assert rounds == {0: [(0, 1), (0, 2), (1, 2)], 1: [(0, 1)], 2: [(0, 2)]}


def test_the_sampler_draws_a_round_again_as_it_first_drew_it_after_a_loss() -> None:
    net = MemoryNetwork()
    sampler = PeerSampler(
        node=16, nodes=16, degree=3, seed=5, rounds=40, transport=lambda d: net.transport(16, d)
    )
    first = sampler._graph(2)
    sampler.lose(7, 3)
    for r in range(3, 3 + CACHED_ROUNDS + 1):  # round 2 leaves the cache
        assert sampler._graph(r)[7] == [] and all(7 not in p for p in sampler._graph(r).values())
    assert sampler._graph(2) == first  # drawn again: the graph handed out before the loss
