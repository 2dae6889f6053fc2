"""summary.json's final figures and the printed table, for classification and regression."""

from __future__ import annotations

import json
from pathlib import Path

from dlactor.cli import summary_rows
from dlactor.metrics.summary import summarize


def _record(node: int, round: int, **extra: float) -> dict[str, float]:
    base = {"node": node, "round": round, "train_loss": 1.0, "bytes_sent": 100, "t_train": 0.01}
    return base | {"bytes_recv": 100, "t_wall": 0.1 * (round + 1), "rss_bytes": 1} | extra


def _write(run_dir: Path, rows: dict[int, list[dict[str, float]]]) -> None:
    (run_dir / "nodes").mkdir(parents=True)
    for node, records in rows.items():
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (run_dir / "nodes" / f"{node}.jsonl").write_text(lines)


def test_classification_final_is_each_nodes_last_evaluation(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            0: [
                _record(0, 0, test_loss=2.0, test_acc=0.2),
                _record(0, 1, test_loss=1.0, test_acc=0.6),
            ],
            1: [
                _record(1, 0, test_loss=2.0, test_acc=0.4),
                _record(1, 1, test_loss=0.5, test_acc=0.8),
            ],
        },
    )
    final = summarize(tmp_path, nodes=2, status="ok", wall_s=1.0)["final"]
    assert final["test_acc_mean"] == 0.7 and final["test_acc_min"] == 0.6
    assert final["test_acc_max"] == 0.8 and final["test_loss_mean"] == 0.75
    assert final["test_rmse_mean"] is None and final["eval_round"] == 1


def test_regression_final_reports_rmse_and_the_table_shows_it(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            0: [_record(0, 0, test_loss=1.0, test_rmse=1.0)],
            1: [_record(1, 0, test_loss=0.25, test_rmse=0.5)],
        },
    )
    summary = summarize(tmp_path, nodes=2, status="ok", wall_s=1.0)
    summary |= {"name": "mf"}
    final = summary["final"]
    assert (final["test_rmse_mean"], final["test_rmse_min"], final["test_rmse_max"]) == (
        0.75,
        0.5,
        1.0,
    )
    assert final["test_acc_mean"] is None
    rows = dict(summary_rows(summary))
    assert rows["test RMSE mean"] == "0.7500"
    assert rows["test RMSE min / max"] == "0.5000 / 1.0000"
    assert "test accuracy mean" not in rows


def test_a_run_without_evaluations_has_empty_finals(tmp_path: Path) -> None:
    _write(tmp_path, {0: [_record(0, 0)], 1: [_record(1, 0)]})
    final = summarize(tmp_path, nodes=2, status="failed", wall_s=1.0)["final"]
    assert final["test_acc_mean"] is None and final["eval_round"] is None
