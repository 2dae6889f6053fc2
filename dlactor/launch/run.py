"""One run, start to finish: run directory, manifest, the backend, summary, table."""

from __future__ import annotations

import json
import platform
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from dlactor.config import RayLauncher, RunConfig
from dlactor.launch import local
from dlactor.launch.plan import Plan
from dlactor.launch.supervisor import Outcome
from dlactor.metrics.summary import load_node_records, summarize
from dlactor.metrics.topology import write_round_topology
from dlactor.topology.graphs import write_edge_list

__all__ = ["Backend", "LocalBackend", "RunResult", "make_run_dir", "open_backend", "run"]


class Backend(Protocol):
    """Places a run's node processes and supervises them to the end."""

    def launch(self, plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome: ...


class LocalBackend:
    """Node processes forked on this machine (``dlactor.launch.local``)."""

    def launch(self, plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome:
        return local.launch_local(plan, run_dir, show_progress=show_progress)


@contextmanager
def open_backend(config: RunConfig) -> Iterator[Backend]:
    """The backend ``config.launcher`` names, ready to launch. The Ray backend connects to
    its cluster here (or starts a local one, stopped on the way out), so that a cluster
    that cannot be reached or is too small is a ConfigError before any run directory
    exists. Ray is imported only here, and only for a Ray run."""
    if isinstance(config.launcher, RayLauncher):
        from dlactor.launch.ray import RayBackend

        processes = config.nodes + config.topology.services
        with RayBackend.connect(config.launcher, processes) as backend:
            yield backend
    else:
        local.ensure_open_files(config.nodes + config.topology.services)
        yield LocalBackend()


class RunResult:
    def __init__(self, run_dir: Path, outcome: Outcome, summary: dict[str, Any]) -> None:
        self.run_dir, self.outcome, self.summary = run_dir, outcome, summary

    @property
    def status(self) -> str:
        return self.outcome.status


def make_run_dir(out: Path, name: str) -> Path:
    """``<out>/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{name}-{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")


def _versions(backend: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    packages = ["dlactor", "torch", "msgpack", "uvloop", "networkx", "numpy", "pydantic"]
    for pkg in packages + (["ray"] if backend == "ray" else []):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _manifest(plan: Plan, config_text: str) -> dict[str, Any]:
    cfg = plan.config
    return {
        "name": cfg.name,
        "run_id": plan.run_id,
        "versions": _versions(cfg.launcher.kind),
        "hosts": [socket.gethostname()],
        "platform": platform.platform(),
        "argv": sys.argv,
        "seed": cfg.seed,
        "nodes": cfg.nodes,
        "rounds": cfg.rounds,
        "backend": cfg.launcher.kind,
        "model_params": plan.model_params,
        "model_bytes": plan.model_bytes,
        "edges": plan.graph.number_of_edges(),
        "start": datetime.now().astimezone().isoformat(),
        "end": None,
        "status": "running",
    }


def run(
    plan: Plan,
    run_dir: Path,
    config_text: str,
    *,
    backend: Backend | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Execute ``plan`` into ``run_dir`` on ``backend`` (by default, the one the config
    names, opened for this run); every file written along the way stays."""
    if backend is None:
        with open_backend(plan.config) as opened:
            return run(plan, run_dir, config_text, backend=opened, show_progress=show_progress)
    (run_dir / "nodes").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config_text)
    write_edge_list(plan.graph, run_dir / "topology.edges")
    manifest = _manifest(plan, config_text)
    _write_json(run_dir / "manifest.json", manifest)
    t0 = time.time()
    outcome = Outcome(status="failed", reason="the launcher itself failed")
    try:
        outcome = backend.launch(plan, run_dir, show_progress=show_progress)
    except KeyboardInterrupt:  # a second Ctrl-C while the nodes were being reaped
        outcome = Outcome(status="interrupted", reason="interrupted (Ctrl-C)")
    finally:
        wall = time.time() - (outcome.t_start_barrier or t0)
        records = load_node_records(run_dir)
        nodes = plan.config.nodes
        summary = summarize(
            run_dir, nodes=nodes, status=outcome.status, wall_s=wall, by_node=records
        )
        write_round_topology(run_dir, records, nodes)
        summary.update(
            name=plan.config.name,
            reason=outcome.reason,
            launch_to_barrier_s=(outcome.t_start_barrier - t0) if outcome.t_start_barrier else None,
            peak_pss_bytes=outcome.peak_pss_bytes,
            model_params=plan.model_params,
            model_bytes=plan.model_bytes,
        )
        _write_json(run_dir / "summary.json", summary)
        manifest.update(status=outcome.status, end=datetime.now().astimezone().isoformat())
        if outcome.hosts:  # where a backend placed the nodes, when it was not only here
            manifest["hosts"] = outcome.hosts
        # Where each node listened: what a firewall on a cluster must let through.
        manifest["addresses"] = {str(n): a for n, a in sorted(outcome.addresses.items())}
        _write_json(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, outcome, summary)
