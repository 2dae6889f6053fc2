"""Metropolis-Hastings mixing weights and the spectral gap."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from dlactor.topology.graphs import complete, erdos_renyi, regular, ring, small_world
from dlactor.topology.mixing import (
    metropolis_hastings,
    metropolis_hastings_row,
    mixing_matrix,
    spectral_gap,
)

GRAPHS = {
    "ring": ring(9),
    "regular": regular(16, 5, seed=0),
    "complete": complete(6),
    "small_world": small_world(20, 4, 0.3, seed=0),
    "erdos_renyi": erdos_renyi(25, 0.2, seed=0),
    "star": nx.star_graph(5),
    "path": nx.path_graph(7),
}


def test_star_graph_weights_match_the_hand_computed_formula() -> None:
    # Hub 0 has degree 3; leaves 1, 2, 3 have degree 1: w_0j = 1 / (1 + max(3, 1)) = 1/4.
    weights = metropolis_hastings(nx.star_graph(3))

    assert weights[0] == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25})
    for leaf in (1, 2, 3):
        assert weights[leaf] == pytest.approx({0: 0.25, leaf: 0.75})


def test_path_weights_match_the_hand_computed_formula() -> None:
    # Degrees 1-2-2-1: w_01 = 1/3, w_12 = 1/3, w_00 = 2/3, w_11 = 1/3.
    W = mixing_matrix(nx.path_graph(4))

    third = 1 / 3
    expected = [
        [2 * third, third, 0, 0],
        [third, third, third, 0],
        [0, third, third, third],
        [0, 0, third, 2 * third],
    ]
    np.testing.assert_allclose(W, expected)


def test_row_is_computed_from_own_and_neighbour_degrees_only() -> None:
    row = metropolis_hastings_row(4, {4: 2, 7: 5, 1: 1})

    assert row == pytest.approx({1: 1 / 3, 4: 1 - 1 / 3 - 1 / 6, 7: 1 / 6})
    assert list(row) == [1, 4, 7]


def test_row_with_fewer_neighbours_than_the_degree_keeps_the_rest_on_itself() -> None:
    row = metropolis_hastings_row(0, {0: 3, 1: 3})

    assert row == pytest.approx({0: 0.75, 1: 0.25})


def test_row_of_an_isolated_node_keeps_everything() -> None:
    assert metropolis_hastings_row(0, {0: 0}) == {0: 1.0}


@pytest.mark.parametrize(
    ("degrees", "match"),
    [({1: 1}, "include the node itself"), ({0: 1, 1: 1, 2: 1}, "degree 1 but 2 neighbours")],
)
def test_row_refuses_inconsistent_degrees(degrees: dict[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metropolis_hastings_row(0, degrees)


def test_weights_cover_exactly_the_closed_neighbourhood() -> None:
    graph = GRAPHS["regular"]

    weights = metropolis_hastings(graph)

    assert set(weights) == set(graph.nodes)
    for node, row in weights.items():
        assert set(row) == set(graph[node]) | {node}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_mixing_matrix_is_symmetric_doubly_stochastic_and_non_negative(name: str) -> None:
    graph = GRAPHS[name]
    W = mixing_matrix(graph)

    n = graph.number_of_nodes()
    assert W.shape == (n, n)
    np.testing.assert_allclose(W.sum(axis=1), np.ones(n))
    np.testing.assert_allclose(W.sum(axis=0), np.ones(n))
    np.testing.assert_allclose(W, W.T)
    assert (W >= 0).all()
    assert (np.diag(W) > 0).all()
    assert ((W > 0) == (nx.to_numpy_array(graph, nodelist=range(n)) + np.eye(n) > 0)).all()


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_spectral_gap_is_positive_on_connected_graphs(name: str) -> None:
    gap = spectral_gap(mixing_matrix(GRAPHS[name]))

    assert 0 < gap <= 1


def test_spectral_gap_orders_ring_below_regular_below_complete() -> None:
    ring_gap = spectral_gap(mixing_matrix(ring(16)))
    regular_gap = spectral_gap(mixing_matrix(regular(16, 5, seed=0)))
    complete_gap = spectral_gap(mixing_matrix(complete(16)))

    assert ring_gap < regular_gap < complete_gap
    assert complete_gap == pytest.approx(1.0)


def test_spectral_gap_is_zero_for_a_disconnected_graph() -> None:
    W = mixing_matrix(nx.Graph([(0, 1), (2, 3)]))

    assert spectral_gap(W) == pytest.approx(0.0, abs=1e-12)


def test_spectral_gap_of_a_single_node_is_one() -> None:
    assert spectral_gap(np.ones((1, 1))) == 1.0


def test_spectral_gap_refuses_a_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        spectral_gap(np.ones((2, 3)))


def test_mixing_matrix_refuses_nodes_that_are_not_0_to_n_minus_1() -> None:
    with pytest.raises(ValueError, match=r"0\.\.n-1"):
        mixing_matrix(nx.Graph([(1, 2)]))
