"""Every config the repo ships must validate: a typo in an experiment is caught here, not an
hour into a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlactor.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("configs/*.toml"), *ROOT.glob("experiments/**/*.toml")])


def test_the_repo_ships_configs() -> None:
    assert len(SHIPPED) >= 4


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.rounds >= 1 and cfg.nodes >= 2
