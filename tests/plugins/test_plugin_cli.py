"""Plugins at the command line: a broken installed one, and a config's own in `kinds`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dlactor.cli import app
from tests.conftest import InstallPlugin
from tests.test_config import BROKEN

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.toml")
EXAMPLE = str(ROOT / "experiments" / "plugins" / "rotating.toml")
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_a_broken_installed_plugin_fails_only_the_configs_that_use_it(
    install_plugin: InstallPlugin,
) -> None:
    install_plugin("dlactor-wave", "wave", BROKEN)
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
    def kinds(*config: str) -> list[str]:  # a fresh interpreter: nothing registered before
        ran = subprocess.run([sys.executable, "-m", "dlactor", "kinds", *config],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return ran.stdout.splitlines()

    def listed(lines: list[str], table: str, kind: str) -> bool:
        return any(table in ln and f" {kind} " in ln for ln in lines)

    assert not listed(kinds(), "[sharing]", "damped")
    lines = kinds(EXAMPLE)
    assert any("[sharing]" in ln and " damped " in ln and "mix (0.5)" in ln for ln in lines)
    assert listed(lines, "[topology]", "rotating_ring")


def test_a_missing_config_is_named_once(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.toml")
    for command in ("validate", "kinds"):
        code, output = _run(command, missing)
        assert code == 2
        assert output.count(missing) == 1, output
