"""`dlactor report`: reading run directories, curves, the summary table and the PNG figures."""

from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from dlactor.cli import config_toml
from dlactor.metrics.report import (
    eval_curves,
    load_run,
    report,
    run_labels,
    summary_table,
    write_table,
)
from tests.conftest import small_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Three nodes, four rounds, evaluations on rounds 1 and 3; node n sends 100 * (n + 1) bytes a
# round and reaches round r at t_wall = 0.5 * (r + 1) + 0.1 * n.
ACC = {1: [0.2, 0.4, 0.9], 3: [0.5, 0.6, 0.7]}
RMSE = {1: [1.5, 1.1, 1.3], 3: [0.9, 1.0, 0.95]}


def _record(node: int, rnd: int, metric: str, table: dict[int, list[float]]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "node": node, "round": rnd, "train_loss": 1.0 / (rnd + 1) + 0.1 * node,
        "bytes_sent": 100 * (node + 1), "bytes_recv": 100, "msgs_sent": 2, "msgs_recv": 2,
        "t_wall": 0.5 * (rnd + 1) + 0.1 * node, "t_train": 0.01, "t_round": 0.5,
        "rss_bytes": 10_000_000,
    }  # fmt: skip
    if rnd in table:
        rec["test_loss"] = 2.0 - rnd * 0.25 - node * 0.1
        rec[metric] = table[rnd][node]
    return rec


def make_run(
    root: Path,
    name: str,
    *,
    rounds: int = 4,
    regression: bool = False,
    consensus: list[float] | None = None,
    short: dict[int, int] | None = None,
    status: str = "ok",
    config: str | None = None,
) -> Path:
    """A run directory in the results schema; ``short`` maps a node to its rounds recorded,
    ``config`` is its ``config.toml``."""
    run = root / f"{name}-20260101-000000"
    (run / "nodes").mkdir(parents=True)
    if config is not None:
        (run / "config.toml").write_text(config)
    metric, table = ("test_rmse", RMSE) if regression else ("test_acc", ACC)
    for node in range(3):
        recs = [_record(node, r, metric, table) for r in range((short or {}).get(node, rounds))]
        lines = "".join(json.dumps(rec) + "\n" for rec in recs)
        (run / "nodes" / f"{node}.jsonl").write_text(lines)
    done = min((short or {}).get(n, rounds) for n in range(3))
    common = {"name": name, "nodes": 3, "rounds": done, "status": status}
    summary = {**common, "wall_s": 2.25, "round_s_median": 0.5, "final": {}}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "manifest.json").write_text(json.dumps({**common, "model_params": 10}))
    if consensus is not None:
        rows = [
            {"round": r, "consensus_distance": d, "nodes": 3}
            for r, d in zip((1, 3), consensus, strict=True)
        ]
        (run / "consensus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- load_run ------------------------------------------------------------------------------


def test_load_run_reads_summary_manifest_records_and_consensus(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "alpha", consensus=[1.0, 0.5]))

    assert run.name == "alpha"
    assert run.summary["status"] == "ok"
    assert run.manifest["model_params"] == 10
    assert sorted(run.records) == [0, 1, 2]
    assert [r["round"] for r in run.records[1]] == [0, 1, 2, 3]
    assert [c["consensus_distance"] for c in run.consensus] == [1.0, 0.5]
    assert run.metric == "test_acc"


def test_load_run_without_consensus_file_has_no_consensus(tmp_path: Path) -> None:
    assert load_run(make_run(tmp_path, "alpha")).consensus == []


def test_load_run_knows_a_regression_run_by_its_rmse(tmp_path: Path) -> None:
    assert load_run(make_run(tmp_path, "ml", regression=True)).metric == "test_rmse"


def test_load_run_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = make_run(tmp_path, "alpha")
    with (path / "nodes" / "0.jsonl").open("a") as f:
        f.write('{"node": 0, "round": 4, "train_')

    assert len(load_run(path).records[0]) == 4


def test_load_run_rejects_what_is_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "no-meta" / "nodes").mkdir(parents=True)

    for path in (tmp_path / "empty", tmp_path / "file.txt", tmp_path / "no-meta", tmp_path / "x"):
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_run(path)


def test_load_run_names_the_file_with_broken_json(tmp_path: Path) -> None:
    path = make_run(tmp_path, "alpha")
    (path / "summary.json").write_text("{not json")

    with pytest.raises(ValueError, match=re.escape(str(path / "summary.json"))):
        load_run(path)


# --- eval_curves ---------------------------------------------------------------------------


def test_eval_curves_aggregate_each_evaluation_round_across_nodes(tmp_path: Path) -> None:
    curves = eval_curves(load_run(make_run(tmp_path, "alpha")))

    assert curves["round"] == [1, 3]
    assert curves["mean"] == pytest.approx([0.5, 0.6])
    assert curves["min"] == pytest.approx([0.2, 0.5])
    assert curves["max"] == pytest.approx([0.9, 0.7])
    assert curves["t_wall"] == pytest.approx([1.1, 2.1])
    assert curves["nodes"] == [3, 3]


def test_eval_curves_bytes_are_cumulative_per_node_including_that_round(tmp_path: Path) -> None:
    curves = eval_curves(load_run(make_run(tmp_path, "alpha")))

    # round 1: nodes sent 2 * 100, 2 * 200, 2 * 300; round 3: twice that
    assert curves["bytes_sent"] == pytest.approx([400.0, 800.0])


def test_eval_curves_of_a_failed_run_use_the_nodes_that_got_there(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "broken", short={2: 2}, status="failed"))

    curves = eval_curves(run)

    assert curves["round"] == [1, 3]
    assert curves["nodes"] == [3, 2]
    assert curves["mean"] == pytest.approx([0.5, 0.55])
    assert curves["bytes_sent"] == pytest.approx([400.0, 600.0])


def test_eval_curves_follow_any_metric(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "ml", regression=True))

    assert eval_curves(run, "test_rmse")["min"] == pytest.approx([1.1, 0.9])
    assert eval_curves(run, "test_acc")["round"] == []
    assert eval_curves(run, "train_loss")["round"] == [0, 1, 2, 3]


# --- summary table -------------------------------------------------------------------------


def test_summary_table_has_one_row_per_run_with_final_figures(tmp_path: Path) -> None:
    runs = [
        load_run(make_run(tmp_path, "alpha")),
        load_run(make_run(tmp_path, "ml", regression=True)),
    ]

    alpha, ml = summary_table(runs)

    assert alpha["run"] == "alpha"
    assert alpha["status"] == "ok"
    assert (alpha["nodes"], alpha["rounds"], alpha["metric"]) == (3, 4, "accuracy")
    assert (alpha["final_mean"], alpha["final_min"], alpha["final_max"]) == pytest.approx(
        (0.6, 0.5, 0.7)
    )
    assert alpha["wall_s"] == 2.25
    assert alpha["round_ms_median"] == pytest.approx(500.0)
    assert alpha["bytes_per_node"] == pytest.approx(800.0)  # (400 + 800 + 1200) / 3
    assert ml["metric"] == "RMSE"
    assert ml["final_min"] == pytest.approx(0.9)


def test_summary_table_of_a_failed_run_keeps_each_nodes_last_value(tmp_path: Path) -> None:
    (row,) = summary_table([load_run(make_run(tmp_path, "broken", short={2: 2}, status="failed"))])

    assert (row["status"], row["rounds"]) == ("failed", 2)
    assert row["final_mean"] == pytest.approx((0.5 + 0.6 + 0.9) / 3)


class _Counted(dict[str, Any]):
    """A record that counts the lookups of every record made into it (class-wide)."""

    lookups = 0

    def get(self, key: str, default: Any = None) -> Any:
        _Counted.lookups += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        _Counted.lookups += 1
        return super().__contains__(key)


def test_the_summary_table_reads_each_record_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A 1024-node run of 300 rounds has 307,200 records: a table that scanned them all for
    each record (finding the run's metric again) never finished."""
    run = load_run(make_run(tmp_path, "long", rounds=200))
    run.records = {n: [_Counted(r) for r in rs] for n, rs in run.records.items()}
    records = sum(len(rs) for rs in run.records.values())
    _Counted.lookups = 0

    summary_table([run])

    assert _Counted.lookups <= 20 * records


def test_write_table_writes_markdown_and_csv(tmp_path: Path) -> None:
    rows = summary_table([load_run(make_run(tmp_path, "alpha"))])

    md, csv_path = write_table(rows, tmp_path / "out")

    lines = md.read_text().splitlines()
    assert lines[0].startswith("| run | status | nodes | rounds | metric | final mean")
    assert set(lines[1]) <= set("|-:")
    assert (
        lines[2]
        == "| alpha | ok | 3 | 4 | accuracy | 0.6000 | 0.5000 | 0.7000 | 2.25 | 500.0 | 0.00 |"
    )
    with csv_path.open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["run"] == "alpha"
    assert float(row["final_mean"]) == pytest.approx(0.6)
    assert float(row["bytes_per_node"]) == pytest.approx(800.0)


def test_write_table_shows_missing_values_as_dashes_and_empty_cells(tmp_path: Path) -> None:
    rows = [{"run": "x", "status": "failed", "nodes": 2, "rounds": 0, "metric": "accuracy"}]

    md, csv_path = write_table(rows, tmp_path)

    assert md.read_text().splitlines()[2].endswith("| - | - | - | - | - | - |")
    assert csv_path.read_text().splitlines()[1] == "x,failed,2,0,accuracy,,,,,,"


def test_labels_are_run_names_unless_they_repeat(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "1", "alpha"), make_run(tmp_path / "2", "alpha")
    unique = [load_run(make_run(tmp_path, "alpha")), load_run(make_run(tmp_path, "beta"))]

    renamed = b.rename(b.with_name("alpha-20260101-999999"))

    assert run_labels(unique) == ["alpha", "beta"]
    assert run_labels([load_run(a), load_run(renamed)]) == [a.name, renamed.name]
    assert run_labels([load_run(a), load_run(make_run(tmp_path / "3", "alpha"))]) == [
        "alpha #1",
        "alpha #2",
    ]


# --- labels from the configs -----------------------------------------------------------------


def resolved(*overrides: str) -> str:
    """A run's config.toml as `dlactor launch` writes it (every default written out)."""
    return config_toml(small_config(*overrides))


def _labels(tmp_path: Path, *configs: str) -> list[str]:
    return run_labels(
        [load_run(make_run(tmp_path / str(i), f"run{i}", config=c)) for i, c in enumerate(configs)]
    )


def test_a_comparison_is_labelled_by_the_settings_that_differ(tmp_path: Path) -> None:
    configs = (
        resolved("name=ring", "topology.kind=ring"),
        resolved("name=reg3"),
        resolved("name=reg5", "topology.degree=5"),
    )

    assert _labels(tmp_path, *configs) == [
        "topology.kind=ring",
        "topology.kind=regular, topology.degree=3",
        "topology.kind=regular, topology.degree=5",
    ]


def test_a_kinds_own_settings_are_compared_among_the_runs_of_that_kind(tmp_path: Path) -> None:
    full, topk = resolved("sharing.kind=full"), resolved("sharing.kind=topk")
    finer = resolved("sharing.kind=topk", "sharing.budget=0.01")

    # topk's budget, per_layer and error_feedback are its defaults: the kind says it all
    assert _labels(tmp_path / "a", full, topk) == ["sharing.kind=full", "sharing.kind=topk"]
    assert _labels(tmp_path / "b", full, topk, finer) == [
        "sharing.kind=full",
        "sharing.kind=topk, sharing.budget=0.1",
        "sharing.kind=topk, sharing.budget=0.01",
    ]


def test_a_table_that_only_some_runs_have_is_none_in_the_others(tmp_path: Path) -> None:
    churn = resolved("availability.offline=0.3")

    assert _labels(tmp_path, resolved(), churn) == [
        "availability=none",
        "availability.kind=sessions",
    ]
    wan = tomli_w.dumps({"nodes": 8, "network": {"clock": "virtual", "trace": "/t/wan.csv"}})
    lan = tomli_w.dumps({"nodes": 8, "network": {"clock": "virtual", "trace": "/t/lan.csv"}})
    wall = tomli_w.dumps({"nodes": 8, "network": {"clock": "wall"}})
    labels = _labels(tmp_path / "b", wan, lan, wall, tomli_w.dumps({"nodes": 8}))
    assert labels == [
        "clock=virtual, trace=wan.csv",  # a path by its file name; shortened past 40
        "clock=virtual, trace=lan.csv",
        "clock=wall, trace=unset",  # config.toml leaves out a setting left at None
        "network=none",
    ]


def test_a_setting_left_unset_differs_from_one_given(tmp_path: Path) -> None:
    # test_samples is None by default, and config.toml leaves it out
    assert _labels(tmp_path, resolved(), resolved("evaluation.test_samples=100")) == [
        "evaluation.test_samples=unset",
        "evaluation.test_samples=100",
    ]


def test_runs_of_one_config_are_numbered_in_order(tmp_path: Path) -> None:
    one, two = resolved("seed=1"), resolved("seed=2")

    assert _labels(tmp_path, one, two, two) == ["seed=1", "seed=2 #1", "seed=2 #2"]


def test_without_configs_that_differ_the_labels_are_the_names(tmp_path: Path) -> None:
    ring = resolved("topology.kind=ring")

    # only the names differ; a config missing; a config that is not TOML
    assert _labels(tmp_path / "a", resolved("name=a"), resolved("name=b")) == ["run0", "run1"]
    one, two = make_run(tmp_path / "b", "one", config=ring), make_run(tmp_path / "b", "two")
    assert run_labels([load_run(one), load_run(two)]) == ["one", "two"]
    assert _labels(tmp_path / "c", ring, "nodes = = 3") == ["run0", "run1"]


def test_long_labels_drop_the_table_where_the_key_stays_clear(tmp_path: Path) -> None:
    a = resolved("topology.kind=ring", "evaluation.every=1", "checkpoint.every=1", "seed=4")
    b = resolved("evaluation.every=2", "seed=5")

    labels = _labels(tmp_path, a, b)

    # evaluation.every and checkpoint.every would both be "every"; a table's kind is table=kind
    assert labels == [
        "seed=4, evaluation.every=1, checkpoint.every=1, topology=ring",
        "seed=5, evaluation.every=2, checkpoint.every=0, topology=regular",
    ]


def test_the_summary_table_and_the_report_take_a_label_per_run(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "alpha"), make_run(tmp_path, "beta")]

    rows = summary_table([load_run(p) for p in runs], ["baseline", "mine"])

    assert [row["run"] for row in rows] == ["baseline", "mine"]
    assert report(runs, tmp_path / "cmp", ["baseline", "mine"])
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        report(runs, tmp_path / "cmp", ["baseline"])


# --- figures -------------------------------------------------------------------------------


def test_report_of_one_run_writes_its_figures_into_its_plots_dir(tmp_path: Path) -> None:
    path = make_run(tmp_path, "alpha", consensus=[1.0, 0.5])

    written = report([path])

    names = ["accuracy.png", "loss.png", "consensus.png"]
    assert written == [path / "plots" / name for name in names]
    for png in written:
        width, height = png_size(png)
        assert 600 <= width <= 3000 and 400 <= height <= 2000


def test_accuracy_figure_is_three_panels_wide(tmp_path: Path) -> None:
    (png, *_) = report([make_run(tmp_path, "alpha")])

    width, height = png_size(png)
    assert width > 2.5 * height


def test_report_without_consensus_draws_no_consensus_figure(tmp_path: Path) -> None:
    path = make_run(tmp_path, "alpha")

    assert [p.name for p in report([path])] == ["accuracy.png", "loss.png"]


def test_report_compares_runs_into_out(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "full", consensus=[1.0, 0.5]),
        make_run(tmp_path, "ring"),
        make_run(tmp_path, "broken", short={1: 3, 2: 1}, status="failed"),
    ]

    written = report(runs, tmp_path / "cmp")

    assert sorted(p.name for p in written) == ["accuracy.png", "consensus.png", "loss.png"]
    assert all(p.parent == tmp_path / "cmp" and png_size(p)[0] >= 600 for p in written)
    assert not any((run / "plots").exists() for run in runs)


def test_report_without_out_plots_each_run_on_its_own(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b")]

    written = report(runs)

    assert {p.parent for p in written} == {run / "plots" for run in runs}


def test_regression_run_plots_rmse(tmp_path: Path) -> None:
    written = report([make_run(tmp_path, "ml", regression=True)])

    assert [p.name for p in written] == ["accuracy.png", "loss.png"]


def test_mixed_comparison_gives_accuracy_and_rmse_a_row_each(tmp_path: Path) -> None:
    one = report([make_run(tmp_path, "alpha")], tmp_path / "one")[0]
    mixed = report(
        [make_run(tmp_path, "beta"), make_run(tmp_path, "ml", regression=True)], tmp_path / "mix"
    )[0]

    assert png_size(mixed)[1] > 1.5 * png_size(one)[1]


def test_run_that_never_evaluated_still_gets_its_loss_figure(tmp_path: Path) -> None:
    path = make_run(tmp_path, "early", rounds=1, status="failed")

    assert [p.name for p in report([path])] == ["loss.png"]


def test_consensus_figure_is_skipped_when_no_distance_can_go_on_a_log_scale(
    tmp_path: Path,
) -> None:
    path = make_run(tmp_path, "alone", consensus=[0.0, 0.0])

    assert "consensus.png" not in [p.name for p in report([path])]
