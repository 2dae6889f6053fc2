"""Topologies fixed in advance: the same graph every round, or one changed on a schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import networkx as nx

from dlactor.topology.mixing import metropolis_hastings_row

if TYPE_CHECKING:
    from dlactor.churn.availability import Availability

__all__ = ["Changes", "StaticTopology", "check_schedule"]


Changes = Mapping[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]


class StaticTopology:
    """Neighbours from a graph fixed in advance; Metropolis-Hastings weights from its degrees.

    With ``changes``, the graph changes at given rounds: ``changes[r]`` is the (edges added,
    edges removed) at the start of round r. Every node applies the same schedule to the same
    graph, so neighbour sets agree on both ends; weights follow the round's degrees. Without
    changes the graph is used as it is (the launcher's, shared by every forked node).

    With an ``availability`` schedule, a round's graph is the part of it between the nodes
    online in that round, and the weights are Metropolis-Hastings weights of that part (the
    degrees count online neighbours only): symmetric and doubly stochastic over the online
    nodes, so their average is preserved exactly.
    """

    #: Any node's neighbours and weights can be asked for, not only this node's.
    sees_every_node = True
    #: The round's graph and weights are over the online nodes (the node need not filter).
    handles_availability = True

    def __init__(
        self,
        *,
        graph: nx.Graph,
        changes: Changes | None = None,
        availability: Availability | None = None,
    ) -> None:
        self.availability = availability
        self._start = graph
        self._changes = dict(sorted((changes or {}).items()))
        self._round = 0
        self._graph = graph.copy() if self._changes else graph

    def graph_at(self, round: int) -> nx.Graph:
        """The graph of ``round`` (kept for the latest round asked, replayed if asked earlier)."""
        if not self._changes:
            return self._graph
        if round < self._round:
            self._round, self._graph = 0, self._start.copy()
        for r, (added, removed) in self._changes.items():
            if self._round < r <= round:
                self._graph.remove_edges_from(removed)
                self._graph.add_edges_from(added)
        self._round = max(self._round, round)
        return self._graph

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        return frozenset(self._online_neighbours(node, round))

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        peers = self._online_neighbours(node, round)
        if self.availability is None:  # every node's degree is the graph's: no lists built
            graph = self.graph_at(round)
            degrees = {j: graph.degree[j] for j in peers}
        else:
            degrees = {j: len(self._online_neighbours(j, round)) for j in peers}
        degrees[node] = len(peers)
        return metropolis_hastings_row(node, degrees)

    def _online_neighbours(self, node: int, round: int) -> list[int]:
        """``node``'s neighbours in ``round`` that are online then (none if it is not)."""
        graph = self.graph_at(round)
        if self.availability is None:
            return list(graph.neighbors(node))
        if not self.availability.online(node, round):
            return []
        return [j for j in graph.neighbors(node) if self.availability.online(j, round)]


def check_schedule(graph: nx.Graph, changes: Changes, rounds: int) -> None:
    """ValueError naming the first change that cannot apply: a round past the run, a node
    outside it, a self loop, removing an edge that is not there or adding one that is.
    (A change may disconnect the graph: that is an experiment, not an error.)"""
    current = graph.copy()
    n = graph.number_of_nodes()
    for r, (added, removed) in sorted(changes.items()):
        where = f"schedule, round {r}"
        if r >= rounds:
            raise ValueError(f"{where}: the run has only rounds 0..{rounds - 1}")
        for u, v in [*added, *removed]:
            if not (0 <= u < n and 0 <= v < n) or u == v:
                raise ValueError(
                    f"{where}: edge [{u}, {v}] is not an edge between two of the {n} nodes"
                )
        for u, v in removed:
            if not current.has_edge(u, v):
                raise ValueError(f"{where}: cannot remove [{u}, {v}]: no such edge then")
            current.remove_edge(u, v)
        for u, v in added:
            if current.has_edge(u, v):
                raise ValueError(f"{where}: cannot add [{u}, {v}]: the edge is already there")
            current.add_edge(u, v)
