"""Config: TOML + --set overrides -> validated, frozen settings; errors name the field."""

import importlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from dlactor.config import ConfigError, apply_overrides, load_config, validate_config
from dlactor.plugins import PluginError, kinds
from dlactor.topology.settings import RegularSettings
from tests.conftest import SMALL, InstallPlugin, small_config

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
    assert isinstance(cfg.topology, RegularSettings)
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
    data = apply_overrides(SMALL, ["sharing.kind=damped", "sharing.mix=0.25"])
    data["plugins"] = ["../../experiments/plugins/damped_sharing.py"]
    cfg = validate_config(data, base_dir=PLUGINS)
    assert cfg.sharing.kind == "damped"
    assert cfg.sharing.mix == 0.25  # type: ignore[attr-defined]
    assert "damped" in kinds("sharing")


def test_a_missing_plugin_is_a_config_error() -> None:
    data = dict(SMALL, plugins=["no_such_plugin_module"])
    with pytest.raises(ConfigError, match="plugins: plugin module 'no_such_plugin_module'"):
        validate_config(data)


def test_a_plugin_registered_through_the_entry_point_group_is_found(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin("dlactor-ep-example", "star", """
        from typing import Literal
        import networkx as nx
        from dlactor import TopologySettings, register

        @register("topology")
        class StarTopology(TopologySettings):
            kind: Literal["star"] = "star"
            def graph(self, nodes, seed):
                return nx.star_graph(nodes - 1)
    """)  # fmt: skip
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


# --- absurd values, hostile files ---------------------------------------------------------

SECRET = "SECRET-TOKEN"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text('nodes = 4\nrounds = 2\n[topology]\nkind = "regular"\n[model]\nkind = "mlp"\n')
    return path


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["nodes=100000000000000000000"], "nodes"),
        (["nodes=65537"], "nodes"),
        (["rounds=10000001"], "rounds"),
        (["seed=4294967296"], "seed"),
        ([f"name={'n' * 129}"], "name"),
        (["topology.degree=65536"], "topology.degree"),
        (["topology.kind=small_world", "topology.k=100000"], "topology.k"),
        (["topology.kind=dynamic_regular", "topology.degree=10000000000"], "topology.degree"),
        (["topology.kind=gossip", "topology.view_size=1000000"], "topology.view_size"),
        (["topology.kind=gossip", "topology.shuffle_length=1000000"], "topology.shuffle_length"),
        (["topology.schedule=[{round = 100000000000}]"], "topology.schedule.0.round"),
        (["topology.schedule=[{round = 1, add = [[0, 70000]]}]"], "topology.schedule.0.add.0.1"),
        (["sharing.kind=quantize", "sharing.bucket_size=1000000000000"], "sharing.bucket_size"),
        (["sharing.kind=choco", "sharing.bucket_size=2000000"], "sharing.bucket_size"),
        (["training.local_steps=10000000"], "training.local_steps"),
        (["training.batch_size=1000000"], "training.batch_size"),
        (["training.lr=inf"], "training.lr"),
        (["training.momentum=nan"], "training.momentum"),
        (["model.hidden=[1000000000000]"], "model.hidden.0"),
        (["model.hidden=[1000000, 1000000]"], "model.hidden"),
        ([f"model.hidden=[{', '.join(['8'] * 1025)}]"], "model.hidden"),
        (["model.kind=char_lstm", "model.hidden=100000"], "model.hidden"),
        (["model.kind=char_lstm", "model.embed=1000000"], "model.embed"),
        (["model.kind=char_lstm", "model.hidden=65536", "model.layers=1024"], "model"),
        (["model.kind=mf", "model.dim=1000000"], "model.dim"),
        (["data.kind=shakespeare", "data.seq_len=1000000"], "data.seq_len"),
        (["data.kind=shakespeare", "data.max_roles=10000000000"], "data.max_roles"),
        (
            ["partition.kind=shards", "partition.shards_per_node=1000000"],
            "partition.shards_per_node",
        ),
        (["partition.kind=dirichlet", "partition.alpha=inf"], "partition.alpha"),
        (["partition.kind=dirichlet", "partition.min_size=10000000000"], "partition.min_size"),
        (["evaluation.every=100000000"], "evaluation.every"),
        (["evaluation.test_samples=100000000000"], "evaluation.test_samples"),
        (["launcher.torch_threads=1000000"], "launcher.torch_threads"),
        (["launcher.round_timeout_s=inf"], "launcher.round_timeout_s"),
        (["launcher.round_timeout_s=nan"], "launcher.round_timeout_s"),
        (["launcher.start_timeout_s=1e9"], "launcher.start_timeout_s"),
        (["launcher.kind=ray", "launcher.cpus_per_node=1e6"], "launcher.cpus_per_node"),
    ],
)
def test_an_absurd_value_is_refused_naming_its_field(
    config_file: Path, overrides: list[str], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config_file, overrides)
    assert f"  {named}:" in str(err.value)


def test_the_largest_values_allowed_still_validate(config_file: Path) -> None:
    cfg = load_config(
        config_file,
        ["nodes=65536", "rounds=10000000", "seed=4294967295", "launcher.torch_threads=256",
         "launcher.round_timeout_s=86400", "model.hidden=[1048576]", "training.batch_size=65536"],
    )  # fmt: skip
    assert (cfg.nodes, cfg.rounds, cfg.launcher.torch_threads) == (65536, 10_000_000, 256)


def test_the_char_lstm_parameter_count_is_what_torch_builds() -> None:
    from dlactor.training.models import char_lstm, count_parameters
    from dlactor.training.settings import CharLSTMSettings

    for embed, hidden, layers in [(8, 256, 2), (5, 7, 1), (3, 4, 3)]:
        settings = CharLSTMSettings(embed=embed, hidden=hidden, layers=layers)
        built = count_parameters(char_lstm(80, embed, hidden, layers))
        assert settings.parameters(80) == built


def test_a_model_too_big_for_its_dataset_is_refused_before_it_is_built() -> None:
    """Widths that pass on their own, but not with digits' 64 inputs: refused in the plan,
    before torch allocates 8 GiB."""
    from tests.conftest import small_plan

    with pytest.raises(ConfigError, match=r"model: hidden = \[1048576, 2000\] on digits make"):
        small_plan("model.hidden=[1048576, 2000]")


def write_graph_config(tmp_path: Path, graph: str | bytes, nodes: int = 4) -> Path:
    path = tmp_path / "g.txt"
    if isinstance(graph, bytes):
        path.write_bytes(graph)
    else:
        path.write_text(graph)
    config = tmp_path / "c.toml"
    config.write_text(f'nodes = {nodes}\n[topology]\nkind = "file"\npath = "g.txt"\n')
    return config


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ("16\n" + "0 1\n" * 300_000, "more than a graph of 4 nodes needs"),
        ("5\n0 1\n", "line 1: the file declares 5 nodes, expected 4"),
        (f"4\n0 1\n1 {SECRET}\n", "line 3: expected an integer node id"),
        (f"4\n0 1\n1 2 # ok\n{SECRET} 3\n", "line 4: expected an integer node id"),
        ("4\n0 1\n2 3\n", "the graph is not connected"),
    ],
)
def test_a_bad_graph_file_is_refused_when_the_config_is_read_naming_topology_path(
    tmp_path: Path, graph: str, expected: str
) -> None:
    config = write_graph_config(tmp_path, graph)

    with pytest.raises(ConfigError) as err:
        load_config(config)

    message = str(err.value)
    assert f"  topology.path: {tmp_path / 'g.txt'}" in message
    assert expected in message
    assert "SECRET" not in message


def test_a_graph_file_is_read_once_for_the_config_and_the_plan(tmp_path: Path) -> None:
    from dlactor.launch.plan import make_plan

    cfg = load_config(write_graph_config(tmp_path, "4\n0 1\n1 2\n2 3\n3 0\n"))
    assert make_plan(cfg).graph is cfg.topology.graph(4, 0)


@pytest.mark.parametrize("kind", ["device", "directory", "big", "binary", "toml"])
def test_the_config_file_itself_is_checked_and_never_quoted(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "run.toml"
    if kind == "device":
        path = Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "big":
        path.write_text("# " + "x" * (8 << 20))
    elif kind == "binary":
        path.write_bytes(b"nodes = 4\n\xff" + SECRET.encode())
    else:
        path.write_text(f"[a.{SECRET}]\nb = 1\n[a.{SECRET}]\nc = 1\n'{SECRET}' = \x01\n")

    with pytest.raises(ConfigError) as err:
        load_config(path)

    expected = {"device": "not a regular file", "directory": "not a regular file",
                "big": "more than a config may have", "binary": "not UTF-8 text (byte 10)",
                "toml": "not valid TOML"}[kind]  # fmt: skip
    assert expected in str(err.value)
    assert "SECRET" not in str(err.value)


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


#: An installed plugin that fails to import: a dependency it lacks.
BROKEN = "import a_dependency_not_installed\n"


def test_a_broken_installed_plugin_fails_only_the_configs_that_need_it(
    install_plugin: InstallPlugin, tmp_path: Path
) -> None:
    install_plugin("dlactor-wave", "wave", BROKEN)
    assert small_config().topology.kind == "regular"  # other configs still validate
    for table in ("topology", "training"):  # a union of kinds, and a single kind
        with pytest.raises(ConfigError) as raised:
            small_config(f"{table}.kind=wave")
        message = str(raised.value)
        assert f"  {table}" in message
        assert "the installed plugin package 'dlactor-wave' (entry point 'wave'" in message
        assert "ModuleNotFoundError: No module named 'a_dependency_not_installed'" in message
    (tmp_path / "a_dependency_not_installed.py").write_text("")  # installed since
    importlib.invalidate_caches()
    with pytest.raises(ConfigError) as raised:
        small_config("topology.kind=wave")  # tried again: it imports (and brings no kind)
    assert "dlactor-wave" not in str(raised.value)


def test_an_uninstalled_broken_plugin_is_no_longer_named(
    install_plugin: InstallPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin("dlactor-wave", "wave", BROKEN)
    with pytest.raises(ConfigError, match="dlactor-wave"):
        small_config("topology.kind=wave")
    monkeypatch.undo()  # the fixture's sys.path entry goes: uninstalled
    with pytest.raises(ConfigError) as raised:
        small_config("topology.kind=wave")
    assert "dlactor-wave" not in str(raised.value)


def test_a_field_a_hook_names_is_spelled_from_the_top_of_the_config() -> None:
    from dlactor.config import field_path

    assert field_path("sharing", "budget") == "sharing.budget"  # relative to its table
    assert field_path("network", "classes.0.nodes") == "network.classes.0.nodes"
    assert field_path("sharing", "topology") == "topology"  # already from the top
    assert field_path("algorithm", "sharing.kind") == "sharing.kind"


def test_an_installed_plugin_that_registers_a_builtin_kind_again_fails_the_configs_of_that_kind(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin("dlactor-myring", "myring", """
        from typing import Literal
        from dlactor import TopologySettings, register

        @register("topology")
        class MyRing(TopologySettings):
            kind: Literal["ring"] = "ring"
    """)  # fmt: skip
    assert small_config().topology.kind == "regular"  # other kinds: as before
    with pytest.raises(ConfigError) as raised:
        small_config("topology.kind=ring")
    message = str(raised.value)
    assert "topology.kind: 'ring' has two meanings" in message
    assert "'dlactor-myring'" in message and "registered twice" in message
