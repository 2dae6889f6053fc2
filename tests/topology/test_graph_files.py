"""Graph files in decentralizepy's two formats: reading, writing, and errors naming the line."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest

from dlactor.topology.graphs import (
    GraphFileError,
    read_adjacency_list,
    read_edge_list,
    read_graph_file,
    regular,
    ring,
    write_edge_list,
)

# As decentralizepy writes them (Graph.write_graph_to_file): the node count, then each edge in
# both directions. This is the 4-node ring 0-1-2-3-0.
DECENTRALIZEPY_EDGES = "4\n0 1\n0 3\n1 0\n1 2\n2 1\n2 3\n3 0\n3 2\n"
# The same ring as an adjacency file: the node count, then line k lists node k's neighbours.
DECENTRALIZEPY_ADJACENCY = "4\n1 3\n0 2\n1 3\n0 2\n"
RING4 = {(0, 1), (1, 2), (2, 3), (0, 3)}


def write(tmp_path: Path, text: str, name: str = "graph.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def edge_set(graph: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in graph.edges}


# --------------------------------------------------------------------------- reading


def test_edge_list_as_decentralizepy_writes_it_is_read(tmp_path: Path) -> None:
    graph = read_edge_list(write(tmp_path, DECENTRALIZEPY_EDGES))

    assert sorted(graph.nodes) == [0, 1, 2, 3]
    assert edge_set(graph) == RING4


def test_edge_list_with_each_edge_once_is_the_same_graph(tmp_path: Path) -> None:
    graph = read_edge_list(write(tmp_path, "4\n0 1\n1 2\n2 3\n3 0\n"))

    assert edge_set(graph) == RING4


def test_adjacency_list_as_decentralizepy_reads_it_is_read(tmp_path: Path) -> None:
    graph = read_adjacency_list(write(tmp_path, DECENTRALIZEPY_ADJACENCY))

    assert sorted(graph.nodes) == [0, 1, 2, 3]
    assert edge_set(graph) == RING4


def test_blank_lines_and_comments_are_ignored_in_both_formats(tmp_path: Path) -> None:
    edges = "# a ring\n\n4  # nodes\n0 1\n\n1 2 # edge\n2 3\n3 0\n\n"
    adjacency = "# a ring\n4\n# node 0\n1 3\n\n0 2\n1 3   # node 2\n0 2\n\n"

    assert edge_set(read_edge_list(write(tmp_path, edges, "e"))) == RING4
    assert edge_set(read_adjacency_list(write(tmp_path, adjacency, "a"))) == RING4


def test_windows_line_endings_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.edges"
    path.write_bytes(DECENTRALIZEPY_EDGES.replace("\n", "\r\n").encode())

    assert edge_set(read_edge_list(path)) == RING4


def test_a_single_node_file_is_a_one_node_graph(tmp_path: Path) -> None:
    graph = read_edge_list(write(tmp_path, "1\n"))

    assert list(graph.nodes) == [0]


def test_a_disconnected_graph_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not connected"):
        read_edge_list(write(tmp_path, "4\n0 1\n2 3\n"))


# --------------------------------------------------------------------------- format errors


Reader = Callable[[Path, int | None], nx.Graph]


def error_for(reader: Reader, path: Path, n: int | None = None) -> GraphFileError:
    with pytest.raises(GraphFileError) as caught:
        reader(path, n)
    return caught.value


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("", 1, "number of nodes"),
        ("# only a comment\n", 1, "number of nodes"),
        ("four\n0 1\n", 1, "number of nodes"),
        ("4 4\n0 1\n", 1, "only the number of nodes"),
        ("0\n", 1, ">= 1"),
        ("3\n0 1\n1 x\n", 3, "integer node id"),
        ("3\n0 1\n1 2.0\n", 3, "integer node id"),
        ("3\n0 1\n\n1 2 0\n", 4, "edge 'u v'"),
        ("3\n0 1\n1\n", 3, "edge 'u v'"),
        ("3\n0 1\n1 3\n", 3, "out of range: expected 0..2"),
        ("3\n0 1\n-1 2\n", 3, "out of range"),
        ("3\n0 1\n2 2\n1 2\n", 3, "self loop"),
    ],
)
def test_malformed_edge_list_names_the_line_and_what_was_expected(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, text)

    error = error_for(read_edge_list, path)

    assert error.line == line
    assert error.path == str(path)
    assert expected in error.message
    assert str(error).startswith(f"{path}, line {line}: ")


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("", 1, "number of nodes"),
        ("x\n1\n0\n", 1, "number of nodes"),
        ("3\n1 2\n0 two\n0 1\n", 3, "integer node id"),
        ("3\n1 2\n0 5\n0 1\n", 3, "out of range"),
        ("3\n1 2\n0 1 2\n0 1\n", 3, "node 1 lists itself"),
        ("3\n1 2\n0 2\n", 4, "one neighbour line per node (3 after the header), found 2"),
        ("3\n1 2\n0 2\n0 1\n0\n", 5, "found 4"),
        ("3\n1 2\n0 2\n0\n", 3, "node 1 lists 2 but node 2 (line 4) does not list 1"),
        ("3\n1\n0 2\n0 1\n", 4, "node 2 lists 0 but node 0 (line 2) does not list 2"),
    ],
)
def test_malformed_adjacency_list_names_the_line_and_what_was_expected(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, text)

    error = error_for(read_adjacency_list, path)

    assert error.line == line
    assert expected in error.message
    assert f", line {line}: " in str(error)


@pytest.mark.parametrize(
    ("reader", "text"),
    [(read_edge_list, DECENTRALIZEPY_EDGES), (read_adjacency_list, DECENTRALIZEPY_ADJACENCY)],
)
def test_a_node_count_that_differs_from_the_run_is_an_error_on_the_header(
    tmp_path: Path, reader: Reader, text: str
) -> None:
    error = error_for(reader, write(tmp_path, text), n=5)

    assert error.line == 1
    assert "declares 4 nodes, expected 5" in error.message


def test_a_matching_node_count_is_accepted(tmp_path: Path) -> None:
    assert read_edge_list(write(tmp_path, DECENTRALIZEPY_EDGES), n=4).number_of_nodes() == 4


def test_graph_file_error_is_a_value_error_that_survives_pickling() -> None:
    error = GraphFileError("g.edges", 3, "expected an edge 'u v', found '1 2 3'")

    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(error, ValueError)
    assert (copy.path, copy.line, copy.message) == ("g.edges", 3, error.message)
    assert str(copy) == "g.edges, line 3: expected an edge 'u v', found '1 2 3'"


# --------------------------------------------------------------------------- auto + writing


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ring.edges", DECENTRALIZEPY_EDGES),
        ("ring.txt", DECENTRALIZEPY_EDGES),
        ("ring.adj", DECENTRALIZEPY_ADJACENCY),
        ("ring.txt", DECENTRALIZEPY_ADJACENCY),
        ("ring.txt", "4\n1 3\n0 2\n1 3\n0 2 # each of these lines holds two ids\n"),
        ("path.txt", "3\n1\n0 2\n1\n"),
    ],
)
def test_auto_format_reads_either_format(tmp_path: Path, name: str, text: str) -> None:
    graph = read_graph_file(write(tmp_path, text, name))

    assert nx.is_connected(graph)
    assert edge_set(graph) == (RING4 if name.startswith("ring") else {(0, 1), (1, 2)})


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, DECENTRALIZEPY_ADJACENCY, "ring.edges")

    assert edge_set(read_graph_file(path, "adjacency")) == RING4


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt must be"):
        read_graph_file(write(tmp_path, DECENTRALIZEPY_EDGES), "csv")  # type: ignore[arg-type]


@pytest.mark.parametrize("graph", [ring(5), regular(20, 4, seed=1), nx.complete_graph(6)])
def test_write_edge_list_round_trips_through_read_edge_list(
    tmp_path: Path, graph: nx.Graph
) -> None:
    path = tmp_path / "topology.edges"

    write_edge_list(graph, path)
    again = read_edge_list(path, n=graph.number_of_nodes())

    assert sorted(again.nodes) == sorted(graph.nodes)
    assert edge_set(again) == edge_set(graph)


def test_write_edge_list_writes_the_count_then_each_edge_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "topology.edges"

    write_edge_list(nx.Graph([(2, 1), (0, 1), (2, 0)]), path)

    assert path.read_text() == "3\n0 1\n0 2\n1 2\n"


def test_write_edge_list_refuses_nodes_that_are_not_0_to_n_minus_1(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"0\.\.n-1"):
        write_edge_list(nx.Graph([(1, 2)]), tmp_path / "x.edges")
