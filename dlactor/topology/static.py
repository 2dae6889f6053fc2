"""A topology that is the same graph every round."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from dlactor.topology.mixing import metropolis_hastings_row

__all__ = ["StaticTopology"]


class StaticTopology:
    """Neighbours from a fixed graph; Metropolis-Hastings weights from its degrees."""

    def __init__(self, *, graph: nx.Graph) -> None:
        self._graph = graph

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        return frozenset(self._graph.neighbors(node))

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        degrees = {j: self._graph.degree[j] for j in self._graph.neighbors(node)}
        degrees[node] = self._graph.degree[node]
        return metropolis_hastings_row(node, degrees)
