"""Plugins at the command line: a broken installed one, and a config's own in `kinds`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlactor.cli import app
from tests.test_config import _install_broken_plugin

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.toml")
EXAMPLE = str(ROOT / "experiments" / "plugins" / "rotating.toml")
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_a_broken_installed_plugin_fails_only_the_configs_that_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_broken_plugin(tmp_path, monkeypatch)
    code, output = _run("validate", QUICKSTART)
    assert code == 0, output
    code, output = _run("validate", QUICKSTART, "--set", "topology.kind=wave")
    assert code == 2
    assert "the installed plugin package 'dlactor-wave'" in output
    assert "No module named 'a_dependency_not_installed'" in output
    code, output = _run("kinds")  # lists the rest, and says what failed
    assert code == 0, output
    assert "regular (default)" in output
    assert "warning: the installed plugin package 'dlactor-wave'" in output


def test_kinds_of_a_config_include_the_plugins_it_lists() -> None:
    code, output = _run("kinds", EXAMPLE)
    assert code == 0, output
    assert any(
        "[sharing]" in ln and "damped" in ln and "mix (0.5)" in ln for ln in output.splitlines()
    )
    assert any("[topology]" in ln and "rotating_ring" in ln for ln in output.splitlines())


def test_a_missing_config_is_named_once(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.toml")
    for command in ("validate", "kinds"):
        code, output = _run(command, missing)
        assert code == 2
        assert output.count(missing) == 1, output
