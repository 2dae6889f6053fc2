"""FedAvg (McMahan et al., AISTATS 2017): a server samples clients, sends them the global
model, and averages the models they send back after their local steps.

Each round the server (process ``env.servers[0]``) and every client draw the same sample of
clients from the run's seed (``sample_clients``), so a client that is not drawn knows it sits
the round out without a message. The server sends the sampled clients the global model, and
replaces it with the average of their uploads, each weighted by its training samples (or
uniformly, ``weighted = false``). Downloads are whole models; uploads are what the sharing
strategy makes of the client's model (whole, or a sparse or quantized part of it).

The server evaluates the global model on evaluation rounds: that is the run's test accuracy.
Clients never evaluate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from dlactor.algorithms.base import Record
from dlactor.churn.availability import Availability
from dlactor.context import Roster, RoundContext
from dlactor.messages import Payload, Share
from dlactor.sharing.lossless import Lossless
from dlactor.sharing.ops import Layout, check_layout, flat_layout, flatten, unflatten_into
from dlactor.sharing.partial import CompressedSharing
from dlactor.training.base import Restarts
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.algorithms.settings import FedAvgSettings
    from dlactor.context import NodeEnv
    from dlactor.node.node import Node

__all__ = ["FedAvgClient", "FedAvgServer", "Rebases", "client_weights", "sample_clients"]

PARAMS = "params"

# Spawn-key tag, so that the sample is not another strategy's stream (a dynamic topology
# draws from spawn key (round,), Epidemic Learning from (0xE10, round)).
_SAMPLE = 0xFED


def sample_clients(
    seed: int, round: int, nodes: int, k: int, availability: Availability | None = None
) -> list[int]:
    """The ``k`` distinct clients of ``round``, sorted, drawn from (``seed``, ``round``) alone
    so that the server and every client draw the same ones. With an availability schedule,
    drawn among the clients online in ``round`` (all of them, if fewer than ``k``)."""
    if not 0 < k <= nodes:
        raise ValueError(f"k = {k} clients must be in [1, nodes = {nodes}]")
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_SAMPLE, round)))
    online = None if availability is None else availability.online_nodes(round)
    if online is None or len(online) == nodes:
        return sorted(int(j) for j in rng.choice(nodes, size=k, replace=False))
    chosen = rng.choice(online, size=min(k, len(online)), replace=False)
    return sorted(int(j) for j in chosen)


def client_weights(samples: list[int], clients: list[int], weighted: bool) -> dict[int, float]:
    """Each sampled client's share of the average: n_j / sum n, or 1/|S| unweighted."""
    if not weighted:
        return {j: 1.0 / len(clients) for j in clients}
    total = sum(samples[j] for j in clients)
    return {j: samples[j] / total for j in clients}


@runtime_checkable
class Rebases(Protocol):
    """A sharing strategy that ranks what it sends by change since a reference (top-k): a
    client hands it each model it downloads."""

    def rebase(self, flat: torch.Tensor) -> None: ...


def unwrapped(node: Node) -> object:
    """The node's sharing strategy itself, without lossless compression around it."""
    sharing = node.sharing
    return sharing.inner if isinstance(sharing, Lossless) else sharing


def check_vector(node: Node, sender: int, payload: Payload, layout: Layout) -> None:
    """``payload`` is exactly one flat vector of ``layout``, finite unless the run allows NaN
    and Inf; RemoteProtocolError naming ``sender`` otherwise."""
    try:
        check_layout(payload, layout)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"process {sender} sent an unusable payload: {exc}") from exc
    node.check_payload(sender, payload, sharing=False)


async def download(node: Node, server: int, r: int, timeout: float) -> torch.Tensor:
    """Wait for the server's model of round ``r`` and load it into ``node.model``; the
    downloaded vector."""
    got = await node.collect(r, {server}, timeout)
    flat = got[server].tensors[PARAMS]
    unflatten_into(flat, node.model.parameters())
    return flat


class FedAvgServer:
    """The server's rounds: sample, send the global model, average the uploads, evaluate."""

    def __init__(self, *, settings: FedAvgSettings, env: NodeEnv) -> None:
        self.seed, self.nodes, self.weighted = env.seed, env.nodes, settings.weighted
        self.k = settings.sampled(env.nodes)
        self.samples = [len(part) for part in env.parts]
        self.availability = env.availability

    def weights(self, clients: list[int]) -> dict[int, float]:
        return client_weights(self.samples, clients, self.weighted)

    async def round(self, node: Node, r: int) -> Record:
        record, start = node.new_record(r)
        sampled = sample_clients(self.seed, r, self.nodes, self.k, self.availability)
        peers = frozenset(sampled) - node.lost.keys()
        share = Share(node.node, r, Payload({PARAMS: flatten(node.model.parameters())}))
        node.check_own(share)
        received = await node.exchange(share, peers)
        # Clients lost since they were sampled (on_node_failure = "continue") are left out
        # of the average; with none in, the global model stays as it is.
        clients = sorted(received)
        if not clients:
            record["clients"] = sampled
            return await node.close_record(record, start, RoundContext(node.node, r, node.model))
        # The server's own weight is 0: the new global model is the clients' average alone.
        # ctx.sent stays None (full sharing would otherwise take it as the server's vector).
        ctx = RoundContext(
            node=node.node,
            round=r,
            model=node.model,
            peers=frozenset(clients),
            weights={node.node: 0.0, **self.weights(clients)},
        )
        await node.aggregate(ctx, received, lambda: self.aggregate(node, ctx, received))
        record["clients"] = sampled
        return await node.close_record(record, start, ctx)

    async def aggregate(
        self, node: Node, ctx: RoundContext, received: Mapping[int, Payload]
    ) -> None:
        """Whole models: the sharing strategy's weighted sum, with the server's weight 0.

        Parts of models (top-k, random-k, quantized): a coordinate a client did not send
        counts as unchanged since its download, so the global model moves by the weighted
        sum of the changes sent, x[k] += sum_{j sent k} w_j (v_j[k] - x[k]). Partial
        sharing's own average cannot give this: it renormalizes over the senders of each
        coordinate, and needs the aggregating node's weight above 0.
        """
        sharing = node.sharing
        inner = unwrapped(node)
        if not isinstance(inner, CompressedSharing):
            await sharing.aggregate(ctx, received)
            return
        plain = dict(received)
        if isinstance(sharing, Lossless):
            plain = {j: sharing.unpacked(p) for j, p in received.items()}
        own = flatten(node.model.parameters())
        out = own.clone()
        for j, part in inner.received_parts(plain, own.numel()).items():
            w = ctx.weights[j]
            if part.indices is None:
                out.add_(part.values - own, alpha=w)
            else:
                out.index_add_(0, part.indices, part.values - own[part.indices], alpha=w)
        if isinstance(sharing, Lossless):
            sharing.forget()  # what it unpacked on arrival: used above
        unflatten_into(out, node.model.parameters())

    def check(self, node: Node, share: Share) -> None:
        """Uploads come from learning nodes only, and must fit the sharing strategy."""
        sender, payload = share.sender, share.payload
        if not 0 <= sender < self.nodes:
            raise RemoteProtocolError(f"process {sender} is not a FedAvg client")
        node.check_payload(sender, payload)


class FedAvgClient:
    """A client's rounds: when sampled, download the global model, train, upload."""

    checkpointed = ("_waited",)

    #: Clients never evaluate: the server's global model is the run's (not even offline).
    evaluates = False

    def __init__(self, *, settings: FedAvgSettings, env: NodeEnv) -> None:
        self.node, self.seed, self.nodes = env.node, env.seed, env.nodes
        self.k = settings.sampled(env.nodes)
        self.server = env.servers[0]
        self.weighted = settings.weighted
        self.samples = [len(part) for part in env.parts]
        self.layout = flat_layout(env.model.parameters(), PARAMS)
        self.availability = env.availability
        self._waited = -1  # the last round this client took part in

    async def round(self, node: Node, r: int) -> Record:
        record, start = node.new_record(r)
        clients = sample_clients(self.seed, r, self.nodes, self.k, self.availability)
        if self.node not in clients:
            record["sampled"] = False
            return await node.close_record(record, start, None)
        # The server runs every round between this client's last one and this one (each
        # within a round timeout) before it sends this round's model.
        flat = await download(node, self.server, r, node.round_timeout * (r - self._waited))
        self._waited = r
        sharing = unwrapped(node)
        if isinstance(sharing, Rebases):
            sharing.rebase(flat)
        if isinstance(node.trainer, Restarts):  # a new model: no momentum from the old one
            node.trainer.restart()
        ctx = RoundContext(
            node=node.node, round=r, model=node.model, peers=frozenset({self.server})
        )
        stats, t_train = await node.train(ctx)
        if node.per_peer is None:
            payload = await node.sharing.outgoing(ctx)
        else:  # masked for the server, with pairwise masks among this round's clients
            weight = client_weights(self.samples, clients, self.weighted)[self.node]
            ctx.rosters = {self.server: Roster(frozenset(clients), weight)}
            payload = (await node.outgoing_each(ctx))[self.server]
        share = Share(node.node, r, payload)
        node.check_own(share)
        await node.send([self.server], share)
        record.update(sampled=True, train_loss=stats.loss, t_train=t_train)
        return await node.close_record(record, start, None)

    def check(self, node: Node, share: Share) -> None:
        """Only the server sends a client anything: one whole model."""
        sender, payload = share.sender, share.payload
        if sender != self.server:
            raise RemoteProtocolError(f"process {sender} is not the FedAvg server")
        check_vector(node, sender, payload, self.layout)
