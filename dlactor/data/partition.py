"""Partition a dataset among nodes: pure numpy, seeded, deterministic.

Every partitioner takes the labels of the training set and returns one array of sample
indices per node (int64, sorted ascending): the arrays are disjoint and together cover every
sample. Partitions are reproducible from ``seed`` alone, on every platform (numpy's PCG64).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

__all__ = ["dirichlet", "iid", "label_histogram", "natural", "shards"]

_DIRICHLET_TRIES = 1000


def _labels(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError("labels must be non-negative integers (class ids)")
    return array.astype(np.int64, copy=False)


def _check_nodes(nodes: int, samples: int, per_node: int = 1) -> None:
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    if samples < nodes * per_node:
        raise ValueError(
            f"too few samples: {samples} samples cannot give each of {nodes} nodes "
            f"{per_node} sample{'' if per_node == 1 else 's'}"
        )


def _finish(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def iid(labels: np.ndarray, nodes: int, seed: int) -> list[np.ndarray]:
    """A uniformly random split into ``nodes`` parts whose sizes differ by at most one."""
    count = len(_labels(labels))
    _check_nodes(nodes, count)
    order = np.random.default_rng(seed).permutation(count)
    return _finish(np.array_split(order, nodes))


def shards(labels: np.ndarray, nodes: int, shards_per_node: int, seed: int) -> list[np.ndarray]:
    """McMahan-style label shards: sort by label, cut, deal ``shards_per_node`` to each node.

    Indices are sorted by label (stably), cut into ``nodes * shards_per_node`` contiguous shards
    whose sizes differ by at most one, and each node gets ``shards_per_node`` shards drawn at
    random without replacement. A shard no longer than the smallest class spans at most two
    classes, so a node sees at most ``2 * shards_per_node`` classes (``shards_per_node`` when
    shard boundaries fall on class boundaries).
    """
    array = _labels(labels)
    if shards_per_node < 1:
        raise ValueError(f"shards_per_node must be >= 1, got {shards_per_node}")
    _check_nodes(nodes, len(array))
    if len(array) < nodes * shards_per_node:
        raise ValueError(
            f"too few samples: {len(array)} samples cannot be cut into {nodes} nodes x "
            f"{shards_per_node} shards = {nodes * shards_per_node} non-empty shards"
        )
    pieces = np.array_split(np.argsort(array, kind="stable"), nodes * shards_per_node)
    dealt = np.random.default_rng(seed).permutation(len(pieces)).reshape(nodes, shards_per_node)
    return _finish([np.concatenate([pieces[k] for k in row]) for row in dealt])


def _dirichlet_once(
    by_class: list[np.ndarray], nodes: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: each class's indices cut among the nodes in ``Dir(alpha)`` proportions."""
    buckets: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for members in by_class:
        shuffled = rng.permutation(members)
        proportions = rng.dirichlet(np.full(nodes, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for bucket, piece in zip(buckets, np.split(shuffled, cuts), strict=True):
            bucket.append(piece)
    return [np.concatenate(bucket) for bucket in buckets]


def dirichlet(
    labels: np.ndarray, nodes: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared among nodes in proportions ``~ Dir(alpha)``.

    Smaller ``alpha`` gives more skew (alpha -> infinity approaches an iid split). Draws are
    repeated (seeded, at most 1000 times) until every node holds at least ``min_size`` samples.
    """
    array = _labels(labels)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    _check_nodes(nodes, len(array), min_size)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(array == c) for c in np.unique(array)]
    for _ in range(_DIRICHLET_TRIES):
        parts = _dirichlet_once(by_class, nodes, alpha, rng)
        if min(len(part) for part in parts) >= min_size:
            return _finish(parts)
    raise ValueError(
        f"no Dirichlet split with alpha={alpha} gave each of {nodes} nodes >= {min_size} samples "
        f"(of {len(array)}) in {_DIRICHLET_TRIES} draws; raise alpha or lower min_size or nodes"
    )


def label_histogram(labels: np.ndarray, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Counts of each class on each node: an int64 array of shape ``(nodes, classes)``."""
    array = _labels(labels)
    classes = int(array.max()) + 1 if array.size else 0
    rows = [
        np.bincount(array[np.asarray(part, dtype=np.int64)], minlength=classes) for part in parts
    ]
    return np.array(rows, dtype=np.int64).reshape(len(parts), classes)


def natural(groups: np.ndarray, nodes: int, seed: int) -> list[np.ndarray]:
    """Each group (a writer, a speaking role, a user) goes whole to one node.

    Groups are shuffled (seeded), then dealt largest first (a stable sort, so the shuffle
    breaks ties) to the node holding the fewest samples so far (the lowest-numbered among
    equals). Every node gets at least one group, and the largest and smallest node differ by
    at most the size of the largest group. Fewer groups than nodes is an error.
    """
    array = np.asarray(groups)
    if array.ndim != 1 or (
        array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0)
    ):
        raise ValueError("groups must be a one-dimensional array of non-negative group ids")
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    ids, inverse, sizes = np.unique(array, return_inverse=True, return_counts=True)
    if len(ids) < nodes:
        raise ValueError(
            f"too few groups: {len(ids)} groups cannot give each of {nodes} nodes a whole "
            "group; use fewer nodes or another partition"
        )
    shuffled = np.random.default_rng(seed).permutation(len(ids))
    dealt = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    owner = np.empty(len(ids), dtype=np.int64)
    loads = [(0, node) for node in range(nodes)]
    for group in dealt:
        load, node = heapq.heappop(loads)
        owner[group] = node
        heapq.heappush(loads, (load + int(sizes[group]), node))
    sample_owner = owner[inverse]
    cuts = np.cumsum(np.bincount(sample_owner, minlength=nodes))[:-1]
    return _finish(np.split(np.argsort(sample_owner, kind="stable"), cuts))
