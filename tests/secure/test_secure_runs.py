"""Whole secure runs on the in-memory transport: the same learning as plain full sharing
(to the fixed point's rounding), the same bytes, every topology, FedAvg's server, and the
configs it refuses."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from dlactor.config import ConfigError
from dlactor.launch.plan import Plan, make_plan
from dlactor.messages import Register, Start
from dlactor.node.node import Node, Record
from dlactor.sharing.ops import flatten
from dlactor.sharing.secure import MASKED
from dlactor.testing import build_network, build_services, run_nodes
from dlactor.wire.codec import decode, encode
from tests.algorithms.servers import server_config
from tests.conftest import small_config, small_plan

F = 26  # the default fraction_bits
U = 2.0**-24  # float32's unit roundoff


async def run(plan: Plan) -> tuple[dict[int, list[Record]], list[Node]]:
    records: dict[int, list[Record]] = defaultdict(list)
    net, nodes = build_network(plan, on_round=lambda rec: records[rec["node"]].append(rec))
    actors: list[Any] = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await run_nodes(actors)
    return records, nodes


def vectors(nodes: list[Node], n: int) -> list[torch.Tensor]:
    return [flatten(node.model.parameters()) for node in nodes[:n]]


def final_accuracy(records: dict[int, list[Record]], n: int) -> float:
    return float(np.mean([records[i][-1]["test_acc"] for i in range(n)]))


async def test_secure_and_plain_runs_learn_the_same_to_the_fixed_points_rounding() -> None:
    """20 rounds on a static 3-regular graph with training: the same accuracy to 3 decimals,
    the same bytes on the wire, and models within the bound docs/secure.md derives (per
    round d x 2**-(f+1) for the fixed point plus a few float32 roundings, which training then
    carries; a run that sums in float64 instead of float32 drifts as far, see the docs)."""
    plain = small_plan("rounds=20", "evaluation.every=20")
    secure = small_plan("rounds=20", "evaluation.every=20", "sharing.kind=secure")
    (rp, np_), (rs, ns) = await run(plain), await run(secure)
    assert round(final_accuracy(rp, 8), 3) == round(final_accuracy(rs, 8), 3)
    gap = max(
        float((a - b).abs().max()) for a, b in zip(vectors(np_, 8), vectors(ns, 8), strict=True)
    )
    assert 0 < gap <= 1e-5
    for i in range(8):
        assert [r["bytes_sent"] for r in rp[i]] == [r["bytes_sent"] for r in rs[i]]
        assert all(r["secure_bytes_sent"] == 0 and not r["secure_skipped"] for r in rs[i])


async def test_without_training_the_models_differ_by_at_most_the_rounding_bound() -> None:
    """lr 0: rounds are pure averaging, a contraction, so after R rounds the secure and plain
    models differ by at most R x (d 2**-(f+1) + (d + 2) u max|x|): the fixed point's rounding
    of d terms, plus float32's roundings of both sums."""
    rounds, d = 20, 3
    plain = small_plan(f"rounds={rounds}", "training.lr=0")
    secure = small_plan(f"rounds={rounds}", "training.lr=0", "sharing.kind=secure")
    (_, np_), (_, ns) = await run(plain), await run(secure)
    peak = max(float(v.abs().max()) for v in vectors(np_, 8))
    bound = rounds * (d * 2.0 ** -(F + 1) + (d + 2) * U * peak)
    gap = max(
        float((a - b).abs().max()) for a, b in zip(vectors(np_, 8), vectors(ns, 8), strict=True)
    )
    assert gap <= bound


@pytest.mark.parametrize("topology", ["dynamic_regular", "peer_sampler", "gossip"])
async def test_dynamic_topologies_run_secure_and_count_their_rosters(topology: str) -> None:
    plan = small_plan("rounds=4", f"topology.kind={topology}", "sharing.kind=secure")
    records, _ = await run(plan)
    rows = [r for i in range(8) for r in records[i]]
    assert len(rows) == 32 and all(not r["secure_rejected"] for r in rows)
    assert all(r["test_acc"] > 0 for i in range(8) for r in records[i] if "test_acc" in r)
    if topology == "dynamic_regular":  # every node draws the same graph: no roster sent
        assert all(r["secure_bytes_sent"] == 0 for r in rows)
    else:  # each node told its neighbours its roster, one small message each
        assert all(0 < r["secure_bytes_sent"] <= 100 * r["degree"] for r in rows if r["degree"])
        # a node with one neighbour (gossip may settle on fewer) kept its model: recorded
        assert all(r["secure_skipped"] == (r["degree"] < 2) for r in rows)


async def test_a_peer_sampler_run_costs_under_five_percent_more_bytes() -> None:
    plain = small_plan("rounds=3", "topology.kind=peer_sampler")
    secure = small_plan("rounds=3", "topology.kind=peer_sampler", "sharing.kind=secure")
    (rp, _), (rs, _) = await run(plain), await run(secure)
    sent = [sum(r["bytes_sent"] for i in range(8) for r in rec[i]) for rec in (rp, rs)]
    assert sent[0] < sent[1] <= 1.05 * sent[0]


async def test_fedavg_server_gets_only_masked_words_and_averages_as_plain() -> None:
    base = ("nodes=6", "rounds=6", "algorithm.fraction=0.5", "evaluation.every=3")
    plain = make_plan(server_config("fedavg", *base))
    secure = make_plan(server_config("fedavg", *base, "sharing.kind=secure"))
    seen: list[torch.Tensor] = []
    rp, np_ = await run(plain)
    records: dict[int, list[Record]] = defaultdict(list)
    _, nodes = build_network(secure, on_round=lambda rec: records[rec["node"]].append(rec))
    server = nodes[-1]
    check = server.algorithm.check
    server.algorithm.check = lambda node, share: (  # type: ignore[method-assign]
        seen.append(share.payload.tensors[MASKED]),
        check(node, share),
    )[1]
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    assert len(seen) == 6 * 3 and all(t.dtype == torch.int32 for t in seen)
    assert [r["test_acc"] for r in rp[6] if "test_acc" in r] == pytest.approx(
        [r["test_acc"] for r in records[6] if "test_acc" in r], abs=1e-3
    )
    gap = float(
        (flatten(np_[-1].model.parameters()) - flatten(server.model.parameters())).abs().max()
    )
    assert gap <= 1e-5


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (("topology.kind=dynamic_regular", "topology.degree=1"), "topology.degree", "2 neighbours"),
        (("topology.kind=gossip", "topology.degree=1"), "topology.degree", "2 neighbours"),
        (("sharing.compression=zstd",), "sharing.compression", "uniformly random"),
        (
            ("topology.kind=ring", "topology.schedule=[{round=3, remove=[[0, 1]]}]"),
            "topology",
            "node 0 has 1 neighbour(s) from round 3",
        ),
    ],
)
def test_configs_a_secure_run_cannot_keep_are_refused_naming_the_field(
    overrides: tuple[str, ...], field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: .*{re.escape(words)}"):
        make_plan(small_config("sharing.kind=secure", *overrides))


@pytest.mark.parametrize(
    ("kind", "words"),
    [("epidemic", "sharing.kind: secure aggregation masks"), ("parameter_server", "sharing")],
)
def test_algorithms_without_a_maskable_average_refuse_secure_sharing(kind: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make_plan(server_config(kind, "sharing.kind=secure"))


def test_fedavg_with_one_client_per_round_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.fraction: 1 client per round"):
        make_plan(
            server_config("fedavg", "nodes=6", "algorithm.fraction=0.1", "sharing.kind=secure")
        )


def test_register_and_start_carry_the_agreement_keys() -> None:
    reg = Register(3, "127.0.0.1", 7000, bytes(range(32)))
    assert decode(bytearray(b"".join(encode(reg))[4:])) == reg
    assert decode(bytearray(b"".join(encode(Register(3, "h", 1)))[4:])) == Register(3, "h", 1)
    start = Start({0: ("h", 1), 1: ("h", 2)}, 1.5, {0: bytes(32)}, {1: bytes(range(32))})
    assert decode(bytearray(b"".join(encode(start))[4:])) == start


async def test_on_an_emulated_network_masks_cost_no_virtual_time_and_rosters_one_exchange() -> None:
    """configs/wan.toml (virtual clock, a device profile): on its static graph a secure run
    has the plain run's timeline exactly; on the peer sampler its rosters add time (they are
    waited for after training), and the learning is the same."""
    from pathlib import Path

    from dlactor.config import load_config
    from dlactor.testing import run_in_memory

    wan = Path(__file__).parents[2] / "configs" / "wan.toml"

    async def timeline(*overrides: str) -> tuple[list[float], float]:
        plan = make_plan(load_config(wan, ["rounds=4", *overrides]))
        records = await run_in_memory(plan)
        rows = [records[i][-1] for i in range(plan.config.nodes)]
        return [r["t_virtual"] for r in rows], float(np.mean([r["test_acc"] for r in rows]))

    assert await timeline() == await timeline("sharing.kind=secure")
    (plain, acc), (secure, acc_secure) = (
        await timeline("topology.kind=peer_sampler"),
        await timeline("topology.kind=peer_sampler", "sharing.kind=secure"),
    )
    assert acc_secure == pytest.approx(acc, abs=0.01) and max(secure) > max(plain)
