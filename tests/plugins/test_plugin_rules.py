"""The rules a strategy plugin must keep are enforced where breaking them would go unseen."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pytest
import torch

from dlactor import NodeEnv, Payload, RoundContext, SharingSettings, register, run_in_memory
from dlactor.config import apply_overrides, validate_config
from dlactor.context import PayloadAliasesModel
from dlactor.launch.plan import make_plan
from dlactor.sharing.ops import aliased, flatten, model_tensors, unflatten_into, weighted_sum
from tests.conftest import SMALL


class FirstLayerSharing:
    """Shares the first weight matrix as it is (a view of the live parameter): the bug."""

    async def outgoing(self, ctx: RoundContext) -> Payload:
        first = next(ctx.model.parameters())
        return Payload(tensors={"w": first.detach().view(-1)})

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        first = next(ctx.model.parameters())
        own = flatten([first])
        vectors = {ctx.node: own, **{j: p.tensors["w"] for j, p in received.items()}}
        unflatten_into(weighted_sum(vectors, ctx.weights), [first])


@register("sharing")
class FirstLayerSettings(SharingSettings):
    kind: Literal["first_layer_aliased"] = "first_layer_aliased"

    def build(self, env: NodeEnv) -> FirstLayerSharing:
        return FirstLayerSharing()


@pytest.mark.parametrize(
    "setting",
    [
        [],  # D-PSGD
        ["sharing.compression=lz4"],  # checked as the strategy made it, before compression
        ["algorithm.kind=epidemic", "algorithm.s=2", "algorithm.variant=local"],
        ["algorithm.kind=periodic_gossip", "algorithm.period=1", "plugins=['periodic_gossip.py']"],
    ],
    ids=["dpsgd", "lz4", "epidemic", "an algorithm plugin"],
)
async def test_a_payload_that_aliases_a_live_parameter_fails_the_run_naming_the_strategy(
    setting: list[str],
) -> None:
    data = apply_overrides(SMALL, ["sharing.kind=first_layer_aliased", "rounds=2", *setting])
    plan = make_plan(validate_config(data, base_dir=Path(__file__).parent))
    with pytest.raises(ExceptionGroup) as raised:
        await run_in_memory(plan)
    errors = [e for e in raised.value.exceptions if isinstance(e, PayloadAliasesModel)]
    assert errors, raised.value.exceptions
    assert "FirstLayerSharing" in str(errors[0])
    assert "shares memory with the model's" in str(errors[0])


def test_aliasing_is_found_for_views_parts_and_numpy_views_but_not_for_copies() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    weight, tensors = model[0].weight, model_tensors(model)
    assert aliased(Payload({"w": weight.data}), tensors) == ("w", "0.weight")
    assert aliased(Payload({"w": weight.detach()[1:, 2:]}), tensors) == ("w", "0.weight")
    assert aliased(Payload({"b": torch.from_numpy(model[0].bias.detach().numpy())}), tensors)
    assert aliased(Payload({"m": model[1].running_mean}), tensors) == ("m", "1.running_mean")
    assert aliased(Payload({"p": flatten(model.parameters())}), tensors) is None
    assert aliased(Payload({"c": weight.detach().clone(), "e": torch.empty(0)}), tensors) is None
    weight.data = torch.zeros(3, 4)  # the parameter's memory replaced: the list still sees it
    assert aliased(Payload({"w": weight.data}), tensors) == ("w", "0.weight")


def test_a_sparse_payload_is_left_to_the_codec() -> None:
    model = torch.nn.Linear(2, 2)
    assert aliased(Payload({"s": torch.eye(2).to_sparse()}), model_tensors(model)) is None
