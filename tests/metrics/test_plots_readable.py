"""The accuracy figure stays readable as runs are added: bands of many runs, bytes that differ
by orders of magnitude. Each test draws a row of panels on a Figure and reads its artists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from dlactor.metrics.plots import Line, _metric_row, _online_row, run_colors

ROUNDS = [0, 1, 2, 3]


def _line(label: str, color: str, per_round: float, *, first: float | None = None) -> Line:
    """A run that sends ``per_round`` bytes per node a round (``first`` in round 0)."""
    sent = [per_round * (r + 1) for r in ROUNDS]
    if first is not None:
        sent = [first + per_round * r for r in ROUNDS]
    return Line(
        label,
        color,
        {
            "round": ROUNDS, "mean": [0.3, 0.5, 0.6, 0.7], "min": [0.2, 0.4, 0.5, 0.6],
            "max": [0.4, 0.6, 0.7, 0.8], "t_wall": [1.0, 2.0, 3.0, 4.0], "bytes_sent": sent,
        },
    )  # fmt: skip


def _lines(n: int, per_round: Sequence[float] = ()) -> list[Line]:
    sizes = list(per_round) or [1000.0] * n
    return [_line(f"run{i}", c, sizes[i]) for i, c in enumerate(run_colors(n))]


def _row(lines: list[Line]) -> list[Axes]:
    axes = list(Figure().subplots(1, 3))
    _metric_row(axes, "test_acc", lines)
    return axes


# --- bands ---------------------------------------------------------------------------------


def test_the_band_rule_fills_up_to_three_runs_and_draws_edges_beyond() -> None:
    from dlactor.metrics.plots import FILLED_BANDS_UP_TO, band_style

    assert FILLED_BANDS_UP_TO == 3
    assert [band_style(n) for n in range(1, 7)] == ["fill"] * 3 + ["edges"] * 3


def test_up_to_three_runs_fill_their_bands() -> None:
    for ax in _row(_lines(3)):
        fills = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(fills) == 3
        assert len(ax.get_lines()) == 3  # the means


def test_four_runs_or_more_draw_each_band_as_two_thin_edges_in_its_colour() -> None:
    lines = _lines(5)

    for ax in _row(lines):
        assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
        drawn = ax.get_lines()
        means = [ln for ln in drawn if ln.get_linewidth() >= 1.5]
        edges = [ln for ln in drawn if ln.get_linewidth() < 1.5]
        assert len(means) == 5 and len(edges) == 10
        for line in lines:
            mine = [e for e in edges if e.get_color() == line.color]
            assert sorted(np.asarray(e.get_ydata()).tolist() for e in mine) == [
                line.curves["min"],
                line.curves["max"],
            ]
            assert all(e.get_zorder() < means[0].get_zorder() for e in mine)


# --- bytes on a log axis -------------------------------------------------------------------


def test_bytes_that_differ_by_20_times_or_more_go_on_a_log_axis() -> None:
    near = _row(_lines(2, [1000.0, 19_000.0]))[2]
    far = _row(_lines(2, [1000.0, 20_000.0]))[2]

    assert near.get_xscale() == "linear" and "log" not in near.get_xlabel()
    assert far.get_xscale() == "log"
    assert far.get_xlabel() == "data sent per node (KiB, cumulative, log scale)"


def test_points_at_zero_bytes_are_left_off_the_log_axis() -> None:
    lines = [_line("quiet", "C0", 100.0, first=0.0), _line("loud", "C1", 1e6)]

    bytes_axis = _row(lines)[2]

    assert bytes_axis.get_xscale() == "log"
    quiet = bytes_axis.get_lines()[0]
    assert np.asarray(quiet.get_ydata()).tolist() == [0.5, 0.6, 0.7]  # round 0 (0 bytes) left off
    assert np.asarray(quiet.get_xdata()).min() > 0
    assert bytes_axis.get_xlim()[0] > 0


def test_a_run_that_sent_nothing_does_not_make_the_axis_log() -> None:
    lines = [_line("alone", "C0", 0.0), _line("talks", "C1", 1e6)]

    assert _row(lines)[2].get_xscale() == "linear"


def test_the_nodes_online_row_follows_the_log_bytes_axis_above() -> None:
    lines = _lines(2, [1000.0, 1e6])
    online = [
        Line(li.label, li.color, {**li.curves, "mean": [3, 2, 3, 3], "lost": []}) for li in lines
    ]
    top, bottom = Figure().subplots(2, 3)

    _metric_row(top, "test_acc", lines)
    _online_row(bottom, online, top, lines)

    assert bottom[2].get_xscale() == "log"
    assert bottom[2].get_xlim() == top[2].get_xlim()


def test_a_figure_of_two_metric_rows_fills_the_bands_of_its_two_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two metrics (a classifying run and a regressing one, say) are two rows of two runs
    each: the band rule counts the runs a panel holds, not all the rows' lines together."""
    from dlactor.metrics import plots

    figures: list[Figure] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.metric_figure({"test_acc": _lines(2), "test_rmse": _lines(2)}, tmp_path / "a.png")
    (fig,) = figures
    for ax in fig.axes:
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2
