from __future__ import annotations

import json
from typing import Any

import pytest

from dlactor.config import RunConfig, apply_overrides, validate_config
from dlactor.launch.plan import Plan, make_plan

SMALL: dict[str, Any] = {
    "name": "test",
    "seed": 3,
    "nodes": 8,
    "rounds": 5,
    "topology": {"kind": "regular", "degree": 3},
    "model": {"kind": "mlp", "hidden": [16]},
    "partition": {"kind": "shards", "shards_per_node": 2},
    "training": {"kind": "sgd", "lr": 0.5, "local_steps": 2, "batch_size": 32},
    "evaluation": {"every": 2},
    "launcher": {"round_timeout_s": 20, "start_timeout_s": 60},
}


def small_config(*overrides: str) -> RunConfig:
    """A small digits run, with ``a.b=value`` overrides as on the command line."""
    return validate_config(apply_overrides(SMALL, list(overrides)))


def small_plan(*overrides: str) -> Plan:
    return make_plan(small_config(*overrides))


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON (RFC 8259): a bare NaN or Infinity fails the test."""

    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def plan() -> Plan:
    return small_plan()
