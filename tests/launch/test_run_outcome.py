"""run(): whatever fails while the results are written, the run's outcome is kept (the first
failure is the reason, later ones are listed) and summary.json is written if it can be."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dlactor.launch import run as run_module
from dlactor.launch.plan import Plan
from dlactor.launch.run import RESERVE_NAME, RunResult, run
from dlactor.launch.supervisor import Outcome
from dlactor.metrics.jsonio import write_atomic
from tests.conftest import small_plan

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
NODE_TB = (
    "Traceback (most recent call last):\n  ...\n"
    "OSError: [Errno 28] No space left on device: could not append a record to nodes/2.jsonl\n"
)


class Backend:
    """Writes one node's records (as a node would), then ends as ``outcome`` says or raises
    ``error``. Sees the run directory as the nodes would."""

    def __init__(self, outcome: Outcome | None = None, error: BaseException | None = None):
        self.outcome, self.error = outcome or Outcome(), error
        self.reserved: int | None = None
        self.launched = False

    def launch(self, plan: Plan, run_dir: Path, *, show_progress: bool = True) -> Outcome:
        self.launched = True
        reserve = run_dir / RESERVE_NAME
        self.reserved = reserve.stat().st_size if reserve.exists() else None
        line = {"node": 0, "round": 0, "t_wall": 0.1, "t_train": 0.01, "bytes_sent": 10}
        (run_dir / "nodes" / "0.jsonl").write_text(json.dumps(line | {"rss_bytes": 1}) + "\n")
        if self.error is not None:
            raise self.error
        return self.outcome


def failing(name: str, real: Callable[..., object]) -> Callable[..., object]:
    """``real``, except that it raises ENOSPC when asked to write a file called ``name``."""

    def write(*args: object) -> object:
        if any(isinstance(a, Path) and a.name == name for a in args):
            raise ENOSPC
        return real(*args)

    return write


def raising(exc: BaseException) -> Callable[..., None]:
    def step(*args: object, **kwargs: object) -> None:
        raise exc

    return step


def files(run_dir: Path) -> dict[str, dict[str, object]]:
    return {n: json.loads((run_dir / n).read_text()) for n in ("summary.json", "manifest.json")}


@pytest.fixture(scope="module")
def plan() -> Plan:
    return small_plan()


def go(plan: Plan, tmp_path: Path, backend: Backend) -> RunResult:
    return run(plan, tmp_path / "run", "name = 'test'\n", backend=backend, show_progress=False)


def test_a_clean_run_holds_the_reserve_while_it_runs_and_leaves_none(
    plan: Plan, tmp_path: Path
) -> None:
    backend = Backend()
    result = go(plan, tmp_path, backend)
    assert result.status == "ok" and result.problems == [] and result.lost is None
    assert backend.reserved is not None and backend.reserved >= 64 << 10
    summary, manifest = files(result.run_dir).values()
    assert summary["status"] == manifest["status"] == "ok" and "launcher_errors" not in summary
    left = sorted(p.name for p in result.run_dir.iterdir())
    assert left == ["config.toml", "manifest.json", "nodes", "summary.json", "topology.edges",
                    "topology_rounds.jsonl"]  # fmt: skip


def test_a_write_failing_after_a_good_run_fails_it_and_says_why(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "write_round_topology", raising(ENOSPC))
    result = go(plan, tmp_path, Backend())
    assert result.status == "failed" and result.lost is None
    summary, manifest = files(result.run_dir).values()
    assert summary["status"] == manifest["status"] == "failed"
    assert summary["reason"] == (
        f"the launcher could not write {result.run_dir / 'topology_rounds.jsonl'}: "
        "[Errno 28] No space left on device"
    )
    assert summary["launcher_errors"] == [summary["reason"]] and summary["bytes_sent_total"] == 10


def test_the_backends_failure_stays_the_reason_when_closing_steps_fail_too(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = raising(KeyError("t_wall"))
    monkeypatch.setattr(run_module, "summarize", broken)
    monkeypatch.setattr(run_module, "load_node_records", broken)
    monkeypatch.setattr(run_module, "write_round_topology", broken)
    outcome = Outcome(status="failed", reason="node 2 raised an exception", traceback=NODE_TB)
    result = go(plan, tmp_path, Backend(outcome))
    summary, manifest = files(result.run_dir).values()
    assert summary["status"] == manifest["status"] == result.status == "failed"
    assert (
        summary["reason"]
        == result.reason
        == (
            "node 2 raised an exception: OSError: [Errno 28] No space left on device: "
            "could not append a record to nodes/2.jsonl"
        )
    )
    assert summary["launcher_errors"] == [
        "the launcher could not read the node records: KeyError: 't_wall'",
        "the launcher could not summarize the node records: KeyError: 't_wall'",
        f"the launcher could not write {result.run_dir / 'topology_rounds.jsonl'}: "
        "KeyError: 't_wall'",
    ]
    assert summary["nodes"] == plan.config.nodes and summary["name"] == plan.config.name


def test_when_summary_json_cannot_be_written_the_result_says_so(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "write_atomic", failing("summary.json", write_atomic))
    result = go(plan, tmp_path, Backend())
    assert result.status == "failed" and result.summary["status"] == "failed"
    path = result.run_dir / "summary.json"
    expected = f"the launcher could not write {path}: [Errno 28] No space left on device"
    assert result.lost == result.reason == expected
    assert not (result.run_dir / "summary.json").exists()
    assert json.loads((result.run_dir / "manifest.json").read_text())["end"]
    assert not list(result.run_dir.glob("*.tmp"))


def test_a_run_directory_that_cannot_be_written_starts_no_node(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "write_edge_list", failing("topology.edges", lambda *a: None))
    backend = Backend()
    result = go(plan, tmp_path, backend)
    assert not backend.launched and result.status == "failed"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["reason"] == (
        f"the launcher could not write {result.run_dir / 'topology.edges'}: "
        "[Errno 28] No space left on device"
    )
    assert not (result.run_dir / RESERVE_NAME).exists()


def test_an_os_error_out_of_the_backend_fails_the_run(plan: Plan, tmp_path: Path) -> None:
    result = go(plan, tmp_path, Backend(error=ENOSPC))
    assert result.status == "failed"
    assert result.reason == "the launcher failed: [Errno 28] No space left on device"
    assert files(result.run_dir)["summary.json"]["bytes_sent_total"] == 10


def test_a_launcher_bug_is_raised_after_the_summary_is_written(plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="bug"):
        go(plan, tmp_path, Backend(error=RuntimeError("bug")))
    summary, manifest = files(tmp_path / "run").values()
    assert summary["status"] == manifest["status"] == "failed"
    assert summary["reason"] == "the launcher itself failed"
