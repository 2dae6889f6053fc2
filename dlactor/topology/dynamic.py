"""Dynamic topologies: a new graph every round, the same on every node.

decentralizepy's dynamic runs draw a fresh random d-regular graph every round (its peer
sampler draws it and tells each node its neighbours). Here every node draws the same graph
itself, from the run's seed and the round number, so no message is needed and every node
agrees: j is i's neighbour in round r exactly when i is j's. (Nodes must run the same
networkx and Python, as the nodes of one run do.)

A round's graph is not required to be connected: gossip averaging converges when the graphs
are connected jointly over rounds, and a fresh random graph every round is. (Requiring it
would make a 2-regular graph on many nodes, almost never a single cycle, fail to draw.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from dlactor.topology.mixing import metropolis_hastings_row

if TYPE_CHECKING:
    from dlactor.churn.availability import Availability

__all__ = ["RandomRegularDynamic", "draw_among", "random_regular_at"]


def _round_seed(seed: int, round: int) -> int:
    """The seed of round ``round``'s graph: independent streams per round, on every platform."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(round,)).generate_state(1)[0])


def _check(n: int, degree: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"the number of nodes must be an integer >= 2, got {n!r}")
    if not 1 <= degree < n:
        raise ValueError(f"degree must be in [1, n) = [1, {n}), got {degree}")
    if (n * degree) % 2:
        raise ValueError(
            f"no {degree}-regular graph on {n} nodes exists: n * degree = {n * degree} is odd"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def random_regular_at(n: int, degree: int, seed: int, round: int) -> nx.Graph:
    """Round ``round``'s graph: a random ``degree``-regular graph on the nodes ``0..n-1``,
    a deterministic function of ``(seed, round)``."""
    _check(n, degree, seed)
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    return nx.random_regular_graph(degree, n, seed=_round_seed(seed, round))


def draw_among(
    nodes: int, degree: int, seed: int, round: int, online: Sequence[int] | None = None
) -> dict[int, list[int]]:
    """Round ``round``'s graph as sorted neighbour lists: ``random_regular_at`` over every
    node, or, given the nodes ``online`` that round (sorted), a random graph over those
    alone, as regular as their count allows: ``degree``-regular when ``len(online) x
    degree`` is even, else ``degree``-regular but for ``degree`` nodes of degree
    ``degree - 1`` (a regular graph on one more node, that node taken out); complete when
    ``degree`` is not below their count. Nodes not online have no neighbours."""
    if online is None or len(online) == nodes:
        graph = random_regular_at(nodes, degree, seed, round)
        return {i: sorted(graph[i]) for i in range(nodes)}
    out: dict[int, list[int]] = {i: [] for i in range(nodes)}
    m = len(online)
    if m < 2:
        return out
    d = min(degree, m - 1)
    size = m + (m * d) % 2
    drawn = nx.random_regular_graph(d, size, seed=_round_seed(seed, round))
    for a in range(m):
        out[int(online[a])] = sorted(int(online[b]) for b in drawn[a] if b < m)
    return out


class RandomRegularDynamic:
    """A fresh random ``degree``-regular graph every round; Metropolis-Hastings weights.

    Every node's degree is ``degree`` in every round, so a row of the weights is
    ``1 / (degree + 1)`` for each neighbour and for the node itself. Only the current
    round's neighbour lists are kept (``nodes x degree`` integers), not the graph.
    """

    #: Any node's neighbours and weights can be asked for, not only this node's.
    sees_every_node = True
    #: With an availability schedule, each round's graph is drawn among the online nodes.
    handles_availability = True

    def __init__(
        self, *, nodes: int, degree: int, seed: int, availability: Availability | None = None
    ) -> None:
        _check(nodes, degree, seed)
        self.nodes, self.degree, self.seed = nodes, degree, seed
        self.availability = availability
        self._round = -1
        self._adjacency = np.empty((0, degree), dtype=np.int64)
        self._drawn: dict[int, list[int]] = {}  # with availability: the round's lists

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        if self.availability is not None:
            return frozenset(self._among_online(round)[self._row(node)])
        return frozenset(self._adjacency_at(round)[self._row(node)].tolist())

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        if self.availability is not None:
            lists = self._among_online(round)
            degrees = {j: len(lists[j]) for j in lists[self._row(node)]}
            degrees[node] = len(lists[node])
            return metropolis_hastings_row(node, degrees)
        degrees = dict.fromkeys(await self.neighbors(node, round), self.degree)
        degrees[node] = self.degree
        return metropolis_hastings_row(node, degrees)

    def _among_online(self, round: int) -> dict[int, list[int]]:
        if round != self._round:
            assert self.availability is not None
            online = self.availability.online_nodes(round).tolist()
            self._drawn = draw_among(self.nodes, self.degree, self.seed, round, online)
            self._round = round
        return self._drawn

    def _row(self, node: int) -> int:
        if not 0 <= node < self.nodes:
            raise ValueError(f"node {node} is not one of the {self.nodes} nodes")
        return node

    def _adjacency_at(self, round: int) -> np.ndarray:
        if round != self._round:
            graph = random_regular_at(self.nodes, self.degree, self.seed, round)
            rows = [sorted(graph[i]) for i in range(self.nodes)]
            self._adjacency = np.array(rows, dtype=np.int64).reshape(self.nodes, self.degree)
            self._round = round
        return self._adjacency
