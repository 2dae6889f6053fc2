"""Rough edges a new user hits at the command line, each refused or told plainly."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlactor.cli import app

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.toml")
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_version_says_which_dlactor() -> None:
    from importlib.metadata import version

    code, output = _run("--version")
    assert code == 0 and output.strip() == f"dlactor {version('dlactor')}"


def test_kinds_lists_every_table_with_its_settings_and_defaults() -> None:
    code, output = _run("kinds")
    assert code == 0, output
    lines = output.splitlines()
    assert any(
        "[topology]" in ln and "regular (default)" in ln and "degree (4)" in ln for ln in lines
    )
    assert any("[sharing]" in ln and "secure" in ln and "fraction_bits (26)" in ln for ln in lines)
    assert any("[algorithm]" in ln and "fedavg" in ln and "fraction (1.0)" in ln for ln in lines)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ('nodes="16"', "nodes"),
        ('topology.degree="5"', "topology.degree"),
        ('training.lr="0.1"', "training.lr"),
        ('launcher.round_timeout_s="9"', "launcher.round_timeout_s"),
        ('evaluation.consensus="true"', "evaluation.consensus"),
    ],
)
def test_a_number_given_as_a_string_is_refused_naming_the_field(value: str, field: str) -> None:
    code, output = _run("validate", QUICKSTART, "--set", value)
    assert code == 2
    assert f"{field}: expected a number or a boolean, not the string" in output


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (
            "topology.degre=5",
            "topology.degre: Extra inputs are not permitted (did you mean 'degree'?)",
        ),
        ("nodez=5", "nodez: Extra inputs are not permitted (did you mean 'nodes'?)"),
        ("launcher.round_timeout=5", "(did you mean 'round_timeout_s'?)"),
        ("topology.kind=regualr", "(did you mean 'regular'?)"),
        ("sharing.kind=topK", "(did you mean 'topk'?)"),
    ],
)
def test_an_unknown_key_or_kind_gets_the_closest_known_one(value: str, hint: str) -> None:
    code, output = _run("validate", QUICKSTART, "--set", value)
    assert code == 2 and hint in output


def test_a_directory_or_a_bad_toml_file_is_named_once_and_exits_2(tmp_path: Path) -> None:
    code, output = _run("validate", str(tmp_path))
    assert code == 2 and output.count(str(tmp_path)) == 1 and "not a regular file" in output
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = = 3\n")
    code, output = _run("validate", str(bad))
    assert code == 2 and output.count(str(bad)) == 1 and "not valid TOML" in output


def test_report_on_a_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    code, output = _run("report", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in output


def test_output_that_is_not_a_terminal_is_not_cut_at_80_columns(tmp_path: Path) -> None:
    long = tmp_path / ("a-directory-with-a-long-name-" * 3)
    long.mkdir()
    code, output = _run("validate", str(long))
    assert code == 2
    (line,) = [ln for ln in output.splitlines() if ln.strip()]  # one line, not wrapped
    assert len(line) > 80 and str(long) in line
