"""A whole D-PSGD run in one process: it learns, and its byte accounting is exact."""

from pathlib import Path

from dlactor.config import load_config
from dlactor.launch.plan import make_plan
from dlactor.messages import Payload, Share
from dlactor.sharing.ops import flatten
from dlactor.testing import run_in_memory
from dlactor.wire.codec import encode
from tests.conftest import small_plan

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.toml"


async def test_quickstart_reaches_085_mean_accuracy_on_the_in_memory_network() -> None:
    plan = make_plan(load_config(QUICKSTART))
    records = await run_in_memory(plan)
    first = [recs[4]["test_acc"] for recs in records.values()]
    last = [recs[-1]["test_acc"] for recs in records.values()]
    assert all(len(recs) == plan.config.rounds for recs in records.values())
    assert sum(last) / len(last) > 0.85
    assert sum(last) > sum(first)


async def test_bytes_sent_is_degree_times_one_encoded_model_frame() -> None:
    plan = small_plan("nodes=8", "topology.degree=3", "rounds=2")
    records = await run_in_memory(plan)
    vector = flatten(plan.model.parameters())
    frame = sum(len(b) for b in encode(Share(0, 0, Payload({"params": vector}))))
    assert frame <= 1.02 * plan.model_bytes
    for recs in records.values():
        for rec in recs:
            assert rec["bytes_sent"] == 3 * frame
            assert rec["bytes_recv"] == 3 * frame
