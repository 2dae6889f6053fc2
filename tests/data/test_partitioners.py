"""Partitioners: disjoint covers, sizes, label skew, determinism."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dlactor.data.digits import load_digits
from dlactor.data.partition import dirichlet, iid, label_histogram, shards

Partitioner = Callable[[np.ndarray, int, int], list[np.ndarray]]

DIGITS_LABELS = load_digits().y_train.numpy()
SMALLEST_DIGITS_CLASS = int(np.bincount(DIGITS_LABELS).min())

PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda labels, nodes, seed: iid(labels, nodes, seed),
    "shards": lambda labels, nodes, seed: shards(labels, nodes, 2, seed),
    "dirichlet": lambda labels, nodes, seed: dirichlet(labels, nodes, 0.5, seed),
}


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("nodes", [1, 7, 32])
def test_parts_are_disjoint_sorted_int64_and_cover_every_sample(name: str, nodes: int) -> None:
    parts = PARTITIONERS[name](DIGITS_LABELS, nodes, 0)

    assert len(parts) == nodes
    assert all(part.dtype == np.int64 and (np.diff(part) > 0).all() for part in parts)
    everything = np.concatenate(parts)
    assert len(everything) == len(DIGITS_LABELS)
    assert np.array_equal(np.sort(everything), np.arange(len(DIGITS_LABELS)))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_parts_are_a_function_of_the_seed(name: str) -> None:
    split = PARTITIONERS[name]

    first, again, other = (split(DIGITS_LABELS, 8, seed) for seed in (3, 3, 4))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("nodes", [1, 6, 10, 100])
def test_iid_part_sizes_differ_by_at_most_one(nodes: int) -> None:
    sizes = [len(part) for part in iid(DIGITS_LABELS, nodes, seed=0)]

    assert max(sizes) - min(sizes) <= 1


def test_iid_parts_see_every_class_in_about_the_global_proportion() -> None:
    histogram = label_histogram(DIGITS_LABELS, iid(DIGITS_LABELS, 4, seed=0))

    assert (histogram > 0).all()
    share = histogram / histogram.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(share, np.full_like(share, 0.1), atol=0.04)


@pytest.mark.parametrize(("nodes", "per_node"), [(10, 2), (32, 2), (8, 3), (20, 1)])
def test_shards_give_each_node_few_classes_on_digits(nodes: int, per_node: int) -> None:
    parts = shards(DIGITS_LABELS, nodes, per_node, seed=1)

    # Each shard is no longer than the smallest class, so it straddles at most one boundary.
    assert len(DIGITS_LABELS) / (nodes * per_node) <= SMALLEST_DIGITS_CLASS
    classes = (label_histogram(DIGITS_LABELS, parts) > 0).sum(axis=1)
    assert classes.max() <= 2 * per_node
    assert np.median(classes) <= per_node + 1


def test_shards_aligned_with_classes_give_each_node_exactly_its_shard_count_of_classes() -> None:
    labels = np.repeat(np.arange(10), 30)  # 10 classes of 30: 20 shards of 15 never straddle

    parts = shards(labels, 10, 2, seed=5)

    classes = (label_histogram(labels, parts) > 0).sum(axis=1)
    assert classes.max() <= 2
    assert classes.min() >= 1


def test_shards_cut_sorted_labels_into_contiguous_label_runs() -> None:
    labels = np.array([3, 0, 2, 1, 0, 3, 1, 2])  # sorted stably: 1 4 | 3 6 | 2 7 | 0 5

    parts = shards(labels, 4, 1, seed=0)

    assert sorted(map(tuple, parts)) == [(0, 5), (1, 4), (2, 7), (3, 6)]


@pytest.mark.parametrize(("nodes", "per_node"), [(10, 2), (7, 3), (32, 2)])
def test_shards_node_sizes_differ_by_less_than_one_shard(nodes: int, per_node: int) -> None:
    sizes = [len(part) for part in shards(DIGITS_LABELS, nodes, per_node, seed=0)]

    shard = len(DIGITS_LABELS) // (nodes * per_node)
    assert max(sizes) - min(sizes) <= per_node < shard


def test_dirichlet_smaller_alpha_gives_more_label_skew() -> None:
    def mean_entropy(alpha: float) -> float:
        parts = dirichlet(DIGITS_LABELS, 10, alpha, seed=0)
        return float(np.mean([entropy(row) for row in label_histogram(DIGITS_LABELS, parts)]))

    skewed, balanced = mean_entropy(0.1), mean_entropy(100.0)

    assert skewed < balanced - 1.0
    assert balanced == pytest.approx(np.log(10), abs=0.05)


@pytest.mark.parametrize("min_size", [1, 30, 45])
def test_dirichlet_gives_every_node_at_least_min_size_samples(min_size: int) -> None:
    unconstrained = dirichlet(DIGITS_LABELS, 16, 0.3, seed=2, min_size=0)
    assert min(len(part) for part in unconstrained) < 30  # so 30 and 45 need redraws

    parts = dirichlet(DIGITS_LABELS, 16, 0.3, seed=2, min_size=min_size)

    assert min(len(part) for part in parts) >= min_size


def test_dirichlet_gives_up_with_a_clear_message_when_min_size_is_unreachable() -> None:
    with pytest.raises(ValueError, match=r"alpha=0.01 .* >= 140 samples .* in 1000 draws"):
        dirichlet(DIGITS_LABELS, 10, 0.01, seed=0, min_size=140)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_refuses_a_non_positive_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet(DIGITS_LABELS, 4, alpha, seed=0)


@pytest.mark.parametrize(
    ("split", "match"),
    [
        (lambda: iid(np.zeros(5, dtype=np.int64), 6, 0), "5 samples cannot give each of 6 nodes"),
        (lambda: shards(np.zeros(5, dtype=np.int64), 3, 2, 0), "6 non-empty shards"),
        (lambda: dirichlet(np.zeros(50, dtype=np.int64), 6, 1.0, 0, 10), "each of 6 nodes 10"),
        (lambda: iid(np.zeros(5, dtype=np.int64), 0, 0), "nodes must be >= 1"),
    ],
)
def test_too_few_samples_for_the_request_is_a_clear_error(
    split: Callable[[], object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        split()


@pytest.mark.parametrize(
    ("labels", "match"),
    [(np.zeros((2, 2), dtype=np.int64), "one-dimensional"), (np.array([0.5, 1.0]), "integers")],
)
def test_labels_must_be_a_vector_of_class_ids(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        iid(labels, 1, 0)


def test_label_histogram_counts_each_class_on_each_node() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])

    histogram = label_histogram(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])])

    assert histogram.dtype == np.int64
    assert histogram.tolist() == [[1, 0, 1], [0, 2, 2]]
