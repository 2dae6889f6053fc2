"""A static topology that changes at run time: ``[[topology.schedule]]`` adds and removes
edges at given rounds, the same on every node."""

from __future__ import annotations

import pytest
import torch

from dlactor.config import ConfigError, apply_overrides, validate_config
from dlactor.launch.plan import make_plan
from dlactor.sharing.ops import flatten
from dlactor.testing import run_in_memory
from dlactor.topology.static import StaticTopology
from tests.conftest import SMALL

RING = {"kind": "ring"}


def plan_with(schedule: list[dict], **topology: object):  # type: ignore[no-untyped-def]
    data = apply_overrides(SMALL, ["nodes=6", "rounds=6", "training.lr=0"])
    data["topology"] = {**RING, **topology, "schedule": schedule}
    return make_plan(validate_config(data))


async def test_nodes_see_the_edges_change_at_the_scheduled_rounds() -> None:
    plan = plan_with([{"round": 2, "add": [[0, 3]], "remove": [[0, 1]]},
                      {"round": 4, "add": [[0, 1]]}])  # fmt: skip
    records = await run_in_memory(plan)
    peers: dict[int, list[int]] = {}
    seen = []
    for rec in records[0]:
        peers[0] = rec.get("peers", peers.get(0, []))
        seen.append(peers[0])
    assert seen == [[1, 5], [1, 5], [3, 5], [3, 5], [1, 3, 5], [1, 3, 5]]
    one = [rec.get("peers") for rec in records[1]]
    assert one[2] == [2]  # node 1 lost node 0 in round 2, with node 0
    # the weights follow the round's degrees (Metropolis-Hastings: 1 / (1 + max degree)):
    # node 0 has degree 3 from round 4 on, and before that 2 like everyone on the ring
    assert records[0][0]["weights"] == pytest.approx([1 / 3, 1 / 3])
    assert records[0][4]["weights"] == pytest.approx([1 / 4, 1 / 4, 1 / 4])


async def test_averaging_stays_exact_when_the_graph_changes() -> None:
    plan = plan_with([{"round": 3, "remove": [[2, 3]], "add": [[0, 3], [1, 4]]}])
    models = [plan.config.model.build(plan.dataset, seed=9 + i) for i in range(6)]
    x0 = torch.stack([flatten(m.parameters()).double() for m in models])
    await run_in_memory(plan, models=models)
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-6)


def test_graph_at_replays_from_the_start_for_an_earlier_round() -> None:
    plan = plan_with([{"round": 1, "remove": [[0, 1]]}])
    sched = StaticTopology(graph=plan.graph, changes={1: ([], [(0, 1)])})
    assert not sched.graph_at(3).has_edge(0, 1)
    assert sched.graph_at(0).has_edge(0, 1)
    assert plan.graph.has_edge(0, 1)  # the plan's graph itself is never changed
    assert StaticTopology(graph=plan.graph).graph_at(5) is plan.graph  # no copy without changes


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([{"round": 9, "add": [[0, 3]]}], "only rounds 0..5"),
        ([{"round": 1, "remove": [[0, 3]]}], "no such edge"),
        ([{"round": 1, "add": [[0, 1]]}], "already there"),
        ([{"round": 1, "add": [[0, 0]]}], "not an edge between two"),
        ([{"round": 1, "add": [[0, 6]]}], "not an edge between two"),
        ([{"round": 1, "add": [[0, 3]]}, {"round": 1, "add": [[1, 4]]}], "same round"),
        ([{"round": 0, "add": [[0, 3]]}], "greater than or equal to 1"),
        ([{"round": 1, "add": [[0, 3]], "drop": [[1, 2]]}], "Extra inputs"),
    ],
)
def test_a_schedule_that_cannot_apply_is_a_config_error_naming_topology(
    schedule: list[dict], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"topology(\.schedule)?[.\d\w]*:.*") as info:
        plan_with(schedule)
    assert message in str(info.value)
