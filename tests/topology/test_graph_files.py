"""Graph files in decentralizepy's two formats: reading, writing, and errors naming the line."""

from __future__ import annotations

import os
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest

from dlactor.topology import graphs
from dlactor.topology.graphs import (
    MAX_EDGES,
    MAX_NODES,
    GraphFileError,
    complete,
    erdos_renyi,
    max_file_bytes,
    read_adjacency_list,
    read_edge_list,
    read_graph_file,
    regular,
    ring,
    small_world,
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
        ("0\n", 1, "in [1, 65536], found 0"),
        ("70000\n", 1, "in [1, 65536], found 70000"),
        ("123456789\n", 1, "more than 8 digits"),
        ("3\n0 1\n1 x\n", 3, "integer node id"),
        ("3\n0 1\n1 2.0\n", 3, "integer node id"),
        ("3\n0 1\n1 \u0662\n", 3, "integer node id"),
        ("3\n0 1\n1 +2\n", 3, "integer node id"),
        ("3\n0 1\n\n1 2 0\n", 4, "edge 'u v' (two node ids), found 3 fields"),
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
        ("3\n1 2\n0 2\n0 1\n0\n", 5, "found more"),
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
    error = GraphFileError("g.edges", 3, "expected an edge 'u v' (two node ids), found 3 fields")

    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(error, ValueError)
    assert (copy.path, copy.line, copy.message) == ("g.edges", 3, error.message)
    assert str(copy) == "g.edges, line 3: expected an edge 'u v' (two node ids), found 3 fields"


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


# --------------------------------------------------------------------------- hostile files

SECRET = "SECRET-TOKEN"


def test_max_file_bytes_follows_from_the_node_count() -> None:
    assert max_file_bytes(16) == (1 << 20) + 2 * 16 * 15 * 7
    assert max_file_bytes(MAX_NODES) == (1 << 20) + 2 * 2 * MAX_EDGES * 13


@pytest.mark.parametrize("n", [16, None])
def test_a_file_too_big_for_its_node_count_is_refused_before_it_is_read(
    tmp_path: Path, n: int | None
) -> None:
    path = tmp_path / "big.edges"
    path.write_text("16\n" + "0 1\n" * 1_000_000)

    start = time.perf_counter()
    error = error_for(read_edge_list, path, n)

    assert time.perf_counter() - start < 1.0
    assert error.line is None  # refused on its size, not on a line
    assert "more than a graph of 16 nodes needs" in error.message
    assert str(error).startswith(f"{path}: ")


def test_the_header_is_checked_before_any_other_line_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, f"20\n0 {SECRET}\n")

    error = error_for(read_edge_list, path, 16)

    assert (error.line, error.message) == (1, "the file declares 20 nodes, expected 16")


def test_reading_stops_at_the_bytes_the_node_count_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose size says less than it holds (as /proc files do) is held to the limit
    line by line."""
    path = write(tmp_path, "4\n0 1\n1 2\n2 3\n3 0\n")
    monkeypatch.setattr(graphs, "max_file_bytes", lambda n: 12)
    real_fstat = os.fstat
    monkeypatch.setattr(
        graphs.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:]))
    )

    error = error_for(read_edge_list, path)

    assert error.line == 4
    assert "the file is more than a graph of 4 nodes needs" in error.message


@pytest.mark.parametrize("kind", ["directory", "FIFO", "/dev/zero", "symlink to /dev/zero"])
@pytest.mark.timeout(10)
def test_what_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "graph.edges"
    if kind == "directory":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    elif kind == "/dev/zero":
        path = Path("/dev/zero")
    else:
        path.symlink_to("/dev/zero")

    with pytest.raises(GraphFileError) as caught:
        read_graph_file(path, "auto", 16)
    error = caught.value

    assert error.line is None
    expected = {"directory": "a directory", "FIFO": "a FIFO"}.get(kind, "a character device")
    assert error.message == f"{expected}, expected a regular file"


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    error = error_for(read_edge_list, tmp_path / "none.edges")

    assert (error.line, error.message) == (None, "cannot read it: No such file or directory")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"{SECRET}\n0 1\n", 1),
        (f"16 {SECRET}\n", 1),
        (f"4\n1 2\n{SECRET}\n", 3),
        (f"4\n1 {SECRET}\n", 2),
        (f"4\n1 2 {SECRET}\n", 2),
        (f"4\n1 2\n1 2{SECRET}\n", 3),
        (f"4\n1 2\n1 {'9' * 30}{SECRET}\n", 3),
    ],
)
@pytest.mark.parametrize("fmt", ["edges", "adjacency", "auto"])
def test_an_error_never_quotes_the_file(tmp_path: Path, text: str, line: int, fmt: str) -> None:
    path = write(tmp_path, text, "secret.txt")

    with pytest.raises(GraphFileError) as caught:
        read_graph_file(path, fmt, 4 if text.startswith("4") else None)  # type: ignore[arg-type]

    assert caught.value.line == line
    assert "SECRET" not in str(caught.value) and "999" not in str(caught.value)


def test_a_line_that_is_not_utf8_or_too_long_is_named_not_quoted(tmp_path: Path) -> None:
    binary = tmp_path / "binary.edges"
    binary.write_bytes(b"2\n0 1 \xff" + SECRET.encode() + b"\n")
    long = write(tmp_path, f"2\n0 1 # {SECRET * 10_000}\n", "long.edges")

    for path, line, expected in [(binary, 2, "not UTF-8 text"), (long, 2, "longer than")]:
        error = error_for(read_edge_list, path)
        assert error.line == line and expected in error.message
        assert "SECRET" not in str(error)


def test_a_file_with_more_edges_than_a_graph_may_have_stops_at_the_first_one_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphs, "MAX_EDGES", 3)
    edges = write(tmp_path, "4\n0 1\n1 0\n1 2\n2 3\n3 0\n")  # 1 0 is 0 1 again
    adjacency = write(tmp_path, DECENTRALIZEPY_ADJACENCY, "ring.adj")

    assert error_for(read_edge_list, edges).line == 6
    assert "more than 3 edges" in error_for(read_adjacency_list, adjacency).message


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: ring(10**20), "number of nodes must be an integer in [1, 65536]"),
        (lambda: complete(3000), "more than the 4,194,304"),
        (lambda: regular(65536, 200, seed=0), "more than the 4,194,304"),
        (lambda: small_world(65536, 200, 0.1, seed=0), "more than the 4,194,304"),
        (lambda: erdos_renyi(65536, 0.01, seed=0), "more than the 4,194,304"),
    ],
)
def test_builders_refuse_graphs_too_big_before_building_them(
    build: Callable[[], nx.Graph], expected: str
) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(expected)):
        build()
    assert time.perf_counter() - start < 1.0


def test_a_whole_file_error_has_no_line_and_survives_pickling() -> None:
    error = GraphFileError("g.edges", None, "a FIFO, expected a regular file")

    copy = pickle.loads(pickle.dumps(error))

    assert copy.line is None
    assert str(copy) == "g.edges: a FIFO, expected a regular file"
