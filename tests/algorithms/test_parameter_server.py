"""The synchronous parameter server: minibatch SGD (momentum, weight decay) on the union of
the clients' batches, its byte accounting, its checks, and the config checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dlactor.algorithms.parameter_server import PSClient, PSServer
from dlactor.config import RunConfig
from dlactor.launch.plan import make_plan
from dlactor.messages import Payload, Share
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network
from dlactor.training.sgd import loss_fn
from dlactor.wire.codec import encode
from dlactor.wire.errors import RemoteProtocolError
from tests.algorithms.servers import BASE, run, server_config


def config(*overrides: str, base: dict[str, Any] = BASE) -> RunConfig:
    return server_config("parameter_server", *overrides, base=base)


class Batches:
    """A client's minibatches, drawn as SGDTrainer draws them (its generator is seeded with
    seed * 100_003 + node; a new permutation of the shard when the last one runs out)."""

    def __init__(self, indices: torch.Tensor, batch_size: int, seed: int) -> None:
        self.indices, self.size = indices, min(batch_size, len(indices))
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.cursor = torch.empty(0, dtype=torch.int64), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.size > len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            self.cursor = 0
        self.cursor += self.size
        return self.order[self.cursor - self.size : self.cursor]


async def test_equals_centralized_minibatch_sgd_on_the_union_of_the_clients_batches() -> None:
    n, rounds, steps, batch = 4, 4, 3, 150
    lr, momentum, decay = 0.2, 0.9, 0.01
    plan = make_plan(
        config(
            f"nodes={n}",
            f"rounds={rounds}",
            "partition.kind=dirichlet",
            "partition.alpha=0.3",
            f"training.lr={lr}",
            f"training.momentum={momentum}",
            f"training.weight_decay={decay}",
            f"training.local_steps={steps}",
            f"training.batch_size={batch}",
        )
    )
    sizes = [len(p) for p in plan.parts]
    # Some clients draw whole smaller shards: their gradients weigh less.
    assert min(sizes) < batch < max(sizes)
    records, nodes = await run(plan)

    ds, seed = plan.dataset, plan.config.seed
    draws = [
        Batches(torch.from_numpy(p).to(torch.int64), batch, seed * 100_003 + j)
        for j, p in enumerate(plan.parts)
    ]
    ref = copy.deepcopy(plan.model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, weight_decay=decay)
    for r in range(rounds):
        opt.zero_grad()
        total, samples = torch.zeros(()), 0
        for j in range(n):
            losses = []
            for _ in range(steps):
                idx = draws[j].next()
                loss = loss_fn(ds.task, ref(ds.x_train[idx]), ds.y_train[idx])
                losses.append(loss.item())
                total = total + loss * len(idx)
                samples += len(idx)
            # A client's train_loss: its minibatches' mean loss at the round's model.
            assert records[j][r]["train_loss"] == pytest.approx(sum(losses) / steps, abs=1e-5)
        (total / samples).backward()  # the mean over every sample of the round
        opt.step()

    got, want = flatten(nodes[-1].model.parameters()), flatten(ref.parameters())
    assert torch.allclose(got, want, rtol=0.0, atol=1e-5), (got - want).abs().max()
    assert (want - flatten(plan.model.parameters())).abs().max() > 1e-2  # it did move
    # Evaluated after the step, on evaluation rounds (every 2, and the last).
    server = records[plan.servers[0]]
    assert ["test_acc" in rec for rec in server] == [False, True, False, True]


async def test_each_round_costs_one_model_down_and_one_gradient_up_per_client() -> None:
    n = 3
    plan = make_plan(config(f"nodes={n}", "rounds=2"))
    records, _ = await run(plan)
    vector = flatten(plan.model.parameters())
    server = plan.servers[0]
    down = sum(len(b) for b in encode(Share(server, 0, Payload({"params": vector}))))
    up = sum(len(b) for b in encode(Share(0, 0, Payload({"grad": vector}))))
    for j in range(n):
        for rec in records[j]:
            assert (rec["bytes_recv"], rec["bytes_sent"]) == (down, up)
    for rec in records[server]:
        assert (rec["bytes_sent"], rec["bytes_recv"]) == (n * down, n * up)


async def test_checks_refuse_shares_from_the_wrong_process_or_of_the_wrong_shape() -> None:
    plan = make_plan(config("nodes=3", "rounds=1"))
    _, nodes = build_network(plan)
    client, server = nodes[0], nodes[-1]
    assert isinstance(client.algorithm, PSClient)
    assert isinstance(server.algorithm, PSServer)
    vector = flatten(plan.model.parameters())
    model, grad = Payload({"params": vector}), Payload({"grad": vector})
    client.algorithm.check(client, Share(server.node, 0, model))
    server.algorithm.check(server, Share(1, 0, grad))
    nan = torch.full_like(vector, float("inf"))
    for node, sender, payload in [
        (client, 1, model),  # a client hears from the server only
        (client, server.node, grad),
        (client, server.node, Payload({"params": nan})),
        (server, server.node, grad),  # gradients come from learning nodes only
        (server, 1, model),
        (server, 1, Payload({"grad": vector[:-1]})),
        (server, 1, Payload({"grad": vector.double()})),
        (server, 1, Payload({"grad": nan})),
    ]:
        with pytest.raises(RemoteProtocolError):
            node.algorithm.check(node, Share(sender, 0, payload))
