"""Where checkpoints live in a run directory, which are complete, and saving and loading one
process's.

``checkpoints/round-00000020/<process>.safetensors`` holds process ``<process>``'s state
before round 20 (after round 19). A checkpoint is complete when every process that saves
(the learning nodes and the algorithm's servers) has written its file; each file appears
whole or not at all (written aside, then renamed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlactor.checkpoint.state import (
    CheckpointError,
    capture,
    read_state,
    restore,
    unpack,
    write_state,
)

if TYPE_CHECKING:
    from dlactor.node.node import Node

__all__ = [
    "CHECKPOINTS",
    "check_checkpoint",
    "checkpoint_dir",
    "complete_checkpoints",
    "load_node",
    "prune",
    "save_node",
]

CHECKPOINTS = "checkpoints"
_PREFIX = "round-"


def checkpoint_dir(run_dir: Path, round: int) -> Path:
    """The directory of the checkpoint taken before ``round``."""
    return run_dir / CHECKPOINTS / f"{_PREFIX}{round:08d}"


def _file(run_dir: Path, round: int, process: int) -> Path:
    return checkpoint_dir(run_dir, round) / f"{process}.safetensors"


def _rounds(run_dir: Path) -> list[int]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        number = entry.name.removeprefix(_PREFIX)
        if entry.name.startswith(_PREFIX) and number.isdigit() and entry.is_dir():
            out.append(int(number))
    return sorted(out)


def complete_checkpoints(run_dir: Path, processes: list[int]) -> list[int]:
    """The rounds whose checkpoint every one of ``processes`` has written, oldest first."""
    return [r for r in _rounds(run_dir) if all(_file(run_dir, r, p).is_file() for p in processes)]


def prune(run_dir: Path, processes: list[int], keep: int) -> None:
    """Delete every checkpoint older than the ``keep`` newest complete ones."""
    complete = complete_checkpoints(run_dir, processes)
    if len(complete) <= keep:
        return
    oldest_kept = complete[-keep]
    for r in _rounds(run_dir):
        if r < oldest_kept:
            shutil.rmtree(checkpoint_dir(run_dir, r), ignore_errors=True)


def check_checkpoint(run_dir: Path, round: int, processes: list[int]) -> None:
    """Every process's file of the checkpoint before ``round`` is a dlactor checkpoint of
    that process and round (its header only: tensors are read by each process when it
    loads); CheckpointError naming the first that is not."""
    for process in processes:
        path = _file(run_dir, round, process)
        tree = read_state(path, tensors=False)[1]
        if tree.get("process") != process or tree.get("round") != round:
            raise CheckpointError(f"{path}: not process {process}'s state before round {round}")


def _components(node: Node) -> dict[str, object]:
    """The node's parts that keep state across rounds (``checkpointed``)."""
    parts: dict[str, object] = {
        "trainer": node.trainer,
        "sharing": node.sharing,
        "topology": node.topology,
        "algorithm": node.algorithm,
        "clock": node.clock,
    }
    return {k: v for k, v in parts.items() if v is not None and hasattr(type(v), "checkpointed")}


def save_node(node: Node, run_dir: Path, round: int) -> Path:
    """Write ``node``'s state before ``round`` (its model, and every part's ``checkpointed``
    attributes)."""
    parts: dict[str, Any] = {
        "process": node.node,
        "round": round,
        "model": node.model.state_dict(),
        **_components(node),
    }
    tensors, tree = capture(parts)
    path = _file(run_dir, round, node.node)
    write_state(path, tensors, tree)
    return path


def load_node(node: Node, run_dir: Path, round: int) -> None:
    """Set ``node`` to its state before ``round`` from its checkpoint; it will run from
    ``round`` on. CheckpointError naming the file if it does not fit this node."""
    path = _file(run_dir, round, node.node)
    tensors, tree = read_state(path)
    if tree.get("process") != node.node or tree.get("round") != round:
        raise CheckpointError(f"{path}: not process {node.node}'s state before round {round}")
    where = str(path)
    try:
        state = unpack(tree["model"], tensors, where)
        node.model.load_state_dict(state)
        for name, part in _components(node).items():
            if name not in tree:
                raise CheckpointError(f"{path}: no saved {name} ({type(part).__name__})")
            packed = tree[name]
            if not isinstance(packed, dict) or "$obj" not in packed:
                raise CheckpointError(f"{path}: {name} is not a saved object")
            restore(part, packed["$obj"], tensors, f"{where}: {name}")
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, RecursionError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: does not fit this run ({exc})") from None
    node.resume_at(round)
