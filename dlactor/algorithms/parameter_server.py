"""A synchronous parameter server: every client sends a gradient, the server steps.

Each round the server (process ``env.servers[0]``) sends every client the model; each
client computes the mean gradient of its ``local_steps`` minibatches at that model (no local
step) and sends it back; the server averages the gradients, weighted by the samples each
client drew this round, and applies ``[training]``'s SGD (its learning rate, momentum and
weight decay) to its model. That is minibatch SGD on the union of the clients' batches: the
momentum buffer lives on the server only.

The server evaluates its model, after the step, on evaluation rounds. Clients never do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from dlactor.algorithms.base import Record
from dlactor.algorithms.fedavg import PARAMS, check_vector, download
from dlactor.context import RoundContext
from dlactor.messages import Payload, Share
from dlactor.sharing.ops import flat_layout, flatten, unflatten_into, weighted_sum
from dlactor.training.settings import SGDSettings
from dlactor.training.sgd import SGDTrainer
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.context import NodeEnv
    from dlactor.node.node import Node

__all__ = ["PSClient", "PSServer"]

GRAD = "grad"


def _sgd(env: NodeEnv) -> SGDSettings:
    training = getattr(env.config, "training", None)
    if not isinstance(training, SGDSettings):
        raise TypeError("the parameter server applies SGD: training.kind must be sgd")
    return training


class PSServer:
    """The server's rounds: send the model, average the gradients, step, evaluate."""

    checkpointed = ("optimizer",)  # the server's momentum (its model is the node's)

    def __init__(self, *, env: NodeEnv) -> None:
        sgd = _sgd(env)
        self.nodes = env.nodes
        self.clients = frozenset(range(env.nodes))
        # Each client's share of the gradient: the samples of its round's minibatches.
        samples = [sgd.local_steps * min(sgd.batch_size, len(part)) for part in env.parts]
        self.weights = {j: n / sum(samples) for j, n in enumerate(samples)}
        self.layout = flat_layout(env.model.parameters(), GRAD)
        params = list(env.model.parameters())
        # The averaged gradient is written here each round; nothing else sets .grad on the
        # server, so they stay the parameters' own.
        self.grads = [torch.zeros_like(p) for p in params]
        for p, g in zip(params, self.grads, strict=True):
            p.grad = g
        self.optimizer = torch.optim.SGD(
            params, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
        )

    async def round(self, node: Node, r: int) -> Record:
        record, start = node.new_record(r)
        share = Share(node.node, r, Payload({PARAMS: flatten(node.model.parameters())}))
        node.check_own(share)
        received = await node.exchange(share, self.clients)
        ctx = RoundContext(node=node.node, round=r, model=node.model, peers=self.clients)
        await node.aggregate(ctx, received, lambda: self.step(received))
        return await node.close_record(record, start, ctx)

    async def step(self, received: Mapping[int, Payload]) -> None:
        """The clients' weighted mean gradient, then one optimizer step."""
        grad = weighted_sum({j: p.tensors[GRAD] for j, p in received.items()}, self.weights)
        unflatten_into(grad, self.grads)
        self.optimizer.step()

    def check(self, node: Node, share: Share) -> None:
        """Gradients come from learning nodes only: one finite vector of the model's size."""
        sender, payload = share.sender, share.payload
        if not 0 <= sender < self.nodes:
            raise RemoteProtocolError(f"process {sender} is not a parameter-server client")
        check_vector(node, sender, payload, self.layout)


class PSClient:
    """A client's rounds: download the model, send the gradient of its minibatches there."""

    def __init__(self, *, env: NodeEnv) -> None:
        self.server = env.servers[0]
        self.layout = flat_layout(env.model.parameters(), PARAMS)

    async def round(self, node: Node, r: int) -> Record:
        record, start = node.new_record(r)
        trainer = node.trainer
        if not isinstance(trainer, SGDTrainer):
            raise TypeError(f"a parameter-server client needs the SGD trainer, not {trainer!r}")
        await download(node, self.server, r, node.round_timeout)
        ctx = RoundContext(
            node=node.node, round=r, model=node.model, peers=frozenset({self.server})
        )
        t_start, cpu = time.perf_counter(), time.process_time()
        grad, stats = await trainer.gradient(ctx)
        t_train = time.perf_counter() - t_start
        await node.charge(time.process_time() - cpu, steps=stats.steps)
        node.check_finite_own(r, [grad], "gradient")
        await node.send([self.server], Share(node.node, r, Payload({GRAD: grad})))
        record.update(train_loss=stats.loss, t_train=t_train)
        return await node.close_record(record, start, None)

    def check(self, node: Node, share: Share) -> None:
        """Only the server sends a client anything: one whole model."""
        sender, payload = share.sender, share.payload
        if sender != self.server:
            raise RemoteProtocolError(f"process {sender} is not the parameter server")
        check_vector(node, sender, payload, self.layout)
