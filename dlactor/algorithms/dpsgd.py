"""D-PSGD (Lian et al., NeurIPS 2017): every node trains, shares with this round's
neighbours, and averages what it got with the topology's mixing weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlactor.algorithms.base import Record
from dlactor.context import RoundContext
from dlactor.messages import Share
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.node.node import Node

__all__ = ["DPSGD"]


class DPSGD:
    """One D-PSGD round: train, share with this round's neighbours, aggregate, evaluate."""

    async def round(self, node: Node, r: int) -> Record:
        ctx = RoundContext(node=node.node, round=r, model=node.model)
        record, before = node.new_record(r)
        stats, t_train = await node.train(ctx)
        ctx.peers, ctx.weights = await node.neighbours(r)
        node.close_former_peers(ctx.peers)
        if node.per_peer is None:
            share = Share(node.node, r, await node.sharing.outgoing(ctx))
            node.check_own(share)
            ctx.sent = share.payload
            received = await node.exchange(share, ctx.peers)
        else:  # each neighbour gets its own payload (secure aggregation's masks)
            received = await node.exchange_each(ctx)
        node.drop_missing(ctx, received)  # neighbours lost mid-round (on_node_failure)
        await node.aggregate(ctx, received)
        record.update(
            train_loss=stats.loss,
            degree=len(ctx.peers),
            **node.overlay_record(before.overlay),
            **node.topology_record(ctx.peers, ctx.weights),
            t_train=t_train,
        )
        return await node.close_record(record, before, ctx)

    def check(self, node: Node, share: Share) -> None:
        sender, payload = share.sender, share.payload
        if node.nodes is not None and not 0 <= sender < node.nodes:
            raise RemoteProtocolError(f"process {sender} is not a learning node: it sent a share")
        node.check_payload(sender, payload)
