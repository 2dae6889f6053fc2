"""Static overlay graphs: seeded builders, and decentralizepy-compatible graph files.

Every graph here is an undirected ``networkx.Graph`` on the nodes ``0..n-1``, without self
loops, and connected (D-PSGD only converges on a connected graph): each builder and reader ends
with :func:`require_connected`. Random builders are deterministic functions of their seed.

Graph files are the two formats of decentralizepy's ``Graph.read_graph_from_file``:

``edges``
    The first line is the number of nodes ``n``; every other line is one edge ``u v``.
    decentralizepy writes each edge in both directions; an edge given once or twice is the same.
``adjacency``
    The first line is the number of nodes ``n``; then one line per node, in node order, listing
    its neighbours separated by spaces. Lists must agree: if ``u`` lists ``v``, ``v`` lists ``u``.

Blank lines and ``#`` comments (whole lines or line ends) are ignored in both formats; any
other malformed line raises :class:`GraphFileError` naming the file and the 1-based line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np

__all__ = [
    "GraphFileError",
    "complete",
    "erdos_renyi",
    "read_adjacency_list",
    "read_edge_list",
    "read_graph_file",
    "regular",
    "require_connected",
    "ring",
    "small_world",
    "write_edge_list",
]

GraphFormat = Literal["auto", "edges", "adjacency"]

_MAX_TRIES = 100
_EDGES_SUFFIXES = frozenset({".edges", ".edgelist"})
_ADJACENCY_SUFFIXES = frozenset({".adj", ".adjacency", ".adjlist"})


class GraphFileError(ValueError):
    """A graph file that cannot be read: says which file, which line and what was expected."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}, line {line}: {message}")

    def __reduce__(self) -> tuple[type[GraphFileError], tuple[str, int, str]]:
        return (type(self), (self.path, self.line, self.message))


# --------------------------------------------------------------------------- checks


def require_connected(graph: nx.Graph) -> None:
    """Raise ``ValueError`` unless ``graph`` is a non-empty, loop-free, connected graph."""
    if graph.number_of_nodes() == 0:
        raise ValueError("the graph has no nodes; a topology needs at least one node")
    loops = sorted(node for node, _ in nx.selfloop_edges(graph))
    if loops:
        raise ValueError(f"the graph has self loops at nodes {loops[:10]}; remove them")
    if not nx.is_connected(graph):
        components = sorted(nx.connected_components(graph), key=len)
        smallest = sorted(components[0])
        raise ValueError(
            f"the graph is not connected: {len(components)} components "
            f"(smallest has nodes {smallest[:10]}{' ...' if len(smallest) > 10 else ''}); "
            "D-PSGD needs a connected graph"
        )


def _check_node_count(n: int, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"the number of nodes must be an integer >= {minimum}, got {n!r}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _derived_seed(seed: int, attempt: int) -> int:
    """A seed for the ``attempt``-th try, derived from ``seed`` the same way on every platform."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _first_connected(build: Callable[[int], nx.Graph], seed: int, failure: str) -> nx.Graph:
    """Call ``build`` with derived seeds until it returns a connected graph (bounded tries)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for attempt in range(_MAX_TRIES):
        graph = build(_derived_seed(seed, attempt))
        if nx.is_connected(graph):
            return graph
    raise ValueError(f"{failure} (no connected graph in {_MAX_TRIES} tries)")


# --------------------------------------------------------------------------- builders


def ring(n: int) -> nx.Graph:
    """The cycle 0-1-...-(n-1)-0; for n <= 2 the path on n nodes."""
    _check_node_count(n)
    graph = nx.cycle_graph(n) if n >= 3 else nx.path_graph(n)
    require_connected(graph)
    return graph


def complete(n: int) -> nx.Graph:
    """Every node linked to every other node."""
    _check_node_count(n)
    graph = nx.complete_graph(n)
    require_connected(graph)
    return graph


def regular(n: int, degree: int, seed: int) -> nx.Graph:
    """A connected random ``degree``-regular graph on ``n`` nodes."""
    _check_node_count(n)
    if not 0 <= degree < n:
        raise ValueError(f"degree must be in [0, n) = [0, {n}), got {degree}")
    if (n * degree) % 2:
        raise ValueError(
            f"no {degree}-regular graph on {n} nodes exists: n * degree = {n * degree} is odd"
        )
    if n > 2 and degree < 2:
        raise ValueError(f"a {degree}-regular graph on {n} nodes is never connected; use >= 2")
    graph = _first_connected(
        lambda s: nx.random_regular_graph(degree, n, seed=s),
        seed,
        f"could not draw a connected {degree}-regular graph on {n} nodes",
    )
    require_connected(graph)
    return graph


def small_world(n: int, k: int, p: float, seed: int) -> nx.Graph:
    """A connected Watts-Strogatz graph: a ring lattice of even degree ``k``, rewired with ``p``."""
    _check_node_count(n, minimum=3)
    if k < 2 or k % 2 or k >= n:
        raise ValueError(f"k must be even with 2 <= k < n = {n}, got {k}")
    _check_probability("p", p)
    graph = _first_connected(
        lambda s: nx.watts_strogatz_graph(n, k, p, seed=s),
        seed,
        f"could not draw a connected small-world graph with n={n}, k={k}, p={p}",
    )
    require_connected(graph)
    return graph


def erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    """A connected G(n, p) graph: resampled with derived seeds until connected."""
    _check_node_count(n)
    _check_probability("p", p)
    threshold = math.log(n) / n if n > 1 else 0.0
    graph = _first_connected(
        lambda s: nx.gnp_random_graph(n, p, seed=s),
        seed,
        f"p={p} is too small for a connected Erdos-Renyi graph on {n} nodes; "
        f"use p well above ln(n)/n = {threshold:.4f}",
    )
    require_connected(graph)
    return graph


# --------------------------------------------------------------------------- reading files

_Line = tuple[int, list[str]]  # (1-based line number, tokens)


def _data_lines(text: str) -> Iterator[_Line]:
    """Yield (line number, tokens) of every line that is not blank once comments are cut."""
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if tokens:
            yield number, tokens


def _parse_int(path: str, line: int, token: str, what: str) -> int:
    try:
        return int(token, 10)
    except ValueError:
        raise GraphFileError(path, line, f"expected {what}, found {token!r}") from None


def _parse_node(path: str, line: int, token: str, n: int) -> int:
    node = _parse_int(path, line, token, "an integer node id")
    if not 0 <= node < n:
        raise GraphFileError(
            path, line, f"node id {node} is out of range: expected 0..{n - 1} for {n} nodes"
        )
    return node


def _read_header(path: str, lines: list[_Line], n: int | None) -> int:
    """The node count on the first data line, checked against ``n`` when given."""
    if not lines:
        raise GraphFileError(path, 1, "expected the number of nodes on the first line, found none")
    line, tokens = lines[0]
    if len(tokens) != 1:
        raise GraphFileError(
            path, line, f"expected only the number of nodes, found {' '.join(tokens)!r}"
        )
    count = _parse_int(path, line, tokens[0], "the number of nodes (an integer)")
    if count < 1:
        raise GraphFileError(path, line, f"expected a number of nodes >= 1, found {count}")
    if n is not None and count != n:
        raise GraphFileError(path, line, f"the file declares {count} nodes, expected {n}")
    return count


def _read_lines(path: str | os.PathLike[str]) -> tuple[str, list[_Line]]:
    name = os.fspath(path)
    return name, list(_data_lines(Path(name).read_text(encoding="utf-8")))


def _empty_graph(count: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(count))
    return graph


def _edges_graph(path: str, lines: list[_Line], n: int | None) -> nx.Graph:
    count = _read_header(path, lines, n)
    graph = _empty_graph(count)
    for line, tokens in lines[1:]:
        if len(tokens) != 2:
            raise GraphFileError(
                path, line, f"expected an edge 'u v' (two node ids), found {' '.join(tokens)!r}"
            )
        u, v = (_parse_node(path, line, token, count) for token in tokens)
        if u == v:
            raise GraphFileError(path, line, f"self loop {u} {v}: expected two different nodes")
        graph.add_edge(u, v)
    return graph


def _adjacency_sets(path: str, lines: list[_Line], count: int) -> list[tuple[int, set[int]]]:
    """Each node's (line number, neighbour set), in node order."""
    body = lines[1:]
    if len(body) != count:
        where = body[count][0] if len(body) > count else (lines[-1][0] + 1)
        raise GraphFileError(
            path,
            where,
            f"expected one neighbour line per node ({count} after the header), found {len(body)}",
        )
    sets = []
    for node, (line, tokens) in enumerate(body):
        neighbours = {_parse_node(path, line, token, count) for token in tokens}
        if node in neighbours:
            raise GraphFileError(path, line, f"node {node} lists itself: self loops not allowed")
        sets.append((line, neighbours))
    return sets


def _adjacency_graph(path: str, lines: list[_Line], n: int | None) -> nx.Graph:
    count = _read_header(path, lines, n)
    sets = _adjacency_sets(path, lines, count)
    graph = _empty_graph(count)
    for node, (line, neighbours) in enumerate(sets):
        for other in sorted(neighbours):
            if node not in sets[other][1]:
                raise GraphFileError(
                    path,
                    line,
                    f"node {node} lists {other} but node {other} (line {sets[other][0]}) "
                    f"does not list {node}: expected symmetric neighbour lists",
                )
            graph.add_edge(node, other)
    return graph


def read_edge_list(path: str | os.PathLike[str], n: int | None = None) -> nx.Graph:
    """Read an ``edges`` file (header ``n``, then ``u v`` per line); must be connected."""
    name, lines = _read_lines(path)
    graph = _edges_graph(name, lines, n)
    require_connected(graph)
    return graph


def read_adjacency_list(path: str | os.PathLike[str], n: int | None = None) -> nx.Graph:
    """Read an ``adjacency`` file (header ``n``, then node i's neighbours on line i)."""
    name, lines = _read_lines(path)
    graph = _adjacency_graph(name, lines, n)
    require_connected(graph)
    return graph


def _sniff_format(path: str, lines: list[_Line]) -> Literal["edges", "adjacency"]:
    """Guess the format: by suffix, else by shape (lines of other than 2 ids => adjacency).

    When every line holds two ids and there is one line per node, both readings are possible
    (a ring's adjacency list looks like an edge list): a valid symmetric adjacency list wins.
    """
    suffix = Path(path).suffix.lower()
    if suffix in _EDGES_SUFFIXES:
        return "edges"
    if suffix in _ADJACENCY_SUFFIXES:
        return "adjacency"
    body = lines[1:]
    if any(len(tokens) != 2 for _, tokens in body):
        return "adjacency"
    try:
        _adjacency_graph(path, lines, None)
    except GraphFileError:
        return "edges"
    return "adjacency"


def read_graph_file(
    path: str | os.PathLike[str], fmt: GraphFormat = "auto", n: int | None = None
) -> nx.Graph:
    """Read a graph file in ``fmt`` (``"auto"``: by suffix, then by content)."""
    if fmt not in ("auto", "edges", "adjacency"):
        raise ValueError(f"fmt must be 'auto', 'edges' or 'adjacency', got {fmt!r}")
    name, lines = _read_lines(path)
    chosen = _sniff_format(name, lines) if fmt == "auto" else fmt
    reader = _edges_graph if chosen == "edges" else _adjacency_graph
    graph = reader(name, lines, n)
    require_connected(graph)
    return graph


# --------------------------------------------------------------------------- writing files


def write_edge_list(graph: nx.Graph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` as an ``edges`` file: the node count, then each edge once as ``u v``."""
    count = graph.number_of_nodes()
    if set(graph.nodes) != set(range(count)):
        raise ValueError("graph nodes must be the integers 0..n-1 to be written as an edge list")
    edges = sorted((min(u, v), max(u, v)) for u, v in graph.edges)
    if any(u == v for u, v in edges):
        raise ValueError("the graph has self loops; an edge list cannot hold them")
    body = "".join(f"{u} {v}\n" for u, v in edges)
    Path(path).write_text(f"{count}\n{body}", encoding="utf-8")
