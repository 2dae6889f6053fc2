"""A process's state between two rounds, as tensors and JSON, and back.

A strategy says what it keeps across rounds by naming those attributes in a class attribute
``checkpointed`` (a tuple of names). Their values may be tensors, ``torch.Generator`` and
``numpy.random.Generator`` objects (their states are saved and set back into the objects),
optimizers (their ``state_dict``), objects that have a ``checkpointed`` of their own (saved
attribute by attribute, restored into the same object), and plain data: numbers, strings,
None, and lists, tuples and dicts of them (dict keys strings or integers).

Tensors go into a safetensors file, everything else into one JSON document in its metadata:
neither format can run code when read (no pickle, no ``torch.load``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "FORMAT",
    "CheckpointError",
    "capture",
    "read_state",
    "restore",
    "unpack",
    "write_state",
]

#: The metadata key and value that say a file is a dlactor checkpoint, and which version.
FORMAT = "dlactor-checkpoint-1"
_META = "dlactor"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: names the file and what is wrong."""


class _Packer:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, key: str, value: torch.Tensor) -> dict[str, str]:
        self.tensors[key] = value.detach().to("cpu").clone().contiguous()
        return {"$t": key}

    def pack(self, value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(key, value)
        if isinstance(value, torch.Generator):
            return {"$gen": self.tensor(key, value.get_state())["$t"]}
        if isinstance(value, np.random.Generator):
            return {"$rng": value.bit_generator.state}
        if isinstance(value, torch.optim.Optimizer):
            return {"$opt": self.pack(value.state_dict(), key)}
        if hasattr(type(value), "checkpointed"):
            return {"$obj": self.attributes(value, key)}
        if isinstance(value, dict):
            if not all(isinstance(k, str | int) and not isinstance(k, bool) for k in value):
                raise TypeError(f"{key}: a dict to checkpoint has keys other than str and int")
            return {"$d": [[k, self.pack(v, f"{key}/{k}")] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"$tuple": [self.pack(v, f"{key}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.pack(v, f"{key}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(
            f"{key}: cannot checkpoint a {type(value).__name__} (a strategy that keeps state "
            "across rounds names it in a class attribute checkpointed; docs/churn.md)"
        )

    def attributes(self, obj: object, key: str) -> dict[str, Any]:
        names: tuple[str, ...] = type(obj).checkpointed  # type: ignore[attr-defined]
        return {name: self.pack(getattr(obj, name), f"{key}/{name}") for name in names}


def capture(parts: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``parts`` (name -> a value as above) as safetensors' tensors and a JSON tree."""
    packer = _Packer()
    tree = {name: packer.pack(value, name) for name, value in parts.items()}
    return packer.tensors, tree


def unpack(value: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    """A packed value back as plain data (generators as their states, objects as dicts)."""
    if isinstance(value, list):
        return [unpack(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise CheckpointError(f"{where}: an entry is not one tagged value")
    ((tag, inner),) = value.items()
    if tag in ("$t", "$gen"):
        if inner not in tensors:
            raise CheckpointError(f"{where}: no tensor {inner!r} in the file")
        return tensors[inner]
    if tag == "$rng":
        return inner
    if tag in ("$opt", "$obj"):
        return (
            unpack(inner, tensors, where)
            if tag == "$opt"
            else {k: unpack(v, tensors, where) for k, v in inner.items()}
        )
    if tag == "$d":
        return {k: unpack(v, tensors, where) for k, v in inner}
    if tag == "$tuple":
        return tuple(unpack(v, tensors, where) for v in inner)
    raise CheckpointError(f"{where}: unknown entry {tag!r}")


def restore(obj: object, saved: Any, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Set ``obj``'s ``checkpointed`` attributes from their packed values ``saved``."""
    names: tuple[str, ...] = type(obj).checkpointed  # type: ignore[attr-defined]
    if not isinstance(saved, dict) or set(saved) != set(names):
        raise CheckpointError(f"{where}: saved {sorted(saved or {})}, expected {sorted(names)}")
    for name in names:
        setattr_restored(obj, name, saved[name], tensors, f"{where}.{name}")


def setattr_restored(
    obj: object, name: str, packed: Any, tensors: Mapping[str, torch.Tensor], where: str
) -> None:
    current = getattr(obj, name)
    tag = next(iter(packed)) if isinstance(packed, dict) and len(packed) == 1 else None
    if tag == "$obj":
        restore(current, packed["$obj"], tensors, where)
    elif tag == "$gen" and isinstance(current, torch.Generator):
        current.set_state(unpack(packed, tensors, where))
    elif tag == "$rng" and isinstance(current, np.random.Generator):
        current.bit_generator.state = packed["$rng"]
    elif tag == "$opt" and isinstance(current, torch.optim.Optimizer):
        current.load_state_dict(unpack(packed, tensors, where))
    elif tag in ("$gen", "$rng", "$opt", "$obj"):
        raise CheckpointError(f"{where}: saved a {tag[1:]}, but it is a {type(current).__name__}")
    else:
        value = unpack(packed, tensors, where)
        if isinstance(value, torch.Tensor):
            if isinstance(current, torch.Tensor) and current.shape == value.shape:
                with torch.no_grad():  # in place: whatever holds it (an optimizer) sees it
                    current.copy_(value)
                return
            value = value.clone()
        setattr(obj, name, value)


def write_state(path: Path, tensors: Mapping[str, torch.Tensor], tree: Mapping[str, Any]) -> None:
    """One safetensors file, written whole or not at all (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {"format": FORMAT, _META: json.dumps(tree, allow_nan=True)}
    save_file(dict(tensors), str(tmp), metadata=meta)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_state(
    path: Path, *, tensors: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (unless ``tensors`` is False) and the JSON tree of a checkpoint file;
    CheckpointError naming the file for anything else (not safetensors, not dlactor's,
    not readable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            keys = list(handle.keys()) if tensors else []
            loaded = {key: handle.get_tensor(key) for key in keys}
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    except Exception as exc:  # safetensors' own error type
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dlactor checkpoint ({FORMAT})")
    try:
        tree = json.loads(meta[_META])
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its state is not JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: its state is not a JSON object")
    return loaded, tree
