"""The natural partition: whole groups (writers, roles, users) dealt to nodes, evenly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.data.partition import natural


def grouped(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Group ids, one per sample, in a shuffled order (groups are not contiguous)."""
    groups = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    return np.random.default_rng(seed).permutation(groups)


def check_partition(groups: np.ndarray, parts: list[np.ndarray], nodes: int) -> None:
    assert len(parts) == nodes
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)
        assert len(part) > 0
    together = np.concatenate(parts)
    assert np.array_equal(np.sort(together), np.arange(len(groups)))
    owners: dict[int, int] = {}
    for node, part in enumerate(parts):
        for g in np.unique(groups[part]).tolist():
            assert owners.setdefault(g, node) == node, f"group {g} split across nodes"


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    nodes=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_group_lands_whole_on_one_node_and_the_nodes_cover_all_samples(
    sizes: list[int], nodes: int, seed: int
) -> None:
    groups = grouped(sizes, seed)
    if len(sizes) < nodes:
        with pytest.raises(ValueError, match="too few groups"):
            natural(groups, nodes, seed)
        return
    parts = natural(groups, nodes, seed)
    check_partition(groups, parts, nodes)
    loads = [len(p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes)


def test_loads_are_balanced_greedily_by_sample_count() -> None:
    sizes = [50, 40, 30, 20, 10, 10, 10, 10, 5, 5]
    parts = natural(grouped(sizes), nodes=3, seed=0)
    assert sorted(len(p) for p in parts) == [60, 65, 65]


def test_as_many_groups_as_nodes_gives_one_group_per_node() -> None:
    groups = grouped([3, 9, 1, 4])
    parts = natural(groups, nodes=4, seed=1)
    assert sorted(len(p) for p in parts) == [1, 3, 4, 9]
    assert all(len(np.unique(groups[p])) == 1 for p in parts)


def test_the_same_seed_gives_the_same_partition_and_seeds_break_ties_differently() -> None:
    groups = grouped([7] * 12)
    first = natural(groups, nodes=4, seed=11)
    again = natural(groups, nodes=4, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    layouts = {
        tuple(tuple(np.unique(groups[p]).tolist()) for p in natural(groups, 4, seed))
        for seed in range(10)
    }
    assert len(layouts) > 1


def test_group_ids_need_not_be_contiguous() -> None:
    groups = np.array([17, 5, 17, 900, 5, 5], dtype=np.int64)
    parts = natural(groups, nodes=3, seed=0)
    assert sorted(groups[p].tolist() for p in parts) == [[5, 5, 5], [17, 17], [900]]


def test_fewer_groups_than_nodes_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match=r"too few groups: 2 groups .* 3 nodes"):
        natural(np.array([0, 0, 1]), nodes=3, seed=0)


@pytest.mark.parametrize(
    "groups",
    [np.zeros((2, 2), dtype=np.int64), np.array([0, -1]), np.array([0.0, 1.0])],
    ids=["2-d", "negative", "float"],
)
def test_groups_must_be_a_flat_array_of_non_negative_ids(groups: np.ndarray) -> None:
    with pytest.raises(ValueError, match="groups must be"):
        natural(groups, nodes=1, seed=0)


def test_nodes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        natural(np.array([0, 1]), nodes=0, seed=0)
