"""Seeded graph builders: degrees, connectivity, determinism, and clear refusals."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import pytest

from dlactor.topology.graphs import (
    complete,
    erdos_renyi,
    regular,
    require_connected,
    ring,
    small_world,
)


def degrees(graph: nx.Graph) -> set[int]:
    return {degree for _, degree in graph.degree}


def edge_set(graph: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in graph.edges}


def test_ring_links_each_node_to_its_two_cyclic_neighbours() -> None:
    graph = ring(6)

    assert sorted(graph.nodes) == list(range(6))
    assert edge_set(graph) == {(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5)}
    assert degrees(graph) == {2}


@pytest.mark.parametrize(("n", "edges"), [(1, 0), (2, 1)])
def test_tiny_rings_are_paths_without_self_loops(n: int, edges: int) -> None:
    graph = ring(n)

    assert graph.number_of_nodes() == n
    assert graph.number_of_edges() == edges
    assert nx.number_of_selfloops(graph) == 0


def test_complete_graph_links_every_pair() -> None:
    graph = complete(7)

    assert graph.number_of_edges() == 7 * 6 // 2
    assert degrees(graph) == {6}


@pytest.mark.parametrize(("n", "degree"), [(16, 5), (256, 5), (10, 9), (3, 2), (2, 1)])
def test_regular_graph_has_the_requested_degree_everywhere_and_is_connected(
    n: int, degree: int
) -> None:
    graph = regular(n, degree, seed=3)

    assert sorted(graph.nodes) == list(range(n))
    assert degrees(graph) == {degree}
    assert nx.is_connected(graph)


def test_regular_graph_is_a_function_of_its_seed() -> None:
    assert edge_set(regular(32, 4, seed=7)) == edge_set(regular(32, 4, seed=7))
    assert edge_set(regular(32, 4, seed=7)) != edge_set(regular(32, 4, seed=8))


def test_regular_graph_with_degree_two_is_retried_until_connected() -> None:
    # A random 2-regular graph is a union of cycles: the first draw for seed 3 is split.
    assert not nx.is_connected(nx.random_regular_graph(2, 40, seed=3))

    graph = regular(40, 2, seed=3)

    assert nx.is_connected(graph)
    assert degrees(graph) == {2}


def test_regular_refuses_an_odd_degree_sum_and_says_why() -> None:
    with pytest.raises(ValueError, match="odd"):
        regular(5, 3, seed=0)


@pytest.mark.parametrize(("n", "degree"), [(5, 5), (6, 7), (6, -2)])
def test_regular_refuses_a_degree_out_of_range(n: int, degree: int) -> None:
    with pytest.raises(ValueError, match="degree must be in"):
        regular(n, degree, seed=0)


def test_regular_refuses_a_degree_that_can_never_be_connected() -> None:
    with pytest.raises(ValueError, match="never connected"):
        regular(6, 1, seed=0)


def test_small_world_is_connected_with_the_lattice_edge_count() -> None:
    graph = small_world(30, 4, 0.3, seed=1)

    assert nx.is_connected(graph)
    assert graph.number_of_edges() == 30 * 4 // 2
    assert sorted(graph.nodes) == list(range(30))


def test_small_world_without_rewiring_is_the_ring_lattice() -> None:
    graph = small_world(10, 4, 0.0, seed=1)

    assert degrees(graph) == {4}
    assert graph.has_edge(0, 2)
    assert not graph.has_edge(0, 3)


def test_small_world_is_a_function_of_its_seed() -> None:
    assert edge_set(small_world(40, 4, 0.5, seed=2)) == edge_set(small_world(40, 4, 0.5, seed=2))
    assert edge_set(small_world(40, 4, 0.5, seed=2)) != edge_set(small_world(40, 4, 0.5, seed=3))


@pytest.mark.parametrize("k", [3, 0, 10])
def test_small_world_refuses_an_odd_or_out_of_range_k(k: int) -> None:
    with pytest.raises(ValueError, match="k must be even"):
        small_world(10, k, 0.1, seed=0)


def test_erdos_renyi_is_connected_and_a_function_of_its_seed() -> None:
    first = erdos_renyi(50, 0.15, seed=4)

    assert nx.is_connected(first)
    assert sorted(first.nodes) == list(range(50))
    assert edge_set(first) == edge_set(erdos_renyi(50, 0.15, seed=4))
    assert edge_set(first) != edge_set(erdos_renyi(50, 0.15, seed=5))


def test_erdos_renyi_with_a_tiny_p_gives_up_saying_p_is_too_small() -> None:
    with pytest.raises(ValueError, match=r"p=0\.001 is too small"):
        erdos_renyi(100, 0.001, seed=0)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_erdos_renyi_refuses_a_p_that_is_not_a_probability(p: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        erdos_renyi(10, p, seed=0)


@pytest.mark.parametrize("build", [ring, complete])
def test_builders_refuse_zero_nodes(build: Callable[[int], nx.Graph]) -> None:
    with pytest.raises(ValueError, match="number of nodes"):
        build(0)


def test_require_connected_names_the_components_of_a_split_graph() -> None:
    graph = nx.Graph([(0, 1), (2, 3), (3, 4)])

    with pytest.raises(ValueError, match=r"not connected: 2 components.*\[0, 1\]"):
        require_connected(graph)


def test_require_connected_refuses_self_loops_and_empty_graphs() -> None:
    with pytest.raises(ValueError, match="self loops"):
        require_connected(nx.Graph([(0, 1), (1, 1)]))
    with pytest.raises(ValueError, match="no nodes"):
        require_connected(nx.Graph())


def test_require_connected_accepts_a_connected_graph() -> None:
    require_connected(nx.path_graph(4))
