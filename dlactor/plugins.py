"""The strategy registry: built-ins and user plugins, looked up by ``kind``.

A plugin is a pydantic settings model (a subclass of one of the category bases in
``dlactor.config``, with ``kind: Literal["name"] = "name"`` and a ``build`` method
returning the async strategy) registered with :func:`register`. Plugins arrive by
entry point (group ``dlactor.plugins``: each entry point names a module to import)
or by a ``plugins = [...]`` list in the config (module names, or ``.py`` paths
relative to the config file). dlactor's own strategies are registered the same way: its
pyproject.toml declares one entry point per package (``dlactor.topology.settings``...).
All are resolved in the launcher, before any node process exists: a node never imports
anything named by a string.

Plugins are code, and it runs when a config is read: every installed entry point, and every
module or file a config's ``plugins`` list names, is imported -- with the rights of whoever
runs ``dlactor`` (``validate`` as much as ``launch``) and before any other check of the
config. Only use configs you trust, as you would only run scripts you trust.

An import that fails is reported without quoting what the file holds (a path may name any
file): a plugin file's syntax error or exception gives its type and line; run the file with
``python`` to see the message.

A config's own ``plugins`` failing to import fails that config. An installed entry point
failing to import fails only the configs that need it: it is recorded (:func:`broken`, by
package and error) and named wherever a kind is not found, since it may be the one that
would have registered it; every other config validates as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = [
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "KindClash",
    "PluginError",
    "broken",
    "broken_note",
    "file_modules",
    "kinds",
    "load_plugins",
    "register",
    "registered",
]

ENTRY_POINT_GROUP = "dlactor.plugins"

T = TypeVar("T", bound=type[BaseModel])

_REGISTRY: dict[str, dict[str, type[BaseModel]]] = {}


class PluginError(ValueError):
    """A plugin could not be found, imported or registered."""


class KindClash(PluginError):
    """Two classes register one kind of one table."""

    def __init__(self, message: str, category: str, kind: str) -> None:
        super().__init__(message)
        self.category, self.kind = category, kind


@dataclass(frozen=True, slots=True)
class BrokenPlugin:
    """An installed entry point that failed to import: which package, and why."""

    package: str  # the distribution that declares it ("unknown package" if not told)
    entry_point: str
    module: str
    error: str  # "ModuleNotFoundError: No module named 'scipy'"
    #: (table, kind) when it failed registering a kind another class has: configs of
    #: that kind cannot tell which one they mean.
    clash: tuple[str, str] | None = None

    def __str__(self) -> str:
        return (
            f"the installed plugin package {self.package!r} (entry point "
            f"{self.entry_point!r} = {self.module!r}) failed to import: {self.error}"
        )


#: The entry points that failed at the last ``load_plugins``. Each load tries them again (a
#: dependency installed since); a module that registered some kinds before it failed
#: registers them again as the same classes (``_same_source``).
_BROKEN: list[BrokenPlugin] = []


def broken() -> list[BrokenPlugin]:
    """The installed plugins that failed to import at the last load."""
    return list(_BROKEN)


def broken_note() -> str:
    """``; <plugin> failed to import: ...`` for each of :func:`broken`, to follow a message
    about a kind that is missing or ambiguous (one of them may be why)."""
    return "".join(f"; {plugin}" for plugin in _BROKEN)


def _kind_of(model: type[BaseModel]) -> str:
    field = model.model_fields.get("kind")
    if field is None or not isinstance(field.default, str):
        raise PluginError(f"{model.__name__} needs a field `kind: Literal['name'] = 'name'`")
    return field.default


def register(category: str) -> Callable[[T], T]:
    """Class decorator: make a settings model available as ``[category] kind = "..."``."""

    def decorate(model: T) -> T:
        kind = _kind_of(model)
        known = _REGISTRY.setdefault(category, {})
        if kind in known and _same_source(known[kind], model):
            return model  # one file imported under two names (a test, and a config's list)
        if kind in known and known[kind] is not model:
            existing = known[kind]
            raise KindClash(
                f"{category} kind {kind!r} is registered twice: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{model.__module__}.{model.__qualname__}",
                category,
                kind,
            )
        known[kind] = model
        return model

    return decorate


def _same_source(a: type, b: type) -> bool:
    """Whether two classes are one class statement: the same name in the same file."""
    files = [getattr(sys.modules.get(c.__module__), "__file__", None) for c in (a, b)]
    return (
        a.__qualname__ == b.__qualname__
        and None not in files
        and Path(str(files[0])).resolve() == Path(str(files[1])).resolve()
    )


def registered(category: str) -> dict[str, type[BaseModel]]:
    """The settings models of one category, by kind (a copy)."""
    return dict(_REGISTRY.get(category, {}))


def kinds(category: str) -> list[str]:
    return sorted(_REGISTRY.get(category, {}))


_FROM_FILES: dict[str, ModuleType] = {}


def _import_path(path: Path) -> None:
    name = f"dlactor_plugin_{path.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    _FROM_FILES[name] = module


def file_modules() -> list[ModuleType]:
    """The plugin modules imported from ``.py`` files (not importable by name elsewhere: a
    backend that starts fresh interpreters ships their code, see ``dlactor.launch.ray``)."""
    return list(_FROM_FILES.values())


def load_plugins(specs: Iterable[str], base_dir: Path | None = None) -> None:
    """Import the entry-point plugins, then each config-listed module or ``.py`` file
    (importing twice is a no-op). An entry point that fails is recorded (:func:`broken`),
    not raised: only configs that need a kind it would have brought fail, naming it. A
    config-listed plugin that fails raises PluginError."""
    _BROKEN.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _import_entry_point(ep)
    for spec in specs:
        if spec.endswith(".py"):
            path = Path(spec) if base_dir is None else base_dir / spec
            if not path.is_file():
                raise PluginError(f"plugins: no such file {path}")
            _wrap(partial(_import_path, path), f"plugin file {path}", path)
        else:
            _import(spec, f"plugin module {spec!r}")


def _import_entry_point(ep: EntryPoint) -> None:
    try:
        _import(ep.value, f"entry point {ep.name!r}")
    except PluginError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        package = ep.dist.name if ep.dist is not None else "unknown package"
        error = f"{type(cause).__name__}: {cause}"
        clash = (exc.category, exc.kind) if isinstance(exc, KindClash) else None
        _BROKEN.append(BrokenPlugin(package, ep.name, ep.value, error, clash))


def _import(module: str, what: str) -> None:
    _wrap(lambda: importlib.import_module(module), what)


def _wrap(action: Callable[[], Any], what: str, path: Path | None = None) -> None:
    """Run an import; turn its failure into a PluginError. For a plugin file, the message
    says the error's type and line but not its text, which may quote the file."""
    try:
        action()
    except PluginError:
        raise
    except Exception as exc:
        if path is None:
            raise PluginError(f"{what} failed to import: {type(exc).__name__}: {exc}") from exc
        line = _line_in(exc, path)
        where = "" if line is None else f" at line {line}"
        raise PluginError(
            f"{what} failed to import: {type(exc).__name__}{where} "
            f"(message not shown; `python {path}` shows it)"
        ) from exc


def _line_in(exc: Exception, path: Path) -> int | None:
    """The line of ``path`` where ``exc`` was raised (its last frame in that file)."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return frames[-1].lineno if frames else None
