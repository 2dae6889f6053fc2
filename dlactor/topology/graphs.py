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

A graph file is checked before it is read whole, and read one line at a time: it must be a
regular file (not a device, FIFO or directory) of at most :func:`max_file_bytes` for its node
count, its header is compared with the expected node count before any other line is read, and
reading stops at the first bad line. Errors say what is wrong with a line without quoting it
(a path may name any file, secrets included); at most a node id or count of a few plain digits
is shown. Graphs have at most :data:`MAX_NODES` nodes and :data:`MAX_EDGES` edges, read or built.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import networkx as nx
import numpy as np

__all__ = [
    "MAX_EDGES",
    "MAX_NODES",
    "GraphFileError",
    "check_size",
    "complete",
    "erdos_renyi",
    "max_file_bytes",
    "open_regular",
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
#: The most nodes a graph may have (also the config's bound on ``nodes``): every node is a
#: process of its own, and node ids travel in overlay messages of at most 65,536 ids.
MAX_NODES = 1 << 16
#: The most edges a graph may have: 4,194,304 edges take about 1 GB in networkx (the complete
#: graph on 2,896 nodes, or 65,536 nodes of degree 128).
MAX_EDGES = 1 << 22
_EDGES_SUFFIXES = frozenset({".edges", ".edgelist"})
_ADJACENCY_SUFFIXES = frozenset({".adj", ".adjacency", ".adjlist"})


class GraphFileError(ValueError):
    """A graph file that cannot be read: says which file, which line and what was expected."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line  # None: the file as a whole (its type, its size)
        self.message = message
        where = path if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type[GraphFileError], tuple[str, int | None, str]]:
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
    if isinstance(n, bool) or not isinstance(n, int) or not minimum <= n <= MAX_NODES:
        raise ValueError(
            f"the number of nodes must be an integer in [{minimum}, {MAX_NODES}], got {n!r}"
        )


def check_size(n: int, edges: float, what: str) -> None:
    """Raise ``ValueError`` before building ``what`` if its ``n`` nodes or (expected) ``edges``
    are beyond :data:`MAX_NODES` / :data:`MAX_EDGES`."""
    _check_node_count(n)
    if edges > MAX_EDGES:
        raise ValueError(
            f"{what} on {n} nodes has {edges:,.0f} edges, more than the {MAX_EDGES:,} a graph "
            "may have (about 1 GB in memory)"
        )


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
    check_size(n, n * (n - 1) // 2, "a complete graph")
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
    check_size(n, n * degree // 2, f"a {degree}-regular graph")
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
    check_size(n, n * k // 2, f"a small-world graph with k={k}")
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
    check_size(n, p * n * (n - 1) / 2, f"an Erdos-Renyi graph with p={p}")
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

#: Bytes a graph file may hold beyond its edges: the header, comments, blank lines.
_SLACK_BYTES = 1 << 20
#: Digits a node id or node count may have (65,535 has 5; leading zeros are allowed).
_MAX_DIGITS = 8


def max_file_bytes(n: int) -> int:
    """The largest graph file accepted for ``n`` nodes: twice the edge list of the densest graph
    allowed (each edge in both directions, every id as long as ``n - 1``, CRLF line ends), plus
    1 MiB for comments and blank lines. 1,051,936 bytes for 16 nodes; 219 MB for 65,536."""
    lines = min(n * (n - 1), 2 * MAX_EDGES)
    return _SLACK_BYTES + 2 * lines * (2 * len(str(max(n - 1, 0))) + 3)


def _max_line_bytes(n: int) -> int:
    """The longest line accepted: a node listing every other node, plus 64 KiB of comment."""
    return n * (len(str(n)) + 1) + (64 << 10)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(name: str) -> BinaryIO:
    """Open ``name`` for reading if it is a regular file. A device is refused without being
    opened; the open does not block (a FIFO swapped in after the check is refused too)."""
    try:
        mode = os.stat(name).st_mode
        if not stat.S_ISREG(mode):
            raise GraphFileError(name, None, f"{_file_kind(mode)}, expected a regular file")
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise GraphFileError(name, None, f"cannot read it: {exc.strerror}") from None
    handle = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise GraphFileError(name, None, f"{_file_kind(mode)}, expected a regular file")
    return handle


class _Lines:
    """A graph file's data lines, read one at a time: (line number, tokens) of every line that
    is not blank once comments are cut. The file is held to what its node count needs: its
    size before any line is read, and the bytes read so far after each line."""

    def __init__(self, name: str, n: int | None) -> None:
        self.name = name
        self._handle = open_regular(name)
        self._number = 0  # physical lines read
        self._read = 0  # bytes read
        self._lines = self._generate()
        try:
            self._expect(MAX_NODES if n is None else n)
        except GraphFileError:
            self.close()
            raise

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator[_Line]:
        return self._lines

    def _expect(self, n: int) -> None:
        self.nodes, self.limit, self._line_limit = n, max_file_bytes(n), _max_line_bytes(n)
        size = os.fstat(self._handle.fileno()).st_size
        if size > self.limit:
            raise GraphFileError(self.name, None, self._too_long(f"{size:,} bytes is"))

    def _too_long(self, what: str) -> str:
        return (
            f"{what} more than a graph of {self.nodes:,} nodes needs "
            f"(at most {self.limit:,} bytes, see dlactor.topology.graphs.max_file_bytes)"
        )

    def _generate(self) -> Iterator[_Line]:
        while raw := self._handle.readline(self._line_limit + 1):
            self._number += 1
            self._read += len(raw)
            if self._read > self.limit:  # the file grew, or its size was not its length
                raise GraphFileError(self.name, self._number, self._too_long("the file is"))
            if len(raw) > self._line_limit:
                raise GraphFileError(
                    self.name, self._number, f"longer than {self._line_limit:,} bytes"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GraphFileError(self.name, self._number, "not UTF-8 text") from None
            tokens = text.split("#", 1)[0].split()
            if tokens:
                yield self._number, tokens

    def header(self, n: int | None) -> int:
        """The node count on the first data line, checked against ``n`` when given, before any
        other line is read; the rest of the file is then held to what that many nodes need."""
        first = next(self._lines, None)
        if first is None:
            raise GraphFileError(
                self.name, 1, "expected the number of nodes on the first line, found none"
            )
        line, tokens = first
        if len(tokens) != 1:
            raise GraphFileError(
                self.name, line, f"expected only the number of nodes, found {_fields(tokens)}"
            )
        count = _parse_int(self.name, line, tokens[0], "the number of nodes (an integer)")
        if not 1 <= count <= MAX_NODES:
            raise GraphFileError(
                self.name, line, f"expected a number of nodes in [1, {MAX_NODES}], found {count}"
            )
        if n is not None and count != n:
            raise GraphFileError(self.name, line, f"the file declares {count} nodes, expected {n}")
        self._expect(count)
        return count


def _fields(tokens: list[str]) -> str:
    return "1 field" if len(tokens) == 1 else f"{len(tokens)} fields"


def _parse_int(path: str, line: int, token: str, what: str) -> int:
    """``token`` as a decimal integer: ASCII digits, perhaps after a minus sign. The error says
    what was expected, never what was found (the file may hold anything)."""
    digits = token.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise GraphFileError(path, line, f"expected {what}: found other than decimal digits")
    if len(digits) > _MAX_DIGITS:
        raise GraphFileError(path, line, f"expected {what}: found more than {_MAX_DIGITS} digits")
    return int(token)


def _parse_node(path: str, line: int, token: str, n: int) -> int:
    node = _parse_int(path, line, token, "an integer node id")
    if not 0 <= node < n:
        raise GraphFileError(
            path, line, f"node id {node} is out of range: expected 0..{n - 1} for {n} nodes"
        )
    return node


def _empty_graph(count: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(count))
    return graph


def _too_many_edges(path: str, line: int) -> GraphFileError:
    return GraphFileError(path, line, f"more than {MAX_EDGES:,} edges, the most a graph may have")


def _edges_graph(lines: _Lines, n: int | None) -> nx.Graph:
    path = lines.name
    count = lines.header(n)
    graph = _empty_graph(count)
    edges = 0
    for line, tokens in lines:
        if len(tokens) != 2:
            raise GraphFileError(
                path, line, f"expected an edge 'u v' (two node ids), found {_fields(tokens)}"
            )
        u, v = (_parse_node(path, line, token, count) for token in tokens)
        if u == v:
            raise GraphFileError(path, line, f"self loop {u} {v}: expected two different nodes")
        if not graph.has_edge(u, v):
            edges += 1
            if edges > MAX_EDGES:
                raise _too_many_edges(path, line)
            graph.add_edge(u, v)
    return graph


def _adjacency_sets(lines: _Lines, count: int) -> list[tuple[int, set[int]]]:
    """Each node's (line number, neighbour set), in node order."""
    path = lines.name
    expected = f"expected one neighbour line per node ({count} after the header)"
    sets: list[tuple[int, set[int]]] = []
    ids = 0
    last = 1
    for line, tokens in lines:
        node = len(sets)
        if node == count:
            raise GraphFileError(path, line, f"{expected}, found more")
        ids += len(tokens)
        if ids > 2 * MAX_EDGES:
            raise _too_many_edges(path, line)
        neighbours = {_parse_node(path, line, token, count) for token in tokens}
        if node in neighbours:
            raise GraphFileError(path, line, f"node {node} lists itself: self loops not allowed")
        sets.append((line, neighbours))
        last = line
    if len(sets) < count:
        raise GraphFileError(path, last + 1, f"{expected}, found {len(sets)}")
    return sets


def _adjacency_graph(lines: _Lines, n: int | None) -> nx.Graph:
    path = lines.name
    count = lines.header(n)
    sets = _adjacency_sets(lines, count)
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


def _read(path: str | os.PathLike[str], fmt: GraphFormat, n: int | None) -> nx.Graph:
    """Read ``path`` in ``fmt`` as a connected graph; ``n``: the node count it must declare."""
    if n is not None:
        _check_node_count(n)
    name = os.fspath(path)
    chosen = _sniff_format(name, n) if fmt == "auto" else fmt
    reader = _edges_graph if chosen == "edges" else _adjacency_graph
    with _Lines(name, n) as lines:
        graph = reader(lines, n)
    try:
        require_connected(graph)
    except ValueError as exc:
        raise GraphFileError(name, None, str(exc)) from None
    return graph


def read_edge_list(path: str | os.PathLike[str], n: int | None = None) -> nx.Graph:
    """Read an ``edges`` file (header ``n``, then ``u v`` per line); must be connected."""
    return _read(path, "edges", n)


def read_adjacency_list(path: str | os.PathLike[str], n: int | None = None) -> nx.Graph:
    """Read an ``adjacency`` file (header ``n``, then node i's neighbours on line i)."""
    return _read(path, "adjacency", n)


def _sniff_format(path: str, n: int | None) -> Literal["edges", "adjacency"]:
    """Guess the format: by suffix, else by shape (lines of other than 2 ids => adjacency).

    When every line holds two ids and there is one line per node, both readings are possible
    (a ring's adjacency list looks like an edge list): a valid symmetric adjacency list wins.
    Without a suffix the file is read twice (a third time, if short, when both fit).
    """
    suffix = Path(path).suffix.lower()
    if suffix in _EDGES_SUFFIXES:
        return "edges"
    if suffix in _ADJACENCY_SUFFIXES:
        return "adjacency"
    with _Lines(path, n) as lines:
        count = lines.header(n)
        body = 0
        for _, tokens in lines:
            if len(tokens) != 2:
                return "adjacency"
            body += 1
    if body != count:
        return "edges"
    try:
        with _Lines(path, n) as lines:
            _adjacency_graph(lines, n)
    except GraphFileError:
        return "edges"
    return "adjacency"


def read_graph_file(
    path: str | os.PathLike[str], fmt: GraphFormat = "auto", n: int | None = None
) -> nx.Graph:
    """Read a graph file in ``fmt`` (``"auto"``: by suffix, then by content)."""
    if fmt not in ("auto", "edges", "adjacency"):
        raise ValueError(f"fmt must be 'auto', 'edges' or 'adjacency', got {fmt!r}")
    return _read(path, fmt, n)


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
