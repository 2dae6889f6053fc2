"""The base of every settings table, and the error a settings hook raises about its own field.

Here rather than in :mod:`dlactor.config` so that run-level tables living beside their own
code (``dlactor.network.settings``) can subclass it without importing the loader.
"""

from __future__ import annotations

from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    from dlactor.config import RunConfigBase

__all__ = ["FieldError", "Settings"]


class FieldError(ValueError):
    """Raised by a settings hook about one of its own fields (``field``, relative to the
    table): the loader names it as ``table.field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _scalar(annotation: Any) -> bool:
    """Whether a field holds an int, a float or a bool (or None): no string is its value."""
    if annotation in (int, float, bool):
        return True
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        return bool(args) and all(a in (int, float, bool) for a in args)
    return False


class Settings(BaseModel):
    """Base of every settings table: frozen, no unknown keys, every float finite (TOML has
    inf and nan; no setting means them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_not_strings(cls, data: Any) -> Any:
        """A number or a boolean written as a string (``nodes = "16"``) is a typo, not a
        number: refused, where pydantic would read it."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, str) and _scalar(field.annotation):
                    raise ValueError(
                        f"{name}: expected a number or a boolean, not the string {value[:40]!r}"
                    )
        return data

    def resolve(self, base_dir: Path) -> Settings:
        """These settings with paths made absolute (relative ones are the config file's
        directory's). Default: nothing to resolve."""
        return self

    def read_files(self, config: RunConfigBase) -> None:
        """Read the files these settings name, now, so that their errors name the field
        (raise FieldError). Default: none."""
