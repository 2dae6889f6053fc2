"""Mixing weights for gossip averaging.

Metropolis-Hastings weights (Xiao and Boyd, 2004), as D-PSGD in decentralizepy uses them::

    w_ij = 1 / (1 + max(d_i, d_j))     for every neighbour j of i
    w_ii = 1 - sum_j w_ij

They need only the degrees of a node and of its neighbours, so a node computes its own row
locally (:func:`metropolis_hastings_row`, the one place the formula is written). On a
connected graph the resulting matrix is symmetric, doubly stochastic, non-negative, has a
strictly positive diagonal, and hence a positive spectral gap.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import numpy as np

__all__ = [
    "metropolis_hastings",
    "metropolis_hastings_row",
    "mixing_matrix",
    "spectral_gap",
]


def metropolis_hastings_row(node: int, degrees: Mapping[int, int]) -> dict[int, float]:
    """Row ``node`` of the Metropolis-Hastings matrix, keyed by node id (itself included).

    ``degrees[node]`` is the node's own degree; every other key is a neighbour, mapped to that
    neighbour's degree. Listing fewer neighbours than the degree (e.g. some were not heard from)
    is allowed: the missing weight stays on the node itself.
    """
    if node not in degrees:
        raise ValueError(f"degrees must include the node itself ({node})")
    own = degrees[node]
    neighbours = {peer: degree for peer, degree in degrees.items() if peer != node}
    if own < len(neighbours):
        raise ValueError(
            f"node {node} has degree {own} but {len(neighbours)} neighbours were given"
        )
    bad = sorted(peer for peer, degree in neighbours.items() if degree < 1)
    if bad:
        raise ValueError(f"neighbours {bad} of node {node} have degree < 1")
    weights = {peer: 1.0 / (1.0 + max(own, degree)) for peer, degree in neighbours.items()}
    row = {node: 1.0 - sum(weights.values()), **weights}
    return dict(sorted(row.items()))


def metropolis_hastings(graph: nx.Graph) -> dict[int, dict[int, float]]:
    """``W[i][j]`` for every node ``i`` and every ``j`` in ``N(i) + {i}``."""
    if nx.number_of_selfloops(graph):
        raise ValueError("the graph has self loops; mixing weights need a simple graph")
    degree = dict(graph.degree)
    matrix: dict[int, dict[int, float]] = {}
    for node in sorted(graph.nodes):
        local = {node: degree[node], **{peer: degree[peer] for peer in graph[node]}}
        matrix[node] = metropolis_hastings_row(node, local)
    return matrix


def mixing_matrix(graph: nx.Graph) -> np.ndarray:
    """The dense ``n x n`` Metropolis-Hastings matrix of a graph on the nodes ``0..n-1``."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError("graph nodes must be the integers 0..n-1 to build a dense matrix")
    dense = np.zeros((n, n), dtype=np.float64)
    for i, row in metropolis_hastings(graph).items():
        for j, weight in row.items():
            dense[i, j] = weight
    return dense


def spectral_gap(W: np.ndarray) -> float:
    """``1 - |lambda_2|``: one minus the second largest eigenvalue modulus of ``W``.

    Positive for the Metropolis-Hastings matrix of a connected graph; 1.0 for a single node.
    """
    matrix = np.asarray(W, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"W must be a non-empty square matrix, got shape {matrix.shape}")
    if matrix.shape[0] == 1:
        return 1.0
    if np.allclose(matrix, matrix.T):
        moduli = np.abs(np.linalg.eigvalsh(matrix))
    else:
        moduli = np.abs(np.linalg.eigvals(matrix))
    second = float(np.sort(moduli)[-2])
    return 1.0 - second
