"""The communication-efficient strategies on the in-memory transport: random, top-k,
quantize, CHOCO-SGD, and lossless compression around any of them.

With learning rate 0, D-PSGD is pure gossip averaging, so what each strategy does to the
node models is visible directly:

- full sharing, and random sampling of every parameter (budget 1), reach the exact average;
- random / top-k at 10% average each coordinate over the nodes that sent it, with weights
  renormalized over those (not doubly stochastic), so the models still agree but their
  average drifts: bound stated per test;
- quantized sharing adds unbiased noise of at most one quantization step per message;
- CHOCO-SGD keeps the average exactly (its consensus step uses doubly stochastic weights)
  and reaches consensus as its public estimates catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import torch

from dlactor.config import ConfigError
from dlactor.launch.plan import Plan
from dlactor.messages import Payload, Share
from dlactor.sharing.lossless import pack, unpack
from dlactor.sharing.lossy import Part, Quantizer, RandomK, TopK, budget_count
from dlactor.sharing.ops import flatten, partial_average, weighted_sum
from dlactor.testing import build_network, run_nodes
from dlactor.wire.codec import encode, encoded_size
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan

NODES = 8


def spread_and_drift(plan: Plan, rounds: int) -> tuple[float, float]:
    """Run ``rounds`` of pure gossip (lr 0) from different initial models; return the
    largest distance of a model to the mean, and how far the mean moved, both relative to
    the initial largest distance to the mean."""
    models = [plan.config.model.build(plan.dataset, seed=200 + i) for i in range(NODES)]
    x0 = torch.stack([flatten(m.parameters()).double() for m in models])

    async def go() -> None:
        _, nodes = build_network(plan, models=models)
        for node in nodes:
            await node.start()
        await run_nodes(nodes)

    asyncio.run(go())
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    scale = (x0 - x0.mean(0)).norm(dim=1).max().item()
    spread = (x - x.mean(0)).norm(dim=1).max().item() / scale
    drift = (x.mean(0) - x0.mean(0)).norm().item() / scale
    return spread, drift


def gossip_plan(rounds: int, *sharing: str) -> Plan:
    return small_plan(f"nodes={NODES}", "topology.degree=3", "training.lr=0",
                      f"rounds={rounds}", *sharing)  # fmt: skip


@pytest.mark.parametrize(
    "sharing", [["sharing.kind=full"], ["sharing.kind=random", "sharing.budget=1.0"]]
)
def test_full_and_random_with_every_parameter_reach_the_exact_average(sharing: list[str]) -> None:
    spread, drift = spread_and_drift(gossip_plan(40, *sharing), 40)
    assert spread < 1e-5 and drift < 1e-6


@pytest.mark.parametrize(
    ("sharing", "spread_bound", "drift_bound"),
    [
        # 10% of the coordinates per message, averaged over who sent them: consensus holds
        # (every coordinate is mixed often), the average moves by a bounded fraction
        (["sharing.kind=random", "sharing.budget=0.1"], 0.1, 0.5),
        (["sharing.kind=topk", "sharing.budget=0.1"], 0.1, 0.5),
        (["sharing.kind=topk", "sharing.budget=0.1", "sharing.per_layer=true"], 0.1, 0.5),
        # unbiased noise of at most one step (range / (2^b - 1) per bucket) per message
        (["sharing.kind=quantize", "sharing.bits=8"], 0.01, 0.01),
        (["sharing.kind=quantize", "sharing.bits=4"], 0.05, 0.1),
        # 1 bit: the noise is as large as each bucket's range; the models still pull together,
        # but the average random-walks (no bound on drift beyond the range itself)
        (["sharing.kind=quantize", "sharing.bits=1"], 0.5, 3.0),
    ],
)
def test_compressed_strategies_reach_approximate_consensus(
    sharing: list[str], spread_bound: float, drift_bound: float
) -> None:
    spread, drift = spread_and_drift(gossip_plan(80, *sharing), 80)
    assert spread < spread_bound and drift < drift_bound, (spread, drift)


@pytest.mark.parametrize(
    "sharing",
    [
        [
            "sharing.kind=choco",
            "sharing.compressor=topk",
            "sharing.budget=0.3",
            "sharing.gamma=0.8",
        ],
        [
            "sharing.kind=choco",
            "sharing.compressor=random",
            "sharing.budget=0.5",
            "sharing.gamma=0.5",
        ],
        ["sharing.kind=choco", "sharing.compressor=quantize", "sharing.bits=4"],
    ],
)
def test_choco_keeps_the_exact_average_and_converges(sharing: list[str]) -> None:
    spread, drift = spread_and_drift(gossip_plan(60, *sharing), 60)  # 0.003 at most here
    assert drift < 1e-5  # doubly stochastic consensus steps: the mean cannot move
    assert spread < 0.02, spread


def test_choco_needs_a_static_topology() -> None:
    with pytest.raises(ConfigError, match=r"sharing: choco .* static topology"):
        small_plan("sharing.kind=choco", "topology.kind=peer_sampler", "topology.degree=3")


# --- exact byte accounting ----------------------------------------------------------------

STRATEGIES = [
    ["sharing.kind=full"],
    ["sharing.kind=random"],
    ["sharing.kind=topk"],
    ["sharing.kind=topk", "sharing.per_layer=true"],
    ["sharing.kind=quantize", "sharing.bits=8"],
    ["sharing.kind=quantize", "sharing.bits=4"],
    ["sharing.kind=quantize", "sharing.bits=1", "sharing.bucket_size=64"],
    ["sharing.kind=choco"],
    ["sharing.kind=choco", "sharing.compressor=random"],
    ["sharing.kind=topk", "sharing.compression=lz4"],
    ["sharing.kind=quantize", "sharing.bits=4", "sharing.compression=zstd"],
]


def measured(sharing: list[str]) -> tuple[Plan, list[dict], dict[tuple[int, int], int]]:  # type: ignore[type-arg]
    """Records of a 6-node run, and the encoded size of every Share each node sent."""
    plan = small_plan("nodes=6", "topology.degree=3", "rounds=4", "model.hidden=[256]",
                      "training.local_steps=1", *sharing)  # fmt: skip
    records: list[dict] = []  # type: ignore[type-arg]
    sizes: dict[tuple[int, int], int] = {}

    async def go() -> None:
        _, nodes = build_network(plan, on_round=records.append)
        for node in nodes:
            outgoing = node.sharing.outgoing

            async def spy(ctx, _out=outgoing, _node=node.node):  # type: ignore[no-untyped-def]
                payload = await _out(ctx)
                sizes[(_node, ctx.round)] = encoded_size(encode(Share(_node, ctx.round, payload)))
                return payload

            node.sharing.outgoing = spy  # type: ignore[method-assign]
            await node.start()
        await run_nodes(nodes)

    asyncio.run(go())
    return plan, records, sizes


@pytest.mark.parametrize("sharing", STRATEGIES)
def test_recorded_bytes_are_exactly_what_the_codec_produced(sharing: list[str]) -> None:
    _, records, sizes = measured(sharing)
    for rec in records:
        expected = rec["degree"] * sizes[(rec["node"], rec["round"])]
        assert rec["bytes_sent"] == expected, rec
    by_sender: dict[tuple[int, int], int] = {}
    for rec in records:  # what each node received is what its neighbours' codecs produced
        by_sender[(rec["node"], rec["round"])] = rec["bytes_recv"]
    assert sum(by_sender.values()) == sum(r["bytes_sent"] for r in records)


@pytest.mark.parametrize(
    ("sharing", "ceiling", "why"),
    [
        (["sharing.kind=random", "sharing.budget=0.1"], 0.102, "10% values + the seed"),
        (
            ["sharing.kind=topk", "sharing.budget=0.1"],
            0.102 + 0.025 + 0.001,
            "10% values + about one varint byte per index (2.5% of full)",
        ),
        (["sharing.kind=choco", "sharing.budget=0.1"], 0.128, "as top-k"),
        (
            ["sharing.kind=quantize", "sharing.bits=8"],
            0.25 + 8 / 512 / 4 + 0.002,
            "8 of 32 bits + 8 bytes per 512-element bucket",
        ),
        (
            ["sharing.kind=quantize", "sharing.bits=4"],
            0.125 + 8 / 512 / 4 + 0.002,
            "4 of 32 bits + 8 bytes per bucket",
        ),
    ],
)
def test_a_budgeted_message_is_its_fraction_of_full_sharing(
    sharing: list[str], ceiling: float, why: str
) -> None:
    _, _, sizes = measured(sharing)
    _, _, full = measured(["sharing.kind=full"])
    for key, size in sizes.items():
        assert size <= ceiling * full[key], f"{why}: {size} > {ceiling} x {full[key]}"
    assert min(sizes.values()) >= 0.5 * ceiling * min(full.values())  # and not empty


# --- the pure pieces -----------------------------------------------------------------------


def test_partial_average_renormalizes_over_the_senders_of_each_coordinate() -> None:
    own = torch.tensor([1.0, 1.0, 1.0, 1.0])
    parts = [(0.25, torch.tensor([0, 1]), torch.tensor([5.0, 9.0])),
             (0.25, torch.tensor([1]), torch.tensor([3.0]))]  # fmt: skip
    out = partial_average(own, 0.5, parts)
    # coordinate 0: (0.5*1 + 0.25*5) / 0.75; 1: (0.5 + 0.25*9 + 0.25*3) / 1; 2, 3: own
    assert out.tolist() == pytest.approx([1.75 / 0.75, 3.5, 1.0, 1.0])


def test_partial_average_of_dense_parts_is_the_weighted_sum() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = {i: torch.randn(50, generator=g) for i in range(4)}
    weights = {0: 0.4, 1: 0.2, 2: 0.3, 3: 0.1}
    parts = [(weights[i], None, vectors[i]) for i in (1, 2, 3)]
    dense = partial_average(vectors[0], weights[0], parts)
    assert torch.allclose(dense, weighted_sum(vectors, weights), atol=1e-6)


def test_random_k_receivers_draw_the_senders_mask_from_the_seed_alone() -> None:
    x = torch.randn(1000)
    sender = RandomK(budget=0.1, seed=7, node=3)
    payload, part = sender.encode(x, round=5)
    assert set(payload.tensors) == {"values"} and set(payload.meta) == {"seed"}
    got = RandomK(budget=0.1, seed=999, node=0).decode(payload, 1000)  # another node
    assert got.indices is not None and part.indices is not None
    assert torch.equal(got.indices, part.indices) and torch.equal(got.values, x[got.indices])
    other, _ = sender.encode(x, round=6)
    assert other.meta["seed"] != payload.meta["seed"]  # a new mask every round


def test_top_k_sends_the_largest_scores_and_recovers_indices_exactly() -> None:
    x = torch.randn(1000)
    payload, part = TopK(budget=0.05).encode(x, round=0)
    got = TopK(budget=0.05).decode(payload, 1000)
    assert got.indices is not None and part.indices is not None
    assert torch.equal(got.indices, part.indices)
    assert set(got.indices.tolist()) == set(x.abs().topk(50).indices.tolist())
    per_layer = TopK(budget=0.1, layers=[900, 100])
    _, part = per_layer.encode(x, round=0)
    assert part.indices is not None
    assert (part.indices < 900).sum() == 90 and (part.indices >= 900).sum() == 10


def test_a_quantized_part_is_what_the_receiver_decodes() -> None:
    x = torch.randn(3000)
    payload, part = Quantizer(bits=3, bucket_size=256, seed=1).encode(x, round=0)
    got = Quantizer(bits=3, bucket_size=256, seed=2).decode(payload, 3000)
    assert got.indices is None and torch.equal(got.values, part.values)
    step = (x.max() - x.min()) / 7
    assert (got.values - x).abs().max() <= step


def _flip_meta(payload: Payload, **meta: object) -> Payload:
    return Payload(payload.tensors, {**payload.meta, **meta})


@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda: (RandomK(budget=0.1, seed=0, node=0), torch.randn(100)), 100),
        (lambda: (TopK(budget=0.1), torch.randn(100)), 100),
    ],
)
def test_hostile_sparse_payloads_are_refused(make: Callable, n: int) -> None:  # type: ignore[type-arg]
    compressor, x = make()
    payload, _ = compressor.encode(x, round=0)
    bad = [
        Payload({**payload.tensors, "values": payload.tensors["values"][:-1]}, payload.meta),
        Payload({**payload.tensors, "values": payload.tensors["values"].double()}, payload.meta),
        _flip_meta(payload, extra=1),
        Payload({**payload.tensors, "more": torch.zeros(1)}, payload.meta),
    ]
    key = "seed" if "seed" in payload.meta else "idx"
    bad += [_flip_meta(payload, **{key: "x" if key == "seed" else "zip"})]
    if key == "seed":
        bad.append(_flip_meta(payload, seed=-1))
    for p in bad:
        with pytest.raises(RemoteProtocolError):
            compressor.decode(p, n)


def test_lossless_packing_round_trips_and_refuses_bombs_and_lies() -> None:
    tensors = {"values": torch.randn(300), "idx": torch.arange(40, dtype=torch.uint8),
               "grid": torch.ones(3, 4, dtype=torch.float64), "none": torch.zeros(0, 5),
               "odd": torch.arange(3, dtype=torch.int16)}  # fmt: skip
    payload = Payload(tensors, {"idx": "varint"})
    for codec in ("lz4", "zstd"):
        packed = pack(payload, codec)  # type: ignore[arg-type]
        back = unpack(packed, codec, max_size=1 << 20)  # type: ignore[arg-type]
        assert back.meta == payload.meta and back.tensors.keys() == payload.tensors.keys()
        for name, tensor in payload.tensors.items():
            assert torch.equal(back.tensors[name], tensor)
        with pytest.raises(RemoteProtocolError, match="declares"):
            unpack(packed, codec, max_size=100)  # type: ignore[arg-type]
        huge = Payload(packed.tensors, {**packed.meta, "z_dims": [0, 2**64 - 1, 40, 3, 4, 3, 300]})
        with pytest.raises(RemoteProtocolError, match="shape"):
            unpack(huge, codec, max_size=1 << 20)  # type: ignore[arg-type]
        lie = Payload(packed.tensors, {**packed.meta, "z_dims": [40, 3, 4, 0, 5, 3, 301]})
        with pytest.raises(RemoteProtocolError):
            unpack(lie, codec, max_size=1 << 20)  # type: ignore[arg-type]
        for key in ("z_names", "z_dtypes", "z_ndims"):
            with pytest.raises(RemoteProtocolError):
                unpack(Payload(packed.tensors, {**packed.meta, key: [1.5]}), codec, 1 << 20)  # type: ignore[arg-type]


def test_a_part_densifies_with_zeros_where_nothing_was_sent() -> None:
    part = Part(torch.tensor([1, 3]), torch.tensor([2.0, 4.0]))
    assert part.dense(5).tolist() == [0.0, 2.0, 0.0, 4.0, 0.0]
    assert budget_count(10, 0.01) == 1 and budget_count(0, 0.5) == 0


@pytest.mark.parametrize(
    "sharing",
    [
        ["sharing.kind=topk"],
        ["sharing.kind=choco"],
        ["sharing.kind=random", "sharing.compression=lz4"],
    ],
)
def test_each_payload_is_decoded_once_on_arrival_not_again_in_aggregate(
    sharing: list[str],
) -> None:
    plan = small_plan("nodes=6", "topology.degree=3", "rounds=4", *sharing)
    calls = 0

    async def go() -> None:
        nonlocal calls
        _, nodes = build_network(plan)
        for node in nodes:
            strategy = getattr(node.sharing, "inner", node.sharing)  # under lossless
            decode = strategy.compressor.decode

            def counting(payload: Payload, n: int, _decode=decode):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                return _decode(payload, n)

            strategy.compressor.decode = counting
            await node.start()
            node.connect({})
        for r in range(plan.config.rounds):  # lockstep: nothing arrives a round early
            await asyncio.gather(*(node.run_round(r) for node in nodes))
        for node in nodes:
            await node.stop()

    asyncio.run(go())
    assert calls == 6 * 3 * plan.config.rounds  # one decode per message received
