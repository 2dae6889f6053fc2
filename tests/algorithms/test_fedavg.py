"""FedAvg: full-batch GD when every client takes one full-batch step, the exact weighted
average of the uploads (whole or top-k), the seeded client sample, and the config checks."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from dlactor.algorithms.fedavg import FedAvgClient, FedAvgServer, sample_clients
from dlactor.algorithms.settings import FedAvgSettings
from dlactor.config import RunConfig
from dlactor.launch.plan import make_plan
from dlactor.messages import Payload, Share
from dlactor.node.node import Node
from dlactor.sharing.lossy import budget_count
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network
from dlactor.training.sgd import loss_fn
from dlactor.wire.errors import RemoteProtocolError
from tests.algorithms.servers import BASE, run, server_config


def config(*overrides: str, base: dict[str, Any] = BASE) -> RunConfig:
    return server_config("fedavg", *overrides, base=base)


def model_vector(node: Node) -> torch.Tensor:
    return flatten(node.model.parameters())


async def test_one_full_batch_step_per_round_is_gradient_descent_on_the_union() -> None:
    rounds, lr = 3, 0.5
    plan = make_plan(
        config(
            "nodes=5",
            f"rounds={rounds}",
            f"training.lr={lr}",
            "training.local_steps=1",
            "training.batch_size=2000",  # more than any shard: one full-batch step
            "training.momentum=0.0",
        )
    )
    assert max(len(p) for p in plan.parts) < 2000
    records, nodes = await run(plan)

    ds = plan.dataset
    union = torch.from_numpy(np.concatenate(plan.parts)).to(torch.int64)
    ref = copy.deepcopy(plan.model)
    params = list(ref.parameters())
    for _ in range(rounds):
        loss = loss_fn(ds.task, ref(ds.x_train[union]), ds.y_train[union])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)

    server = nodes[-1]
    assert server.node == plan.servers[0]
    got, want = model_vector(server), flatten(ref.parameters())
    assert torch.allclose(got, want, rtol=0.0, atol=1e-5), (got - want).abs().max()
    assert (want - flatten(plan.model.parameters())).abs().max() > 1e-2  # it did move
    server_records = records[server.node]
    assert [rec["clients"] for rec in server_records] == [list(range(5))] * rounds
    assert 0.0 <= server_records[-1]["test_acc"] <= 1.0  # the server evaluates
    for j in range(5):
        assert all(rec["sampled"] and "test_acc" not in rec for rec in records[j])


async def test_weighted_and_unweighted_averages_differ_by_the_sample_counts() -> None:
    overrides = ["nodes=5", "rounds=1", "partition.kind=dirichlet", "partition.alpha=0.5"]
    results, uploads = {}, {}
    for weighted in (True, False):
        plan = make_plan(config(*overrides, f"algorithm.weighted={str(weighted).lower()}"))
        sizes = torch.tensor([len(p) for p in plan.parts], dtype=torch.float64)
        assert sizes.max() > 2 * sizes.min()  # unequal partitions
        _, nodes = await run(plan)
        # One round: each client's model is the one it uploaded.
        uploads[weighted] = torch.stack([model_vector(nodes[j]) for j in range(5)])
        weights = sizes / sizes.sum() if weighted else torch.full((5,), 1 / 5, dtype=torch.float64)
        expected = (weights[:, None] * uploads[weighted].double()).sum(dim=0)
        results[weighted] = model_vector(nodes[-1])
        assert torch.allclose(results[weighted].double(), expected, rtol=0.0, atol=1e-6)
    assert torch.equal(uploads[True], uploads[False])  # the same local training
    assert (results[True] - results[False]).abs().max() > 1e-3


async def test_topk_uploads_move_the_global_model_by_the_largest_changes_since_download() -> None:
    # Compressed too: the server reads the uploads through lossless compression.
    budget = 0.25
    plan = make_plan(
        config(
            "nodes=4",
            "rounds=1",
            "sharing.kind=topk",
            f"sharing.budget={budget}",
            "sharing.compression=lz4",
        )
    )
    _, nodes = await run(plan)
    start = flatten(plan.model.parameters())
    sizes = [len(p) for p in plan.parts]
    k = budget_count(start.numel(), budget)
    expected = start.clone()
    for j in range(4):
        change = model_vector(nodes[j]) - start
        # Ranked by change since the download (rebase), not by magnitude.
        top = change.abs().topk(k).indices
        expected[top] += sizes[j] / sum(sizes) * change[top]
    assert torch.allclose(model_vector(nodes[-1]), expected, rtol=0.0, atol=1e-6)
    assert not torch.allclose(expected, start)


async def test_topk_with_the_whole_budget_is_full_sharing() -> None:
    overrides = ["nodes=4", "rounds=2"]
    _, full = await run(make_plan(config(*overrides)))
    _, topk = await run(make_plan(config(*overrides, "sharing.kind=topk", "sharing.budget=1.0")))
    assert torch.allclose(model_vector(full[-1]), model_vector(topk[-1]), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize(
    ("fraction", "min_clients", "nodes", "k"),
    [(0.5, 1, 6, 3), (0.3, 1, 10, 3), (0.1, 4, 10, 4), (1.0, 1, 7, 7), (0.01, 1, 20, 1)],
)
def test_sample_size_is_the_fraction_of_the_nodes_at_least_min_clients(
    fraction: float, min_clients: int, nodes: int, k: int
) -> None:
    settings = FedAvgSettings(fraction=fraction, min_clients=min_clients)
    assert settings.sampled(nodes) == k
    samples = [sample_clients(7, r, nodes, k) for r in range(30)]
    for sample in samples:
        assert len(sample) == len(set(sample)) == k
        assert sample == sorted(sample) and all(0 <= j < nodes for j in sample)
    assert samples == [sample_clients(7, r, nodes, k) for r in range(30)]  # seeded
    if k < nodes:
        assert len({tuple(s) for s in samples}) > 1  # changes across rounds
        assert samples != [sample_clients(8, r, nodes, k) for r in range(30)]


def test_sample_clients_refuses_an_impossible_size() -> None:
    for k in (0, 6):
        with pytest.raises(ValueError, match="clients"):
            sample_clients(1, 0, 5, k)


async def test_only_the_sampled_clients_train_each_round() -> None:
    rounds, n = 4, 6
    plan = make_plan(config(f"nodes={n}", f"rounds={rounds}", "algorithm.fraction=0.5"))
    records, _ = await run(plan)
    samples = [sample_clients(plan.config.seed, r, n, 3) for r in range(rounds)]
    assert len({tuple(s) for s in samples}) > 1
    assert [rec["clients"] for rec in records[plan.servers[0]]] == samples
    for j in range(n):
        assert len(records[j]) == rounds
        for r, rec in enumerate(records[j]):
            assert rec["sampled"] == (j in samples[r])
            if rec["sampled"]:
                assert rec["bytes_sent"] > 0 and rec["bytes_recv"] > 0 and "train_loss" in rec
            else:
                assert rec["bytes_sent"] == rec["bytes_recv"] == 0 and "train_loss" not in rec


async def test_checks_refuse_shares_from_the_wrong_process_or_of_the_wrong_shape() -> None:
    plan = make_plan(config("nodes=3", "rounds=1"))
    _, nodes = build_network(plan)
    client, server = nodes[0], nodes[-1]
    assert isinstance(client.algorithm, FedAvgClient)
    assert isinstance(server.algorithm, FedAvgServer)
    model = Payload({"params": flatten(plan.model.parameters())})
    client.algorithm.check(client, Share(server.node, 0, model))
    server.algorithm.check(server, Share(1, 0, model))
    short = Payload({"params": model.tensors["params"][:-1]})
    nan = Payload({"params": torch.full_like(model.tensors["params"], float("nan"))})
    for node, sender, payload in [
        (client, 1, model),  # a client hears from the server only
        (client, server.node, short),
        (client, server.node, nan),
        (server, server.node, model),  # uploads come from learning nodes only
        (server, 1, short),
        (server, 1, nan),
    ]:
        with pytest.raises(RemoteProtocolError):
            node.algorithm.check(node, Share(sender, 0, payload))
