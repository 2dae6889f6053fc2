"""What a run on the virtual clock reports: summary.json's virtual duration and times to the
accuracy targets, and the report's time axis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dlactor.metrics.plots import Line, _metric_row
from dlactor.metrics.report import eval_curves, load_run, summary_table
from dlactor.metrics.summary import summarize

# two nodes, four rounds, evaluated every round; node n's clock at round r: r + 1 + n / 2
ACC = [[0.3, 0.55, 0.65, 0.72], [0.5, 0.6, 0.72, 0.8]]


def _records(node: int, *, virtual: bool = True) -> list[dict[str, Any]]:
    out = []
    for r, acc in enumerate(ACC[node]):
        rec: dict[str, Any] = {
            "node": node, "round": r, "bytes_sent": 10, "bytes_recv": 10, "rss_bytes": 1,
            "t_wall": 10.0 * (r + 1), "test_loss": 1.0, "test_acc": acc,
        }  # fmt: skip
        if virtual:
            rec.update(t_virtual=r + 1 + node / 2, t_compute=0.5, t_wait=0.5)
        out.append(rec)
    return out


def _run(root: Path, name: str, *, virtual: bool = True) -> Path:
    run = root / f"{name}-20261202-000000"
    (run / "nodes").mkdir(parents=True)
    for node in (0, 1):
        lines = "".join(json.dumps(r) + "\n" for r in _records(node, virtual=virtual))
        (run / "nodes" / f"{node}.jsonl").write_text(lines)
    summary = summarize(run, nodes=2, status="ok", wall_s=40.0, targets=[0.5, 0.6, 0.7, 0.9])
    (run / "summary.json").write_text(json.dumps({**summary, "name": name}))
    (run / "manifest.json").write_text(json.dumps({"name": name, "nodes": 2}))
    return run


def test_the_summary_gives_the_virtual_duration_and_the_time_to_each_target(
    tmp_path: Path,
) -> None:
    summary = json.loads((_run(tmp_path, "a") / "summary.json").read_text())
    assert summary["virtual_s"] == 4.5
    reached = summary["time_to_accuracy"]
    # the mean: 0.4, 0.575, 0.685, 0.76; a round's time: when its last node finished it
    assert reached["0.5"] == {"round": 1, "t_wall_s": 20.0, "t_virtual_s": 2.5}
    assert reached["0.6"] == {"round": 2, "t_wall_s": 30.0, "t_virtual_s": 3.5}
    assert reached["0.7"] == {"round": 3, "t_wall_s": 40.0, "t_virtual_s": 4.5}
    assert reached["0.9"] is None


def test_without_a_virtual_clock_the_times_are_wall_only(tmp_path: Path) -> None:
    summary = json.loads((_run(tmp_path, "a", virtual=False) / "summary.json").read_text())
    assert "virtual_s" not in summary
    assert summary["time_to_accuracy"]["0.5"] == {"round": 1, "t_wall_s": 20.0, "t_virtual_s": None}


def _time_label(runs: list[Path]) -> str:
    lines = [Line(p.name, "k", eval_curves(load_run(p))) for p in runs]
    axes = Figure().subplots(1, 3)
    _metric_row(axes, "test_acc", lines)
    return str(axes[1].get_xlabel())


def test_the_report_draws_virtual_seconds_when_every_run_had_the_clock(tmp_path: Path) -> None:
    virtual = [_run(tmp_path, "a"), _run(tmp_path, "b")]
    wall = _run(tmp_path, "c", virtual=False)
    assert eval_curves(load_run(virtual[0]))["t_virtual"] == [1.5, 2.5, 3.5, 4.5]
    assert _time_label(virtual) == "virtual time (s)"
    assert _time_label([*virtual, wall]) == "wall-clock time (s)"
    rows = summary_table([load_run(p) for p in virtual])
    assert [row["virtual_s"] for row in rows] == [4.5, 4.5]
