"""D-PSGD with Metropolis-Hastings weights and no learning is pure gossip averaging:
every node must reach the exact average of the initial models, geometrically fast."""

import asyncio

import numpy as np
import torch

from dlactor.sharing.ops import flatten
from dlactor.testing import build_network
from dlactor.topology.mixing import mixing_matrix
from tests.conftest import small_plan


def consensus_distance(models: list[torch.nn.Module]) -> tuple[torch.Tensor, float]:
    x = torch.stack([flatten(m.parameters()).double() for m in models])
    mean = x.mean(dim=0)
    return mean, (x - mean).norm(dim=1).pow(2).mean().sqrt().item()


async def test_zero_learning_rate_converges_to_the_exact_initial_average() -> None:
    plan = small_plan("nodes=16", "topology.degree=4", "training.lr=0", "rounds=40")
    models = [plan.config.model.build(plan.dataset, seed=100 + i) for i in range(16)]
    mean0, dist0 = consensus_distance(models)
    W = mixing_matrix(plan.graph)
    lam = float(np.sort(np.abs(np.linalg.eigvalsh(W)))[-2])  # second largest |eigenvalue|
    assert 0 < lam < 1
    _net, nodes = build_network(plan, codec=True, models=models)  # the real codec on every message
    for node in nodes:
        await node.start()
        node.connect({})

    distances = [dist0]
    for r in range(plan.config.rounds):
        await asyncio.gather(*(node.run_round(r) for node in nodes))
        mean, dist = consensus_distance(models)
        assert torch.allclose(mean, mean0, atol=1e-6), f"round {r}: the average moved"
        distances.append(dist)

    # Geometric: ||X_t - mean|| <= lambda_2^t ||X_0 - mean|| (plus float32 rounding)
    for t, d in enumerate(distances):
        assert d <= dist0 * lam**t * 1.001 + 1e-6, f"round {t}: {d} > {dist0 * lam**t}"
    assert distances[-1] < 1e-5 * dist0
    for m in models:
        assert torch.allclose(flatten(m.parameters()).double(), mean0, atol=1e-5)
    for node in nodes:
        await node.stop()


async def test_every_node_gets_exactly_one_message_per_neighbour_per_round() -> None:
    plan = small_plan("nodes=10", "topology.degree=3", "rounds=3")
    _, nodes = build_network(plan)
    for node in nodes:
        await node.start()
    records = [
        await asyncio.gather(*(node.run_round(r) for node in nodes))
        for r in range(plan.config.rounds)
    ]
    for round_records in records:
        for rec in round_records:
            assert rec["msgs_sent"] == rec["degree"] == 3
            assert rec["msgs_recv"] == 3
    for node in nodes:
        await node.stop()
