"""Non-finite numbers in results: written as strict JSON ("nan", "inf", "-inf"), read back as
floats, summarized as non-finite and plotted as gaps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dlactor.cli import summary_rows
from dlactor.metrics import jsonio
from dlactor.metrics.jsonio import dumps, loads, write_atomic
from dlactor.metrics.recorder import JsonlRecorder, read_jsonl
from dlactor.metrics.report import draw_figures, eval_curves, load_run, summary_table
from dlactor.metrics.summary import spread, summarize
from dlactor.metrics.topology import write_round_topology
from tests.conftest import strict_json as strict


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (at any depth)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


VALUE = {
    "train_loss": math.nan,
    "test_loss": math.inf,
    "grad": -math.inf,
    "ok": 1.5,
    "nested": {"weights": [0.25, math.nan, (math.inf, 2)]},
    "missing": None,
}


def test_non_finite_numbers_round_trip_as_strict_json() -> None:
    for text in (dumps(VALUE), dumps(VALUE, indent=2)):
        raw = strict(text)
        assert raw["train_loss"] == "nan" and raw["test_loss"] == "inf" and raw["grad"] == "-inf"
        assert raw["nested"]["weights"] == [0.25, "nan", ["inf", 2]] and raw["missing"] is None
        back = loads(text)
        expected = VALUE | {"nested": {"weights": [0.25, math.nan, [math.inf, 2]]}}
        assert _same(back, expected)


def test_finite_values_are_dumped_as_json_would() -> None:
    value = {"a": 1, "b": [0.1, 2.5e-9], "c": "text"}
    assert dumps(value) == json.dumps(value, separators=(",", ":"))
    assert dumps(value, indent=2) == json.dumps(value, indent=2)


def test_a_value_encode_misses_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """allow_nan=False: if encode ever lets a NaN through, dumping raises instead of
    writing a bare NaN."""
    monkeypatch.setattr(jsonio, "encode", lambda value: value)
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps({"x": math.nan})


def test_old_files_with_bare_nan_are_still_read() -> None:
    assert math.isnan(loads('{"train_loss": NaN}')["train_loss"])


def test_recorder_lines_are_strict_json(tmp_path: Path) -> None:
    rec = JsonlRecorder(tmp_path / "0.jsonl")
    rec.write({"node": 0, "round": 0, "train_loss": math.nan, "test_loss": math.inf})
    rec.close()
    (line,) = (tmp_path / "0.jsonl").read_text().splitlines()
    assert strict(line) == {"node": 0, "round": 0, "train_loss": "nan", "test_loss": "inf"}
    (back,) = read_jsonl(tmp_path / "0.jsonl")
    assert math.isnan(back["train_loss"]) and back["test_loss"] == math.inf


def test_write_atomic_keeps_the_old_file_and_leaves_no_tmp_when_writing_fails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "summary.json"
    write_atomic(path, '{"old": true}\n')

    def pieces() -> Any:
        yield '{"new": '
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, pieces())
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_round_topology_is_strict_json(tmp_path: Path) -> None:
    records: dict[int, list[dict[str, Any]]] = {
        0: [{"round": 0, "peers": [1], "weights": [math.nan]}],
        1: [{"round": 0}],
    }
    path = write_round_topology(tmp_path, records, 2)
    assert [strict(line) for line in path.read_text().splitlines()] == [
        {"round": 0, "edges": [[0, 1]], "asymmetric_pairs": 1}
    ]


def test_spread_of_values_with_a_nan_is_nan_whatever_the_order() -> None:
    for values in ([0.5, math.nan, 0.9], [math.nan, 0.5], [0.5, 0.9, math.nan]):
        stats = spread(values)
        assert stats is not None and all(math.isnan(x) for x in stats)
    assert spread([0.5, 0.9]) == (0.7, 0.5, 0.9) and spread([]) is None


def _diverged_run(run_dir: Path) -> None:
    """Two nodes; node 1's loss went to NaN in round 1 and its test loss to infinity."""
    (run_dir / "nodes").mkdir(parents=True)
    base = {"bytes_sent": 100, "bytes_recv": 100, "t_train": 0.01, "rss_bytes": 1}
    for node, losses in ((0, [1.0, 0.8]), (1, [1.0, math.nan])):
        rec = JsonlRecorder(run_dir / "nodes" / f"{node}.jsonl")
        for r, loss in enumerate(losses):
            evaluated = {"test_loss": loss if node == 0 else math.inf, "test_acc": 0.5}
            rec.write(base | {"node": node, "round": r, "train_loss": loss, "t_wall": r + 1.0})
        rec.write(base | {"node": node, "round": 2, "train_loss": loss, "t_wall": 3.0} | evaluated)
        rec.close()


def test_a_diverged_run_is_summarized_as_non_finite(tmp_path: Path) -> None:
    _diverged_run(tmp_path)
    summary = summarize(tmp_path, nodes=2, status="ok", wall_s=1.0) | {"name": "nan"}
    assert summary["final"]["test_loss_mean"] == math.inf
    assert summary["final"]["test_acc_mean"] == 0.5
    rows = dict(summary_rows(summary))
    assert rows["test loss mean"] == "inf"
    write_atomic(tmp_path / "summary.json", dumps(summary, indent=2))
    assert strict((tmp_path / "summary.json").read_text())["final"]["test_loss_mean"] == "inf"


def test_a_nan_loss_is_plotted_as_a_gap_and_tabled_as_nan(tmp_path: Path) -> None:
    _diverged_run(tmp_path)
    write_atomic(tmp_path / "summary.json", dumps({"name": "nan", "wall_s": math.nan}))
    run = load_run(tmp_path)
    assert run.name == "nan" and math.isnan(run.summary["wall_s"])
    train = eval_curves(run, "train_loss")
    assert train["round"] == [0, 1, 2] and train["mean"][0] == 1.0
    assert math.isnan(train["mean"][1]) and math.isnan(train["max"][2])
    test = eval_curves(run, "test_loss")
    assert math.isnan(test["mean"][0])  # an infinite mean cannot be drawn either: a gap
    written = draw_figures([run], ["nan"], tmp_path / "plots")
    assert {p.name for p in written} >= {"accuracy.png", "loss.png"}
    (row,) = summary_table([run])
    assert row["final_mean"] == 0.5 and math.isnan(row["wall_s"])
