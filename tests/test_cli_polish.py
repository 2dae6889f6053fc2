"""Rough edges a new user hits at the command line, each refused or told plainly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlactor.cli import app
from tests.metrics.test_report import make_run, resolved

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


# --- help placeholders ---------------------------------------------------------------------

#: Each command's help, and the placeholders it must show.
PLACEHOLDERS = {
    (): ["--version", "COMMAND [ARGS]..."],
    ("launch",): ["[CONFIG.toml]", "--set", "KEY=VALUE", "--out", "DIR", "--resume", "RUN_DIR"],
    ("report",): ["RUN_DIR...", "--out", "DIR", "--label", "LABEL"],
    ("validate",): ["CONFIG.toml", "KEY=VALUE"],
    ("graph",): ["CONFIG.toml", "KEY=VALUE", "--out", "FILE"],
    ("data", "fetch"): ["DATASET", "--from", "FILE|DIR", "--force"],
}


def _help(command: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", list(PLACEHOLDERS), ids=" ".join)
def test_help_shows_placeholders_that_say_what_to_give(command: tuple[str, ...]) -> None:
    output = _help(command)
    usage = next(ln for ln in output.splitlines() if "Usage:" in ln)
    for placeholder in PLACEHOLDERS[command]:
        assert placeholder in output, placeholder
    # typer's own: a type for a flag (<bool>), a type beside an argument (<path>, <list[Path]>),
    # braces around a required argument ({config}), TEXT and PATH
    assert not re.search(r"<\w+(\[\w+\])?>", output), output
    assert "{" not in usage and "}" not in usage, usage
    assert not re.search(r"\b(TEXT|PATH)\b", output), output


def test_help_keeps_the_brackets_of_a_table_name() -> None:
    assert "([checkpoint] every)" in _help(("launch",))


# --- configs that are not files ------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "launch", "graph"])
def test_a_directory_given_as_the_config_exits_2_naming_it(command: str, tmp_path: Path) -> None:
    code, output = _run(command, str(tmp_path), "--set", "rounds=1")
    assert code == 2
    (line,) = [ln for ln in output.splitlines() if ln.strip()]
    assert line == f"error: {tmp_path}: not a regular file"
    assert not (tmp_path / "runs").exists()


# --- report: labels ------------------------------------------------------------------------


def test_report_labels_each_run_by_the_settings_that_differ(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "ring", config=resolved("name=ring", "topology.kind=ring")),
        make_run(tmp_path, "full", config=resolved("name=full", "topology.kind=complete")),
    ]

    code, output = _run("report", *map(str, runs), "--out", str(tmp_path / "cmp"))

    assert code == 0, output
    table = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| topology.kind=ring | ok |" in table and "| topology.kind=complete | ok |" in table
    assert table in output


def test_report_reads_each_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dlactor.metrics import report

    runs = [str(make_run(tmp_path, "a")), str(make_run(tmp_path, "b"))]
    reads: list[Path] = []
    load = report.load_run
    monkeypatch.setattr(report, "load_run", lambda path: reads.append(Path(path)) or load(path))

    code, output = _run("report", *runs, "--out", str(tmp_path / "cmp"))

    assert code == 0, output
    assert sorted(map(str, reads)) == sorted(runs)  # the table and the figures share them


def test_report_takes_a_label_per_run_in_order(tmp_path: Path) -> None:
    runs = [str(make_run(tmp_path, "a")), str(make_run(tmp_path, "b"))]

    code, output = _run("report", *runs, "--out", str(tmp_path / "cmp"), "--label", "D-PSGD",
                        "--label", "mine")  # fmt: skip

    assert code == 0, output
    rows = [ln for ln in output.splitlines() if ln.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| D-PSGD", "| mine"]


@pytest.mark.parametrize("labels", [["one"], ["one", "two", "three"]])
def test_report_refuses_a_label_count_that_is_not_one_per_run(
    labels: list[str], tmp_path: Path
) -> None:
    runs = [str(make_run(tmp_path, "a")), str(make_run(tmp_path, "b"))]

    code, output = _run("report", *runs, *(arg for label in labels for arg in ("--label", label)))

    assert code == 2
    assert output.strip() == (
        f"error: {len(labels)} --label for 2 run directories: give one --label per run, in order"
    )
    assert not any((Path(run) / "plots").exists() for run in runs)


def test_report_refuses_two_runs_of_one_label(tmp_path: Path) -> None:
    runs = [str(make_run(tmp_path, "a")), str(make_run(tmp_path, "b"))]

    code, output = _run("report", *runs, "--label", "x", "--label", "x")

    assert code == 2 and "each run needs a label of its own" in output
