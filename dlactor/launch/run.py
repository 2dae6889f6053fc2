"""One run, start to finish: run directory, manifest, the backend, summary, table."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dlactor.config import RayLauncher, RunConfig
from dlactor.launch import local
from dlactor.launch.plan import Plan, process_count
from dlactor.launch.supervisor import Outcome
from dlactor.metrics.jsonio import dumps, write_atomic
from dlactor.metrics.summary import load_node_records, summarize
from dlactor.metrics.topology import write_round_topology
from dlactor.topology.graphs import write_edge_list

__all__ = ["Backend", "LocalBackend", "RunResult", "make_run_dir", "open_backend", "run"]

T = TypeVar("T")

#: Space the launcher holds in the run directory (``RESERVE_NAME``, random bytes that no
#: filesystem compresses away) from before the first file is written until just before
#: summary.json and the manifest's end are: records that fill the disk cannot leave the
#: run without its outcome. Per process: the manifest's address of each.
RESERVE_BYTES, RESERVE_BYTES_PER_PROCESS = 64 << 10, 64
RESERVE_NAME = ".outcome-reserve"


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

        processes = process_count(config)
        local.ensure_open_files(processes, per_node=1)  # a control connection per node
        with RayBackend.connect(config.launcher, processes) as backend:
            yield backend
    else:
        local.ensure_open_files(process_count(config))
        yield LocalBackend()


class RunResult:
    """How a run ended: the backend's ``outcome``, and the run's ``status`` and ``reason``
    once writing its results is counted too (a run whose nodes all finished but whose
    results could not be written failed). ``problems`` are every failure of the launcher's
    own writing, in order; ``lost`` says why summary.json could not be written, if not."""

    def __init__(
        self,
        run_dir: Path,
        outcome: Outcome,
        summary: dict[str, Any],
        *,
        problems: list[str] | None = None,
        lost: str | None = None,
    ) -> None:
        self.run_dir, self.outcome, self.summary = run_dir, outcome, summary
        self.problems = problems or []
        self.lost = lost
        self.status, self.reason = _verdict(outcome, self.problems)


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


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    write_atomic(path, dumps(data, indent=2) + "\n")
    return path


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
        "tls": plan.keys.tls,
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
    manifest: dict[str, Any] | None = None,
) -> RunResult:
    """Execute ``plan`` into ``run_dir`` on ``backend`` (by default, the one the config
    names, opened for this run); every file written along the way stays.

    Whatever fails (a node, the backend, a write to a full disk), summary.json and the
    manifest's status are still written, saying why; only if summary.json itself cannot be
    written is the result's ``lost`` set. A launcher bug (any other exception) is raised,
    after the summary is written."""
    if backend is None:
        with open_backend(plan.config) as opened:
            return run(
                plan,
                run_dir,
                config_text,
                backend=opened,
                show_progress=show_progress,
                manifest=manifest,
            )
    # A resumed run (``plan.resume_round``) keeps its manifest, with the resumption added.
    manifest = _manifest(plan, config_text) if manifest is None else manifest
    t0 = time.time()
    outcome = Outcome(status="failed", reason="the launcher itself failed")
    try:
        outcome = _start(plan, run_dir, config_text, manifest, backend, show_progress)
    finally:
        result = _finish(plan, run_dir, manifest, outcome, t0)
    return result


def _reserve_bytes(plan: Plan) -> int:
    return RESERVE_BYTES + RESERVE_BYTES_PER_PROCESS * plan.processes


def _prepare(plan: Plan, run_dir: Path, config_text: str, manifest: dict[str, Any]) -> str:
    """Write the run directory before any node starts: the space kept for the outcome
    first, so that a disk too full for the rest still has room to say so. Why it could
    not be written, naming the file, or "" if it was."""
    writes: list[tuple[str, Callable[[Path], object]]] = [
        ("nodes", lambda path: path.mkdir(parents=True, exist_ok=True)),
        (RESERVE_NAME, lambda path: path.write_bytes(os.urandom(_reserve_bytes(plan)))),
        ("config.toml", lambda path: path.write_text(config_text)),
        ("topology.edges", lambda path: write_edge_list(plan.graph, path)),
        ("manifest.json", lambda path: _write_json(path, manifest)),
    ]
    if plan.resume_round is not None:  # the run's own config and graph are there already
        writes = [(name, w) for name, w in writes if name not in ("config.toml", "topology.edges")]
    for name, write in writes:
        try:
            write(run_dir / name)
        except OSError as exc:
            return f"the launcher could not write {run_dir / name}: {_why(exc)}"
    return ""


def _why(exc: BaseException) -> str:
    """An error in a few words: ``[Errno 28] No space left on device`` (the file is named
    by the caller), or its type and message if it is not an OSError."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"


def _start(
    plan: Plan,
    run_dir: Path,
    config_text: str,
    manifest: dict[str, Any],
    backend: Backend,
    show_progress: bool,
) -> Outcome:
    """Prepare the run directory and launch; a write that fails there, or an OSError out
    of the backend, fails the run (no node starts if the run directory cannot be written)."""
    if unwritten := _prepare(plan, run_dir, config_text, manifest):
        return Outcome(status="failed", reason=unwritten)
    try:
        return backend.launch(plan, run_dir, show_progress=show_progress)
    except KeyboardInterrupt:  # a second Ctrl-C while the nodes were being reaped
        return Outcome(status="interrupted", reason="interrupted (Ctrl-C)")
    except OSError as exc:
        return Outcome(status="failed", reason=f"the launcher failed: {exc}")


class _Steps:
    """The launcher's closing steps, each guarded: one that fails is noted (in order) and
    the next still runs, so no failure here hides the run's own outcome or another's."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attempt(self, what: str, step: Callable[[], T]) -> T | None:
        try:
            return step()
        except Exception as exc:
            self.problems.append(f"the launcher could not {what}: {_why(exc)}")
            return None


def _finish(
    plan: Plan, run_dir: Path, manifest: dict[str, Any], outcome: Outcome, t0: float
) -> RunResult:
    """Write the manifest's end and, last, summary.json, which says whether anything
    before it failed. The reserve is released just before: the space it held is theirs."""
    steps = _Steps()
    summary = _summary(plan, run_dir, outcome, t0, steps)
    with contextlib.suppress(OSError):
        (run_dir / RESERVE_NAME).unlink(missing_ok=True)
    _close_manifest(manifest, outcome, steps.problems)
    manifest_path, summary_path = run_dir / "manifest.json", run_dir / "summary.json"
    steps.attempt(f"write {manifest_path}", lambda: _write_json(manifest_path, manifest))
    _conclude(summary, outcome, steps.problems)
    written = steps.attempt(f"write {summary_path}", lambda: _write_json(summary_path, summary))
    lost = None if written else steps.problems[-1]
    if lost:
        _conclude(summary, outcome, steps.problems)  # the table printed says so too
    return RunResult(run_dir, outcome, summary, problems=steps.problems, lost=lost)


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that have a value: those that do not apply to a run are left out."""
    return {name: value for name, value in fields.items() if value is not None}


def _summary(
    plan: Plan, run_dir: Path, outcome: Outcome, t0: float, steps: _Steps
) -> dict[str, Any]:
    """Run-level figures from what the nodes wrote (bare ones if that cannot be read), and
    the round topology from the same records: written while the reserve still holds its
    space, as it is the bulky part."""
    nodes = plan.config.nodes
    # a resumed run's wall time continues its records' (the time before the interruption)
    wall = time.time() - (outcome.t_start_barrier or t0) + plan.resume_wall_s
    records = steps.attempt("read the node records", lambda: load_node_records(run_dir)) or {}
    summary = steps.attempt(
        "summarize the node records",
        lambda: summarize(
            run_dir,
            nodes=nodes,
            status=outcome.status,
            wall_s=wall,
            by_node=records,
            targets=plan.config.evaluation.targets,
            lost=[x["node"] for x in outcome.lost],
        ),
    ) or {"nodes": nodes, "rounds": 0, "wall_s": wall, "final": {}}
    topology = run_dir / "topology_rounds.jsonl"
    steps.attempt(f"write {topology}", lambda: write_round_topology(run_dir, records, nodes))
    summary.update(
        name=plan.config.name,
        launch_to_barrier_s=(outcome.t_start_barrier - t0) if outcome.t_start_barrier else None,
        peak_pss_bytes=outcome.peak_pss_bytes,
        **_present(
            # Ray's agents: of the start-up, the wait for them to be ready
            agents_waited_s=outcome.agents_waited_s,
            # a local Ray cluster's own start, before the plan
            cluster_start_s=outcome.cluster_start_s,
        ),
        model_params=plan.model_params,
        model_bytes=plan.model_bytes,
    )
    secure = summary.get("secure")
    if isinstance(secure, dict):  # the fixed point the run's sums were exact in
        sharing = plan.config.sharing
        secure.update(word_bits=32, fraction_bits=getattr(sharing, "fraction_bits", None))
    if outcome.lost:  # the nodes the run went on without (on_node_failure = "continue")
        summary["lost"] = outcome.lost
    settings = plan.config.availability
    if plan.availability is not None and settings is not None:  # the share spent offline
        summary["availability"] = {
            **settings.model_dump(mode="json", exclude_none=True),
            "offline_share": plan.availability.offline_share(),
        }
    if plan.config.network is not None:  # what the run's time axis means
        summary["network"] = plan.config.network.model_dump(mode="json", exclude_defaults=True)
        summary["network"]["clock"] = plan.config.network.clock
    return summary


def _close_manifest(manifest: dict[str, Any], outcome: Outcome, problems: list[str]) -> None:
    status, _ = _verdict(outcome, problems)
    manifest.update(status=status, end=datetime.now().astimezone().isoformat())
    if outcome.hosts:  # where a backend placed the nodes, when it was not only here
        manifest["hosts"] = outcome.hosts
    if outcome.machines:
        manifest["machines"] = outcome.machines
    # Where each node listened: what a firewall on a cluster must let through.
    manifest["addresses"] = {str(n): a for n, a in sorted(outcome.addresses.items())}


def _conclude(summary: dict[str, Any], outcome: Outcome, problems: list[str]) -> None:
    """The summary's status and reason; the launcher's own failures after the run, if
    any, listed (the first may be the reason)."""
    summary["status"], summary["reason"] = _verdict(outcome, problems)
    if problems:
        summary["launcher_errors"] = list(problems)


def _verdict(outcome: Outcome, problems: list[str]) -> tuple[str, str]:
    """The run's status and reason: the backend's if it failed (the first failure is the
    one to see), else the launcher's first problem writing the results, else ok."""
    if outcome.status not in ("ok", "degraded"):
        return outcome.status, _reason(outcome)
    if problems:
        return "failed", problems[0]
    return outcome.status, outcome.reason


def _reason(outcome: Outcome) -> str:
    """The backend's reason, followed by the error itself (the last line of the failed
    node's traceback: "OSError: [Errno 28] No space left on device: ...") unless it is
    already in it: summary.json has no traceback."""
    lines = outcome.traceback.strip().splitlines()
    error = lines[-1].strip() if lines else ""
    return f"{outcome.reason}: {error}" if error and error not in outcome.reason else outcome.reason
