"""The dlactor command: validate and graph, their exit codes and messages."""

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlactor.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(config: Path) -> None:
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_validate_applies_overrides() -> None:
    result = runner.invoke(
        app, ["validate", str(ROOT / "configs/quickstart.toml"), "--set", "nodes=32"]
    )
    assert result.exit_code == 0, result.output
    assert "32 nodes" in result.output


def test_an_invalid_field_exits_2_naming_it() -> None:
    result = runner.invoke(
        app, ["validate", str(ROOT / "configs/quickstart.toml"), "--set", "topology.degree=0"]
    )
    assert result.exit_code == 2
    assert "topology.degree" in result.output


def test_an_impossible_graph_exits_2_before_anything_runs() -> None:
    result = runner.invoke(
        app, ["validate", str(ROOT / "configs/quickstart.toml"), "--set", "topology.degree=16"]
    )
    assert result.exit_code == 2
    assert "degree" in result.output


@pytest.mark.parametrize("fmt", ["edges", "adjacency"])
def test_a_malformed_graph_file_exits_2_naming_the_line(tmp_path: Path, fmt: str) -> None:
    graph = tmp_path / "g.txt"
    if fmt == "edges":
        graph.write_text("4\n0 1\n1 2\n2 three\n3 0\n")
    else:
        graph.write_text("4\n1 3\n0 2\n1 x\n0 2\n")
    config = tmp_path / "c.toml"
    config.write_text(f'nodes = 4\n[topology]\nkind = "file"\npath = "g.txt"\nformat = "{fmt}"\n')
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2, result.output
    assert "line 4" in result.output
    assert "g.txt" in result.output


def test_graph_prints_degrees_and_spectral_gap(tmp_path: Path) -> None:
    out = tmp_path / "ring.edges"
    result = runner.invoke(
        app,
        ["graph", str(ROOT / "configs/quickstart.toml"), "--set", "topology.kind=ring",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "16 nodes, 16 edges, degree 2..2" in result.output
    assert out.read_text().splitlines()[0] == "16"


def test_a_missing_config_file_exits_2() -> None:
    result = runner.invoke(app, ["validate", "no/such/config.toml"])
    assert result.exit_code == 2
    assert "not found" in result.output


@pytest.mark.parametrize("model", ["lenet5", "char_lstm", "mf"])
def test_a_model_that_cannot_be_built_for_the_dataset_exits_2_naming_model(model: str) -> None:
    result = runner.invoke(
        app, ["validate", str(ROOT / "configs/quickstart.toml"), "--set", f"model.kind={model}"]
    )
    assert result.exit_code == 2, result.output
    assert "model:" in result.output
    assert "digits" in result.output


def flat(output: str) -> str:
    """The output without the line breaks and spaces rich adds when it wraps long lines."""
    return "".join(output.split())


def test_a_graph_file_too_big_for_nodes_exits_2_fast_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "big.edges").write_text("16\n" + "0 1\n" * 1_000_000)
    config = tmp_path / "c.toml"
    config.write_text('nodes = 16\n[topology]\nkind = "file"\npath = "big.edges"\n')

    start = time.perf_counter()
    result = runner.invoke(app, ["validate", str(config)])

    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 2, result.output
    assert "topology.path:" in result.output
    assert "big.edges:4,000,003bytesismorethanagraphof16nodesneeds" in flat(result.output)


@pytest.mark.parametrize("target", ["/dev/zero", "directory", "fifo"])
@pytest.mark.timeout(20)
def test_a_graph_path_that_is_not_a_regular_file_exits_2(tmp_path: Path, target: str) -> None:
    if target == "directory":
        (tmp_path / "graph").mkdir()
    elif target == "fifo":
        os.mkfifo(tmp_path / "graph")
    path = target if target.startswith("/") else "graph"
    config = tmp_path / "c.toml"
    config.write_text(f'nodes = 16\n[topology]\nkind = "file"\npath = "{path}"\n')

    result = runner.invoke(app, ["validate", str(config)])

    assert result.exit_code == 2, result.output
    assert "topology.path:" in result.output
    assert "expectedaregularfile" in flat(result.output)


@pytest.mark.parametrize("command", ["validate", "graph", "launch"])
def test_a_malformed_graph_line_is_named_but_never_quoted(tmp_path: Path, command: str) -> None:
    (tmp_path / "g.txt").write_text("4\n0 1\n1 SECRET-TOKEN\n2 3\n")
    config = tmp_path / "c.toml"
    config.write_text('nodes = 4\n[topology]\nkind = "file"\npath = "g.txt"\n')

    result = runner.invoke(app, [command, str(config), "--out", str(tmp_path / "out")]
                           if command != "validate" else [command, str(config)])  # fmt: skip

    assert result.exit_code == 2, result.output
    assert "topology.path:" in result.output
    assert "g.txt,line3:expectedanintegernodeid" in flat(result.output)
    assert "SECRET" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "launch"])
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("nodes=100000000000000000000", "nodes"),
        ("model.hidden=[1000000000000]", "model.hidden.0"),
        ("launcher.torch_threads=1000000", "launcher.torch_threads"),
        ("launcher.round_timeout_s=inf", "launcher.round_timeout_s"),
        ("rounds=100000000000", "rounds"),
    ],
)
def test_an_absurd_value_exits_2_naming_its_field_before_anything_runs(
    tmp_path: Path, command: str, override: str, named: str
) -> None:
    args = [command, str(ROOT / "configs/quickstart.toml"), "--set", override]
    if command == "launch":
        args += ["--out", str(tmp_path / "runs")]

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert f"  {named}:" in result.output
    assert not (tmp_path / "runs").exists()
