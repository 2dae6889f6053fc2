"""The dynamic random-regular topology: a new graph every round that every node agrees on."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from dlactor.topology.dynamic import RandomRegularDynamic, random_regular_at
from dlactor.topology.mixing import metropolis_hastings, mixing_matrix

N, DEGREE, SEED = 16, 4, 7


async def neighbour_lists(topology: RandomRegularDynamic, round: int) -> list[frozenset[int]]:
    return [await topology.neighbors(i, round) for i in range(N)]


async def test_every_round_is_a_symmetric_regular_graph_that_nodes_draw_alike() -> None:
    one = RandomRegularDynamic(nodes=N, degree=DEGREE, seed=SEED)
    for r in range(20):
        per_node = [
            await RandomRegularDynamic(nodes=N, degree=DEGREE, seed=SEED).neighbors(i, r)
            for i in range(N)
        ]  # each node has its own instance, as in a run

        assert per_node == await neighbour_lists(one, r)
        for i, peers in enumerate(per_node):
            assert len(peers) == DEGREE and i not in peers
            assert all(i in per_node[j] for j in peers), f"round {r}: not symmetric at {i}"


async def test_the_graph_changes_from_round_to_round_and_with_the_seed() -> None:
    topology = RandomRegularDynamic(nodes=N, degree=DEGREE, seed=SEED)
    rounds = [await neighbour_lists(topology, r) for r in range(10)]
    other_seed = await neighbour_lists(RandomRegularDynamic(nodes=N, degree=DEGREE, seed=8), 0)

    assert len({tuple(tuple(sorted(peers)) for peers in graph) for graph in rounds}) == 10
    assert other_seed != rounds[0]


async def test_weights_are_the_round_graphs_metropolis_hastings_row() -> None:
    topology = RandomRegularDynamic(nodes=N, degree=DEGREE, seed=SEED)
    for r in (0, 1, 5):
        expected = metropolis_hastings(random_regular_at(N, DEGREE, SEED, r))
        for i in range(N):
            row = await topology.weights(i, r)
            assert row == pytest.approx(expected[i])
            assert sum(row.values()) == pytest.approx(1.0)


def test_every_rounds_mixing_matrix_is_doubly_stochastic() -> None:
    for r in range(5):
        W = mixing_matrix(random_regular_at(N, DEGREE, SEED, r))
        assert np.allclose(W.sum(axis=0), 1) and np.allclose(W.sum(axis=1), 1)
        assert np.allclose(W, W.T)


def test_random_regular_at_is_a_pure_function_of_seed_and_round() -> None:
    a, b = random_regular_at(N, DEGREE, SEED, 3), random_regular_at(N, DEGREE, SEED, 3)
    assert nx.utils.edges_equal(a.edges, b.edges)


@pytest.mark.parametrize(
    ("nodes", "degree", "message"),
    [(5, 3, "odd"), (4, 4, r"degree must be in \[1, n\)"), (4, 0, "degree"), (1, 0, "nodes")],
)
def test_impossible_graphs_are_refused_when_built(nodes: int, degree: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomRegularDynamic(nodes=nodes, degree=degree, seed=0)


async def test_a_node_outside_the_run_is_an_error() -> None:
    with pytest.raises(ValueError, match="node 16 is not one of the 16 nodes"):
        await RandomRegularDynamic(nodes=N, degree=DEGREE, seed=SEED).neighbors(16, 0)
