"""The base of every settings table, and the error a settings hook raises about its own field.

Here rather than in :mod:`dlactor.config` so that run-level tables living beside their own
code (``dlactor.network.settings``) can subclass it without importing the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from dlactor.config import RunConfigBase

__all__ = ["FieldError", "Settings"]


class FieldError(ValueError):
    """Raised by a settings hook about one of its own fields (``field``, relative to the
    table): the loader names it as ``table.field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Settings(BaseModel):
    """Base of every settings table: frozen, no unknown keys, every float finite (TOML has
    inf and nan; no setting means them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def resolve(self, base_dir: Path) -> Settings:
        """These settings with paths made absolute (relative ones are the config file's
        directory's). Default: nothing to resolve."""
        return self

    def read_files(self, config: RunConfigBase) -> None:
        """Read the files these settings name, now, so that their errors name the field
        (raise FieldError). Default: none."""
