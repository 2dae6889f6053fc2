"""The dlactor command: validate and graph, their exit codes and messages."""

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
