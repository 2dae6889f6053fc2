"""An example algorithm plugin, written as a user would: an async class plus its settings.

Periodic gossip (local SGD with periodic averaging): every node trains each round, but
exchanges with its topology neighbours and averages only every ``period`` rounds. It reuses
the node's helpers (``train``, ``exchange``, ``close_record``) and the sharing strategy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dlactor import AlgorithmSettings, Node, NodeEnv, RoundContext, register
from dlactor.messages import Share


class PeriodicGossip:
    def __init__(self, *, period: int) -> None:
        self.period = period

    async def round(self, node: Node, r: int) -> dict[str, object]:
        ctx = RoundContext(node=node.node, round=r, model=node.model)
        record, start = node.new_record(r)
        stats, t_train = await node.train(ctx)
        record.update(train_loss=stats.loss, t_train=t_train, degree=0)
        if (r + 1) % self.period == 0:
            topology = node.require_topology()
            ctx.peers = await topology.neighbors(node.node, r)
            ctx.weights = await topology.weights(node.node, r)
            share = Share(node.node, r, await node.sharing.outgoing(ctx))
            received = await node.exchange(share, ctx.peers)
            await node.sharing.aggregate(ctx, received)
            record["degree"] = len(ctx.peers)
        return await node.close_record(record, start, ctx)

    def check(self, node: Node, share: Share) -> None:
        node.check_payload(share.sender, share.payload)


@register("algorithm")
class PeriodicGossipSettings(AlgorithmSettings):
    kind: Literal["periodic_gossip"] = "periodic_gossip"
    period: int = Field(2, ge=1, description="rounds between two exchanges")

    def build(self, env: NodeEnv) -> PeriodicGossip:
        return PeriodicGossip(period=self.period)
