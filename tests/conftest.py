from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
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


InstallPlugin = Callable[[str, str, str], None]


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstallPlugin]:
    """``install(package, entry_point, source)``: an installed package (a dist-info found on
    ``sys.path``) whose ``dlactor.plugins`` entry point names a module of ``source``, named
    after the entry point. Uninstalled after the test, its modules forgotten, so that no
    other test imports them."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def install(package: str, entry_point: str, source: str) -> None:
        module = f"{entry_point}_plugin"
        dist = tmp_path / f"{package.replace('-', '_')}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[dlactor.plugins]\n{entry_point} = {module}\n")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        modules.append(module)

    yield install
    monkeypatch.undo()
    for name in [*modules, *(p.stem for p in tmp_path.glob("*.py"))]:
        sys.modules.pop(name, None)
