"""A topology plugin: a ring over a fresh random order of the nodes every round.

Every node draws round r's order itself from the run's seed and r, so all nodes agree on the
ring without a message: j is i's neighbour exactly when i is j's. Each node has 2
neighbours in every round (the ring needs 3 nodes or more) and Metropolis-Hastings weights
of 1/3 for itself and each of them. docs/plugins.md walks through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import networkx as nx
import numpy as np

from dlactor import NodeEnv, TopologySettings, register


class RotatingRing:
    """The strategy a node runs: who it exchanges with in a round, with what weights."""

    #: Any node's neighbours can be asked for, not only this node's own (a secure sender
    #: then works out its receivers' rosters itself).
    sees_every_node = True

    def __init__(self, *, nodes: int, seed: int) -> None:
        self.nodes, self.seed = nodes, seed
        self._round, self._position = -1, np.empty(0, dtype=np.int64)
        self._order = np.empty(0, dtype=np.int64)

    def _draw(self, round: int) -> None:
        if round != self._round:  # one draw per round, whoever asks
            rng = np.random.default_rng([self.seed, round])
            self._order = rng.permutation(self.nodes)
            self._position = np.argsort(self._order)
            self._round = round

    async def neighbors(self, node: int, round: int) -> frozenset[int]:
        self._draw(round)
        at = int(self._position[node])
        before, after = self._order[at - 1], self._order[(at + 1) % self.nodes]
        return frozenset({int(before), int(after)})

    async def weights(self, node: int, round: int) -> Mapping[int, float]:
        peers = await self.neighbors(node, round)
        return {node: 1 / 3, **dict.fromkeys(peers, 1 / 3)}


def ring_at(nodes: int, seed: int, round: int) -> nx.Graph:
    """Round ``round``'s ring as a graph (the launcher writes round 0's as topology.edges)."""
    order = np.random.default_rng([seed, round]).permutation(nodes).tolist()
    return nx.cycle_graph(order)


@register("topology")
class RotatingRingSettings(TopologySettings):
    """``[topology] kind = "rotating_ring"``: no settings of its own."""

    kind: Literal["rotating_ring"] = "rotating_ring"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        return ring_at(nodes, seed, 0)

    def check(self, graph: nx.Graph, rounds: int) -> None:
        if graph.number_of_nodes() < 3:
            raise ValueError("a ring needs at least 3 nodes")

    def build(self, env: NodeEnv) -> RotatingRing:
        return RotatingRing(nodes=env.nodes, seed=env.seed)
