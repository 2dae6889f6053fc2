"""Strict JSON for every file a run writes, and whole-or-nothing writes of small files.

JSON (RFC 8259) has no NaN or Infinity, and ``json.dumps`` writes them bare by default: a
diverged run's ``train_loss`` would make its records unreadable to every strict parser
(``jq``, JavaScript, pandas with a strict engine). Here a non-finite float is written as the
string ``"nan"``, ``"inf"`` or ``"-inf"`` and read back as the float; the strings keep a NaN
apart from a missing figure (``null``). Writing uses ``allow_nan=False``, so a non-finite
value this module did not replace is an error, never a bare ``NaN`` in a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["NONFINITE", "decode", "dumps", "encode", "loads", "write_atomic"]

#: How a non-finite float is written, and what is read back as one.
NONFINITE: dict[str, float] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _name(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def encode(value: Any) -> Any:
    """``value`` with every non-finite float in it, at any depth, replaced by its string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _name(value)
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    """``value`` read from JSON, with ``"nan"``, ``"inf"`` and ``"-inf"`` (at any depth) read
    back as floats. A string field that happens to say "inf" reads back as the float too;
    ``str`` of it gives the same text back."""
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``value`` (compact unless ``indent``). Values are almost always
    finite, so they are dumped as they are first and only rewritten when that fails."""
    separators = (",", ":") if indent is None else None
    try:
        return json.dumps(value, allow_nan=False, indent=indent, separators=separators)
    except ValueError:
        return json.dumps(encode(value), allow_nan=False, indent=indent, separators=separators)


def loads(text: str) -> Any:
    """A value from JSON text, non-finite strings read back as floats. Bare ``NaN`` and
    ``Infinity``, as runs before this module wrote them, are still read."""
    value = json.loads(text)
    if '"nan"' in text or 'inf"' in text:  # cheap test: most lines have none
        return decode(value)
    return value


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Replace ``path`` with ``text`` (a string, or pieces of one) whole or not at all: the
    text goes to ``<name>.tmp``, is synced (a full disk can show only then) and renamed over
    ``path``. If anything fails the ``.tmp`` is removed and the old ``path``, if any, is
    left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
