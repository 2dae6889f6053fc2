"""Full sharing's aggregation reuses the vector it sent this round and checks arrivals."""

from __future__ import annotations

import pytest
import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload
from dlactor.sharing.full import PARAMS, FullSharing
from dlactor.sharing.ops import flatten
from dlactor.wire.errors import RemoteProtocolError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


async def test_aggregate_averages_what_was_sent_with_the_neighbours() -> None:
    model, sharing = _model(), FullSharing()
    ctx = RoundContext(node=0, round=0, model=model, peers=frozenset({1}), weights={0: 0.5, 1: 0.5})
    ctx.sent = await sharing.outgoing(ctx)
    mine = ctx.sent.tensors[PARAMS].clone()
    theirs = torch.full_like(mine, 4.0)
    await sharing.aggregate(ctx, {1: Payload(tensors={PARAMS: theirs})})
    assert torch.allclose(flatten(model.parameters()), (mine + theirs) / 2)


async def test_aggregate_takes_the_sent_vector_without_flattening_again() -> None:
    model, sharing = _model(), FullSharing()
    ctx = RoundContext(node=0, round=0, model=model, weights={0: 1.0})
    sent = torch.arange(8, dtype=torch.float32)  # not the model: proves which one is used
    ctx.sent = Payload(tensors={PARAMS: sent})
    await sharing.aggregate(ctx, {})
    assert torch.equal(flatten(model.parameters()), sent)


def test_check_refuses_a_vector_of_another_size_every_time() -> None:
    model, sharing = _model(), FullSharing()
    sharing.check(model, Payload(tensors={PARAMS: torch.zeros(8)}))
    for _ in range(2):  # the layout is computed once, then reused
        with pytest.raises(RemoteProtocolError, match="expected"):
            sharing.check(model, Payload(tensors={PARAMS: torch.zeros(7)}))
