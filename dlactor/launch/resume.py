"""Resuming a run from its last complete checkpoint (``dlactor launch --resume RUN_DIR``).

The run directory holds the run's config (``config.toml``, as it was resolved), its records,
and its checkpoints. Resuming rebuilds the plan from that config (same seed: same graph,
data, partition and initial model), finds the last checkpoint every process completed, sets
the records back to the rounds before it (the records of later rounds move aside to
``<file>.superseded``: nothing written is lost), and launches the run from that round: each
process loads its state from its checkpoint file, and appends to its own records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from dlactor.checkpoint.files import check_checkpoint, complete_checkpoints
from dlactor.config import ConfigError
from dlactor.launch.plan import Plan
from dlactor.metrics.jsonio import loads

__all__ = ["ResumePoint", "find_resume_point", "prepare_resume", "savers"]

CONFIG = "config.toml"


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    round: int  # the first round to run again
    wall_s: float  # the records' t_wall up to it (the resumed run's clock continues from it)


def savers(plan: Plan) -> list[int]:
    """The processes that take checkpoints: the learning nodes and the algorithm's servers
    (a topology's service keeps no state beyond the seed and the round)."""
    return [*range(plan.config.nodes), *plan.servers]


def find_resume_point(run_dir: Path, plan: Plan) -> int:
    """The round of the last checkpoint every process completed; ConfigError (exit 2) if
    there is none, or the run had already finished."""
    rounds = complete_checkpoints(run_dir, savers(plan))
    if not rounds:
        raise ConfigError(
            f"{run_dir}: no complete checkpoint to resume from (checkpoints are taken every "
            "checkpoint.every rounds; a run without [checkpoint] cannot be resumed)"
        )
    last = rounds[-1]
    if last >= plan.config.rounds:
        raise ConfigError(f"{run_dir}: the run finished all {plan.config.rounds} rounds already")
    return last


def _split(path: Path, keep: int) -> float:
    """Keep the records of rounds before ``keep`` in ``path``; append the others (and any
    torn line) to ``path.superseded``. The latest ``t_wall`` kept."""
    kept, moved, wall = [], [], 0.0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = loads(line)
            except json.JSONDecodeError:
                moved.append(line if line.endswith("\n") else line + "\n")
                continue
            round = record.get("round") if isinstance(record, dict) else None
            if isinstance(round, int) and round < keep:
                kept.append(line)
                if isinstance(record.get("t_wall"), int | float):
                    wall = max(wall, float(record["t_wall"]))
                continue
            moved.append(line)
    if moved:
        with path.with_name(path.name + ".superseded").open("a", encoding="utf-8") as out:
            out.writelines(moved)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
    return wall


def prepare_resume(run_dir: Path, plan: Plan) -> tuple[Plan, ResumePoint]:
    """Find the checkpoint, set the records back to it, and return the plan to launch."""
    r = find_resume_point(run_dir, plan)
    check_checkpoint(run_dir, r, savers(plan))  # before any record is moved
    wall = 0.0
    for path in sorted((run_dir / "nodes").glob("*.jsonl")):
        wall = max(wall, _split(path, r))
    consensus = run_dir / "consensus.jsonl"
    if consensus.exists():
        _split(consensus, r)
    point = ResumePoint(round=r, wall_s=wall)
    return dataclasses.replace(plan, resume_round=r, resume_wall_s=wall), point


def resumed_manifest(run_dir: Path, point: ResumePoint, run_id: str) -> dict[str, Any]:
    """The run's manifest with this resumption added (``resumed``: from which round, when,
    after which status, and this launch's run id)."""
    from datetime import datetime

    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{run_dir}: its manifest.json cannot be read ({exc})") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{run_dir}: its manifest.json is not a JSON object")
    entry = {
        "from_round": point.round,
        "start": datetime.now().astimezone().isoformat(),
        "previous_status": manifest.get("status"),
        "run_id": run_id,
    }
    manifest["resumed"] = [*manifest.get("resumed", []), entry]
    manifest.update(status="running", end=None)
    return manifest
