"""``[network]``: the emulated network a run's messages cross, and the clock its time is told by.

Without the table a run's messages cross this machine's own loopback or LAN, as always. With
it, every message between two processes of the run waits its link's latency, its sender's
uplink and its receiver's downlink (docs/network.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from dlactor.network.files import (
    MAX_LATENCY_MS,
    MAX_MBPS,
    MAX_SPEED,
    NetworkFileError,
    read_latency_matrix,
    read_speeds,
    read_trace,
)
from dlactor.settings_base import FieldError, Settings

if TYPE_CHECKING:
    from dlactor.config import RunConfigBase

__all__ = ["NetworkSettings", "NodeClass"]

_MBPS = "Mbit/s (10**6 bits per second)"


class NodeClass(Settings):
    """``[[network.classes]]``: some nodes on links of their own (10% of the nodes on a slow
    mobile link, say). Chosen by ``nodes`` (ids) or ``fraction`` (that share of the nodes not in
    an earlier class, drawn with the run's seed); unset values are the table's."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    fraction: float | None = Field(None, gt=0, le=1, description="share of the nodes")
    nodes: list[int] | None = Field(None, description="node ids (instead of fraction)")
    uplink_mbps: float | None = Field(None, gt=0, le=MAX_MBPS, description=f"uplink, {_MBPS}")
    downlink_mbps: float | None = Field(None, gt=0, le=MAX_MBPS, description="downlink")
    latency_ms: float = Field(
        0.0, ge=0, le=MAX_LATENCY_MS, description="access latency added to every link it is on"
    )
    speed: float = Field(1.0, gt=0, le=MAX_SPEED, description="compute speed factor (0.5: half)")

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> NodeClass:
        if (self.fraction is None) == (self.nodes is None):
            raise ValueError(f"class {self.name!r}: give either fraction or nodes")
        return self


class NetworkSettings(Settings):
    """The emulated network (docs/network.md has the model, and why)."""

    clock: Literal["virtual", "wall"] = Field(
        "virtual",
        description='"virtual": nothing waits, each process keeps a virtual clock; "wall": '
        "the transport really delays and paces",
    )
    latency_ms: float = Field(
        0.0, ge=0, le=MAX_LATENCY_MS, description="one-way latency of every link"
    )
    jitter_ms: float = Field(
        0.0, ge=0, le=MAX_LATENCY_MS, description="each message's latency +- up to this"
    )
    uplink_mbps: float | None = Field(
        None, gt=0, le=MAX_MBPS, description=f"every process's uplink, {_MBPS} (unset: unlimited)"
    )
    downlink_mbps: float | None = Field(
        None, gt=0, le=MAX_MBPS, description="every process's downlink (unset: unlimited)"
    )
    loss: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="packet loss rate: caps each message's rate at TCP's (Mathis et al.)",
    )
    mss_bytes: int = Field(1448, ge=64, le=65536, description="TCP segment size for that cap")
    latency_matrix: Path | None = Field(
        None, description="CSV of nodes x nodes one-way latencies (ms), replacing latency_ms"
    )
    trace: Path | None = Field(
        None, description="CSV of changes over time: time_s,target,uplink_mbps,..."
    )
    classes: list[NodeClass] = Field(default_factory=list, max_length=1024)
    compute: Literal["measured", "profile"] = Field(
        "measured",
        description='virtual compute time: "measured" CPU time, or a device "profile" '
        "(step_ms per local step: the same timeline on any machine)",
    )
    step_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="profile: virtual time of one local step"
    )
    merge_ms: float = Field(
        0.0, ge=0, le=3_600_000, description="profile: virtual time to merge one model received"
    )
    speed_sigma: float = Field(
        0.0, ge=0, le=5, description="per-node speed factors drawn log-normal(0, sigma), seeded"
    )
    speeds: Path | None = Field(None, description="file: one speed factor per node, per line")

    @model_validator(mode="after")
    def _consistent(self) -> NetworkSettings:
        if self.compute == "profile" and self.step_ms is None:
            raise ValueError('compute = "profile" needs step_ms (virtual time per local step)')
        if self.compute != "profile" and (self.step_ms is not None or self.merge_ms):
            raise ValueError(
                'step_ms and merge_ms are a device profile\'s: set compute = "profile"'
            )
        if self.compute == "profile" and self.clock == "wall":
            raise ValueError('compute = "profile" needs clock = "virtual"')
        if self.speeds is not None and self.speed_sigma > 0:
            raise ValueError("give speeds (a file) or speed_sigma, not both")
        return self

    def resolve(self, base_dir: Path) -> NetworkSettings:
        """Relative file paths are the config file's directory's."""
        update = {
            name: (base_dir / path).resolve()
            for name in ("latency_matrix", "trace", "speeds")
            if (path := getattr(self, name)) is not None and not path.is_absolute()
        }
        return self.model_copy(update=update) if update else self

    def read_files(self, config: RunConfigBase) -> None:
        """Read every file now (errors name the field, the file and the line), and check
        the classes against the run's node count."""
        self.load(config.nodes)
        taken: set[int] = set()
        for i, cls in enumerate(self.classes):
            if len(set(cls.nodes or [])) != len(cls.nodes or []):
                raise FieldError(f"classes.{i}.nodes", "a node is listed twice")
            for node in cls.nodes or []:
                if not 0 <= node < config.nodes:
                    raise FieldError(
                        f"classes.{i}.nodes",
                        f"node {node} is not in the run (0 to {config.nodes - 1})",
                    )
                if node in taken:
                    raise FieldError(f"classes.{i}.nodes", f"node {node} is in two classes")
                taken.add(node)
        fractions = sum(c.fraction or 0.0 for c in self.classes)
        if fractions > 1.0 + 1e-9:
            raise FieldError("classes", f"the fractions add up to {fractions:g}, more than 1")

    def load(self, nodes: int) -> dict[str, object]:
        """The files' contents: ``latency_matrix`` (seconds), ``trace`` rows, ``speeds``."""
        out: dict[str, object] = {}
        readers = {
            "latency_matrix": read_latency_matrix,
            "trace": read_trace,
            "speeds": read_speeds,
        }
        for name, reader in readers.items():
            path = getattr(self, name)
            if path is None:
                continue
            try:
                out[name] = reader(str(path), nodes)
            except NetworkFileError as exc:
                raise FieldError(name, str(exc)) from exc
        return out
