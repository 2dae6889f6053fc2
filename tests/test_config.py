"""Config: TOML + --set overrides -> validated, frozen settings; errors name the field."""

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from dlactor.config import (
    ConfigError,
    RegularTopology,
    apply_overrides,
    load_config,
    validate_config,
)
from dlactor.plugins import PluginError, kinds
from tests.conftest import SMALL, small_config

PLUGINS = Path(__file__).parent / "plugins"


def test_overrides_are_parsed_as_toml_values_else_strings() -> None:
    data = apply_overrides({}, ["nodes=32", "topology.kind=ring", "model.hidden=[8, 8]", "x.y=1.5"])
    assert data == {"nodes": 32, "topology": {"kind": "ring"}, "model": {"hidden": [8, 8]},
                    "x": {"y": 1.5}}  # fmt: skip


def test_overrides_do_not_mutate_the_input() -> None:
    base = {"topology": {"kind": "ring"}}
    apply_overrides(base, ["topology.kind=complete"])
    assert base == {"topology": {"kind": "ring"}}


def test_override_without_equals_sign_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["nodes"])


def test_kind_selects_the_settings_model() -> None:
    cfg = small_config("topology.degree=5")
    assert isinstance(cfg.topology, RegularTopology)
    assert cfg.topology.degree == 5


def test_settings_are_frozen() -> None:
    cfg = small_config()
    with pytest.raises(ValidationError):
        cfg.topology.degree = 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("nodes=1", "nodes"),
        ("topology.degre=3", "topology.degre"),
        ("training.lr=-1", "training.lr"),
        ("partition.shards_per_node=zero", "partition.shards_per_node"),
        ("colour=blue", "colour"),
        ("name=has space", "name"),
    ],
)
def test_an_invalid_field_is_named_in_the_error(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        small_config(override)
    assert f"  {named}:" in str(err.value)


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        small_config("topology.kind=hypercube")
    for known in ("ring", "regular", "complete", "small_world", "erdos_renyi", "file"):
        assert known in str(err.value)


def test_config_file_errors_name_the_file_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_a_plugin_listed_in_the_config_adds_its_kind() -> None:
    data = apply_overrides(SMALL, ["sharing.kind=lazy", "sharing.mix=0.25"])
    data["plugins"] = ["lazy_sharing.py"]
    cfg = validate_config(data, base_dir=PLUGINS)
    assert cfg.sharing.kind == "lazy"
    assert cfg.sharing.mix == 0.25  # type: ignore[attr-defined]
    assert "lazy" in kinds("sharing")


def test_a_missing_plugin_is_a_config_error() -> None:
    data = dict(SMALL, plugins=["no_such_plugin_module"])
    with pytest.raises(ConfigError, match="plugins: plugin module 'no_such_plugin_module'"):
        validate_config(data)


def test_a_plugin_registered_through_the_entry_point_group_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "dlactor_ep_example-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dlactor-ep-example\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[dlactor.plugins]\nstar = ep_star_topology\n")
    (tmp_path / "ep_star_topology.py").write_text(
        textwrap.dedent("""
        from typing import Literal
        import networkx as nx
        from dlactor import TopologySettings, register

        @register("topology")
        class StarTopology(TopologySettings):
            kind: Literal["star"] = "star"
            def graph(self, nodes, seed):
                return nx.star_graph(nodes - 1)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = small_config("topology.kind=star")
    assert cfg.topology.graph(5, 0).number_of_edges() == 4


def test_registering_a_kind_twice_is_refused() -> None:
    from typing import Literal

    from dlactor.config import SharingSettings
    from dlactor.plugins import register

    class Dup(SharingSettings):
        kind: Literal["full"] = "full"

    with pytest.raises(PluginError, match="registered twice"):
        register("sharing")(Dup)


def test_overriding_a_kind_starts_its_table_afresh() -> None:
    data = apply_overrides(
        {"topology": {"kind": "regular", "degree": 4}},
        ["topology.kind=small_world", "topology.p=0.2"],
    )
    assert data == {"topology": {"kind": "small_world", "p": 0.2}}


SECRET = "SECRET-TOKEN"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\n{secret}\n", "NameError at line 2"),
        ("x = 1\n\ny = '{secret}\n", "SyntaxError at line 3"),
        ("def f():\n    raise RuntimeError('{secret}')\n\nf()\n", "RuntimeError at line 2"),
    ],
)
def test_a_plugin_file_that_fails_is_named_with_its_line_not_its_text(
    tmp_path: Path, source: str, expected: str
) -> None:
    plugin = tmp_path / f"failing_{abs(hash(source))}.py"
    plugin.write_text(source.format(secret=SECRET.replace("-", "_")))
    data = dict(SMALL, plugins=[plugin.name])

    with pytest.raises(ConfigError) as err:
        validate_config(data, base_dir=tmp_path)

    assert f"plugins: plugin file {plugin} failed to import: {expected}" in str(err.value)
    assert "SECRET" not in str(err.value)
