"""``[availability]``, ``[faults]`` and ``[checkpoint]``: nodes that come and go, nodes that
die, and what a run saves to be resumed (docs/churn.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from dlactor.churn.availability import Availability, read_availability, sessions
from dlactor.network.files import NetworkFileError
from dlactor.settings_base import FieldError, Settings

if TYPE_CHECKING:
    from dlactor.config import RunConfigBase

__all__ = ["AvailabilitySettings", "CheckpointSettings", "FaultSettings", "check_churn"]

MAX_ROUNDS = 10_000_000
#: The algorithms whose rounds know what to do with a node that sits a round out or dies.
CHURN_ALGORITHMS = frozenset({"dpsgd", "fedavg"})


class AvailabilitySettings(Settings):
    """Which nodes are online in each round: ``sessions`` drawn from the run's seed, or a
    ``trace`` file. An offline node neither trains nor exchanges; its neighbours know it
    from the schedule and do not wait for it (docs/churn.md)."""

    kind: Literal["sessions", "trace"] = "sessions"
    offline: float = Field(
        0.1, ge=0.0, le=0.9, description="sessions: share of the nodes offline at any time"
    )
    mean_offline: float = Field(
        5.0, ge=1.0, le=MAX_ROUNDS, description="sessions: mean offline session, in rounds"
    )
    path: Path | None = Field(
        None, description="trace: CSV of node,start,end[,state] (docs/churn.md)"
    )
    unit: Literal["rounds", "seconds"] = Field(
        "rounds", description="trace: start and end in rounds, or in seconds (with round_s)"
    )
    round_s: float | None = Field(
        None,
        ge=0.001,
        le=86_400,
        description="trace in seconds: the seconds one round stands for (0.001 to 86,400)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AvailabilitySettings:
        # By value, not by what was written: a run's saved config.toml has every default
        # written out, and must load again (dlactor launch --resume).
        defaults = type(self).model_fields
        if self.kind == "trace":
            if self.path is None:
                raise ValueError('kind = "trace" needs path (a CSV of node,start,end)')
            if any(getattr(self, k) != defaults[k].default for k in ("offline", "mean_offline")):
                raise ValueError('offline and mean_offline are for kind = "sessions"')
            if (self.unit == "seconds") != (self.round_s is not None):
                raise ValueError('unit = "seconds" needs round_s, and round_s needs it')
        elif self.path is not None or self.round_s is not None or self.unit != "rounds":
            raise ValueError('path, unit and round_s are for kind = "trace"')
        return self

    def resolve(self, base_dir: Path) -> AvailabilitySettings:
        if self.path is None or self.path.is_absolute():
            return self
        return self.model_copy(update={"path": (base_dir / self.path).resolve()})

    def read_files(self, config: RunConfigBase) -> None:
        self.load(config.nodes, config.rounds, config.seed)

    def load(self, nodes: int, rounds: int, seed: int) -> Availability:
        """The schedule (read or drawn once per settings, nodes, rounds and seed)."""
        return _load(self, nodes, rounds, seed)


@lru_cache(maxsize=2)
def _load(settings: AvailabilitySettings, nodes: int, rounds: int, seed: int) -> Availability:
    if settings.kind == "sessions":
        try:
            return sessions(
                nodes, rounds, seed, offline=settings.offline, mean_offline=settings.mean_offline
            )
        except ValueError as exc:
            raise FieldError("offline", str(exc)) from exc
    assert settings.path is not None
    try:
        return read_availability(str(settings.path), nodes, rounds, round_s=settings.round_s)
    except NetworkFileError as exc:
        raise FieldError("path", str(exc)) from exc


class FaultSettings(Settings):
    """Failures the launcher injects: ``kill`` learning nodes are killed (SIGKILL, a real
    signal to a real process) at rounds drawn from the run's seed, each once it has
    reported the round before. With ``launcher.on_node_failure = "continue"`` the run goes
    on without them; with "stop" the first one stops it."""

    kill: int = Field(1, ge=0, le=1 << 16, description="learning nodes killed during the run")
    first_round: int = Field(1, ge=1, le=MAX_ROUNDS, description="earliest round of a kill")
    last_round: int | None = Field(
        None, ge=1, le=MAX_ROUNDS, description="latest round of a kill (default: the last)"
    )

    def schedule(self, nodes: int, rounds: int, seed: int) -> dict[int, int]:
        """Node -> the round during which it is killed, drawn from the seed."""
        last = rounds - 1 if self.last_round is None else self.last_round
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0xDEAD,)))
        victims = rng.choice(nodes, size=self.kill, replace=False)
        when = rng.integers(self.first_round, last + 1, size=self.kill)
        return {int(n): int(r) for n, r in zip(victims, when, strict=True)}

    def check(self, config: RunConfigBase) -> None:
        last = config.rounds - 1 if self.last_round is None else self.last_round
        if self.kill >= config.nodes:
            raise FieldError("kill", f"{self.kill} must be below nodes = {config.nodes}")
        if not self.first_round <= last < config.rounds:
            raise FieldError(
                "first_round", f"kills must fall in rounds 1..{config.rounds - 1}, after it"
            )


class CheckpointSettings(Settings):
    """Every ``every`` rounds (and after the last) each process saves what it needs to
    continue, in safetensors files under ``checkpoints/`` (0: never)."""

    every: int = Field(0, ge=0, le=MAX_ROUNDS, description="rounds between checkpoints (0: off)")
    keep: int = Field(2, ge=1, le=1000, description="complete checkpoints kept (older deleted)")


def check_churn(config: RunConfigBase) -> None:
    """What availability, kills and ``on_node_failure = "continue"`` need of the rest of the
    config; FieldError naming the field (relative to the run config)."""
    availability = getattr(config, "availability", None)
    faults = getattr(config, "faults", None)
    survive = config.launcher.on_node_failure == "continue"
    if faults is not None:
        try:
            faults.check(config)
        except FieldError as exc:
            raise FieldError(f"faults.{exc.field}", str(exc)) from exc
    if availability is None and not survive:
        return
    what = "[availability]" if availability is not None else 'on_node_failure = "continue"'
    algorithm = str(getattr(config.algorithm, "kind", ""))  # type: ignore[attr-defined]
    if algorithm not in CHURN_ALGORITHMS:
        raise FieldError(
            "algorithm.kind", f"{what} works with {sorted(CHURN_ALGORITHMS)}, not {algorithm!r}"
        )
    sharing = str(getattr(config.sharing, "kind", ""))  # type: ignore[attr-defined]
    if sharing == "choco":
        raise FieldError("sharing.kind", f"choco needs fixed neighbours: {what} changes them")
    if survive and sharing == "secure":
        raise FieldError(
            "launcher.on_node_failure",
            "secure aggregation has no dropout recovery: a lost sender's masks never cancel",
        )
