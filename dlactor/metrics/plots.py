"""PNG figures of runs: accuracy (or RMSE), loss, consensus distance and topology, one line
(or bar) per run.

Pure drawing from already computed curves (``report.eval_curves``' dicts). The x axis of
"rounds" counts rounds completed (the recorded 0-based ``round`` plus one). Figures are built
with matplotlib's object API on an Agg canvas: no pyplot, no global state, no display. Never
imported by node code (only ``dlactor report`` imports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "DPI",
    "FILLED_BANDS_UP_TO",
    "LOG_BYTES_FROM",
    "METRIC_LABELS",
    "Line",
    "band_style",
    "consensus_figure",
    "loss_figure",
    "metric_figure",
    "run_colors",
    "topology_figure",
]

DPI = 150
METRIC_LABELS = {"test_acc": "test accuracy", "test_rmse": "test RMSE (lower is better)"}
BAND_LABEL = "min to max across nodes"
_ROUND = "communication rounds"
_MARKERS_UP_TO = 25  # points per line; more and markers only clutter
_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
#: Runs up to which a figure fills each run's min-max band. Filled bands of more colours
#: overlap into one muddy tint in which no run's band can be told apart, so with more runs
#: each band is drawn as its two edges: thin dotted lines in the run's colour.
FILLED_BANDS_UP_TO = 3
_FILL_ALPHA = 0.2
_EDGE_WIDTH, _EDGE_STYLE = 0.8, ":"  # thinner than the mean lines, and unlike them
#: The bytes axis is logarithmic when one run's final bytes sent per node are this many
#: times another's: on a linear axis the smaller run's whole curve would take up at most
#: 1/20 of the panel's width, a few pixels, so its shape could not be read.
LOG_BYTES_FROM = 20.0

BandStyle = Literal["fill", "edges"]


@dataclass(frozen=True)
class Line:
    """One run's curve: ``curves`` has ``round``, ``mean`` and optionally ``min``/``max``
    (the band), ``t_wall`` and ``bytes_sent`` lists of equal length."""

    label: str
    color: str
    curves: Mapping[str, Sequence[float]]


def run_colors(n: int) -> list[str]:
    """``n`` distinct colors: matplotlib's tab10, then tab20, then samples of viridis."""
    if n <= 10:
        return [to_hex(c) for c in colormaps["tab10"].colors[:n]]  # type: ignore[attr-defined]
    if n <= 20:
        return [to_hex(c) for c in colormaps["tab20"].colors[:n]]  # type: ignore[attr-defined]
    return [to_hex(c) for c in colormaps["viridis"](np.linspace(0.0, 0.95, n))]


def _legend_shape(labels: Sequence[str], width: float, max_cols: int) -> tuple[int, float]:
    """Legend columns that fit ``width`` inches, and the height in inches the legend needs."""
    column = 0.6 + 0.075 * max((len(label) for label in labels), default=0)
    cols = max(1, min(max_cols, len(labels), int(width // column)))
    return cols, 0.1 + 0.24 * -(-len(labels) // cols)


def band_style(runs: int) -> BandStyle:
    """How a figure of ``runs`` runs draws their min-max bands: filled, or, past
    :data:`FILLED_BANDS_UP_TO` runs, as edges."""
    return "fill" if runs <= FILLED_BANDS_UP_TO else "edges"


def _entries(lines: Sequence[Line], band: BandStyle | None) -> list[tuple[Artist, str]]:
    """Legend entries: a line per run (each run once), and the band's meaning, drawn as the
    bands are (None: no band)."""
    runs = {(li.label, li.color): None for li in lines}
    out: list[tuple[Artist, str]] = [(Line2D([], [], color=c, lw=1.6), lab) for lab, c in runs]
    if band == "fill":
        out.append((Patch(facecolor="0.5", alpha=0.3), BAND_LABEL))
    elif band == "edges":
        out.append((Line2D([], [], color="0.4", lw=_EDGE_WIDTH, ls=_EDGE_STYLE), BAND_LABEL))
    return out


def _new_figure(
    width: float, height: float, entries: Sequence[tuple[Artist, str]], max_cols: int
) -> Figure:
    """A constrained-layout figure on an Agg canvas: ``height`` inches for the axes, plus the
    room that a legend of ``entries`` below them needs."""
    handles, labels = [h for h, _ in entries], [lab for _, lab in entries]
    cols, legend_height = _legend_shape(labels, width, max_cols)
    fig = Figure(figsize=(width, height + legend_height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=cols, frameon=False)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _plot(
    ax: Axes,
    line: Line,
    x: Sequence[float],
    band: BandStyle | None,
    *,
    positive: bool = False,
) -> None:
    """The mean against ``x``, over its min-max band drawn as ``band`` says (None: no band).
    With ``positive``, only the points at an ``x`` above 0: a log axis has no place for
    the others."""
    keep = _kept(x, positive)
    xs = [x[i] for i in keep]

    def at(key: str) -> list[float]:
        return [line.curves[key][i] for i in keep]

    marker = "o" if len(xs) <= _MARKERS_UP_TO else None
    ax.plot(xs, at("mean"), color=line.color, marker=marker, markersize=3, lw=1.6)
    if band is None or "min" not in line.curves or "max" not in line.curves:
        return
    if band == "fill":
        ax.fill_between(xs, at("min"), at("max"), color=line.color, alpha=_FILL_ALPHA, lw=0)
    else:
        for edge in ("min", "max"):
            ax.plot(xs, at(edge), color=line.color, lw=_EDGE_WIDTH, ls=_EDGE_STYLE, zorder=1.5)


def _kept(x: Sequence[float], positive: bool) -> Sequence[int]:
    """The indices of the points drawn: those at an ``x`` above 0 if ``positive`` (a log
    axis has no place for the others), else all."""
    return [i for i, v in enumerate(x) if v > 0] if positive else range(len(x))


def _round_ticks() -> MaxNLocator:
    """Whole rounds, in steps of 1, 2, 5 or 10 (times a power of ten)."""
    return MaxNLocator(integer=True, steps=[1, 2, 5, 10])


def _rounds(line: Line) -> list[float]:
    """Rounds completed at each point: the recorded 0-based round plus one."""
    return [r + 1 for r in line.curves["round"]]


def _byte_unit(lines: Sequence[Line]) -> tuple[str, float]:
    most = max((max(li.curves["bytes_sent"], default=0.0) for li in lines), default=0.0)
    return next(((name, size) for name, size in _UNITS if most >= size), ("bytes", 1.0))


def _log_bytes(lines: Sequence[Line]) -> bool:
    """Whether the runs' final bytes sent per node differ by :data:`LOG_BYTES_FROM` times
    or more (runs that sent nothing do not count: a log axis cannot show them)."""
    finals = [
        max(sent)
        for li in lines
        if (sent := [b for b in li.curves["bytes_sent"] if math.isfinite(b) and b > 0])
    ]
    return len(finals) > 1 and max(finals) >= LOG_BYTES_FROM * min(finals)


def _bytes_label(unit: str, log: bool) -> str:
    return f"data sent per node ({unit}, cumulative{', log scale' if log else ''})"


def _virtual(lines: Sequence[Line]) -> bool:
    """Every run had the emulated network's virtual clock: time is its, not this machine's."""
    return bool(lines) and all(
        li.curves.get("t_virtual") and all(math.isfinite(t) for t in li.curves["t_virtual"])
        for li in lines
    )


def _metric_row(
    axes: Sequence[Axes], metric: str, lines: Sequence[Line], band: BandStyle | None = None
) -> None:
    """One row of :func:`metric_figure`: ``metric`` against rounds, seconds and bytes. The
    bands are drawn as ``band`` says (default: as :func:`band_style` says for ``lines``);
    bytes on a log axis when the runs' bytes differ by :data:`LOG_BYTES_FROM` times."""
    unit, size = _byte_unit(lines)
    clock = "t_virtual" if _virtual(lines) else "t_wall"
    log = _log_bytes(lines)
    band = band_style(len(lines)) if band is None else band
    for line in lines:
        sent = [b / size for b in line.curves["bytes_sent"]]
        for ax, x in zip(axes, (_rounds(line), line.curves[clock], sent), strict=True):
            _plot(ax, line, x, band=band, positive=log and ax is axes[2])
    time_label = "virtual time (s)" if clock == "t_virtual" else "wall-clock time (s)"
    xlabels = (_ROUND, time_label, _bytes_label(unit, log))
    titles = ("(a) per round", "(b) per second", "(c) per byte sent")
    for ax, xlabel, title in zip(axes, xlabels, titles, strict=True):
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    if log:
        _log_scale(axes[2], "x")
    axes[0].set_ylabel(METRIC_LABELS.get(metric, metric))
    axes[0].xaxis.set_major_locator(_round_ticks())


def metric_figure(
    rows: Mapping[str, Sequence[Line]], path: Path, *, online: Sequence[Line] = ()
) -> Path:
    """The paper's Figure 3: the metric's mean and min-max band against rounds, seconds (of
    the emulated network's virtual clock when every run had one, else wall-clock) and
    cumulative bytes sent per node; one row of three panels per metric. With ``online``
    (runs whose nodes came and went), a short row under them: the nodes taking part in
    each round on the same three axes, a cross where a node was lost. Bands are filled for up
    to :data:`FILLED_BANDS_UP_TO` runs, else drawn as edges (:func:`band_style`); the bytes
    axis is logarithmic when the runs' bytes differ by :data:`LOG_BYTES_FROM` times."""
    drawn = [li for lines in rows.values() for li in lines]
    band = band_style(max(map(len, rows.values()), default=0))  # the runs a panel holds
    entries = _entries(drawn, band=band)
    extra = 1.6 if online else 0.0
    fig = _new_figure(12.5, 3.4 * len(rows) + extra, entries, max_cols=4)
    ratios = [3.4] * len(rows) + ([extra] if online else [])
    grid = fig.subplots(
        len(ratios), 3, sharey="row", squeeze=False, gridspec_kw={"height_ratios": ratios}
    )
    for axes, (metric, lines) in zip(grid, rows.items(), strict=False):
        _metric_row(axes, metric, lines, band=band)
    if online:
        _online_row(grid[-1], online, grid[-2], list(rows.values())[-1])
    return _save(fig, path)


def _online_row(
    axes: Sequence[Axes], lines: Sequence[Line], above: Sequence[Axes], above_lines: Sequence[Line]
) -> None:
    """Nodes taking part per round, on the row above's three x axes (its units and scales)."""
    _, size = _byte_unit(above_lines)
    clock = "t_virtual" if _virtual(above_lines) else "t_wall"
    log = _log_bytes(above_lines)
    for line in lines:
        sent = [b / size for b in line.curves["bytes_sent"]]
        for ax, x in zip(axes, (_rounds(line), line.curves[clock], sent), strict=True):
            keep = _kept(x, log and ax is axes[2])
            counts = line.curves["mean"]
            ax.step([x[i] for i in keep], [counts[i] for i in keep], where="post",
                    color=line.color, lw=1.3)  # fmt: skip
        for r in line.curves.get("lost", []):
            axes[0].plot([r + 1], [0], marker="x", color=line.color, markersize=6, clip_on=False)
    axes[0].set_ylabel("nodes taking part")
    if log:
        _log_scale(axes[2], "x")
    for ax, ref in zip(axes, above, strict=True):
        (a, b), (c, d) = ax.get_xlim(), ref.get_xlim()
        for both in (ax, ref):  # one x range for the two rows
            both.set_xlim(min(a, c), max(b, d))
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_locator(_round_ticks())
    axes[0].set_title("nodes online and not lost, per round (x: a node lost)", fontsize="small")


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def loss_figure(test: Sequence[Line], train: Sequence[Line], path: Path) -> Path:
    """Test loss (mean with min-max band, drawn as :func:`band_style` says) and training
    loss (mean over nodes) per round."""
    band = band_style(len(test)) if test else None
    fig = _new_figure(10.0, 3.8, _entries([*test, *train], band=band), max_cols=3)
    left, right = fig.subplots(1, 2)
    panels = ((left, test, band, "test loss", "(a) on the test set"),
              (right, train, None, "training loss", "(b) on local batches"))  # fmt: skip
    for ax, lines, style, ylabel, title in panels:
        for line in lines:
            _plot(ax, line, _rounds(line), band=style)
        if not lines:
            _placeholder(ax, "nothing recorded")
        ax.set(xlabel=_ROUND, ylabel=ylabel)
        ax.xaxis.set_major_locator(_round_ticks())
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _log_scale(ax: Axes, which: Literal["x", "y"]) -> None:
    """Log scale on the ``which`` axis of ``ax`` (drawn already: its data set the ticks);
    over at most two decades, ticks at 1, 2 and 5 in plain numbers."""
    axis: Axis
    if which == "x":
        ax.set_xscale("log")
        axis, (low, high) = ax.xaxis, ax.dataLim.intervalx
    else:
        ax.set_yscale("log")
        axis, (low, high) = ax.yaxis, ax.dataLim.intervaly
    if low > 0 and high / low <= 100:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _positive(line: Line) -> list[tuple[float, float]]:
    """The points a log scale can draw: finite and above zero."""
    pairs = zip(_rounds(line), line.curves["mean"], strict=True)
    return [(r, d) for r, d in pairs if math.isfinite(d) and d > 0]


def consensus_figure(lines: Sequence[Line], path: Path) -> Path:
    """Consensus distance (mean L2 distance of the node models to their average) per
    evaluation round, log scale. Non-positive and non-finite distances cannot be drawn and
    are left out."""
    drawn = [(li, kept) for li in lines if (kept := _positive(li))]
    fig = _new_figure(6.4, 4.0, _entries([li for li, _ in drawn], band=None), max_cols=2)
    ax = fig.subplots()
    for line, kept in drawn:
        rounds, dists = zip(*kept, strict=True)
        marker = "o" if len(kept) <= _MARKERS_UP_TO else None
        ax.plot(rounds, dists, color=line.color, marker=marker, markersize=3, lw=1.6)
    _log_scale(ax, "y")
    ax.set(xlabel=_ROUND, ylabel="consensus distance (L2 to the mean model)")
    ax.set_title("distance of the node models to their average", fontsize="medium")
    ax.xaxis.set_major_locator(_round_ticks())
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    return _save(fig, path)


def topology_figure(lines: Sequence[Line], path: Path) -> Path:
    """(a) How often each degree occurred (share of node-rounds) and (b) the spectral gap
    of each round's mixing matrix, per run. ``curves`` holds ``degrees`` (pooled over
    rounds), ``round`` and ``gap``. Degrees are drawn as categories (only those that
    occur), so a ring, a 5-regular graph and a complete graph of 64 nodes share one axis."""
    fig = _new_figure(11.0, 3.8, _entries(lines, band=None), max_cols=3)
    left, right = fig.subplots(1, 2)
    pooled = [np.asarray(line.curves["degrees"], dtype=np.int64) for line in lines]
    present = np.unique(np.concatenate(pooled)) if pooled else np.zeros(0, dtype=np.int64)
    width = 0.8 / max(1, len(lines))
    for i, (line, degrees) in enumerate(zip(lines, pooled, strict=True)):
        values, counts = np.unique(degrees, return_counts=True)
        slots = np.searchsorted(present, values) + (i - (len(lines) - 1) / 2) * width
        left.bar(slots, counts / counts.sum(), width=width, color=line.color)
        gaps = [(r, g) for r, g in zip(_rounds(line), line.curves["gap"], strict=True) if g == g]
        if gaps:
            rounds, values_ = zip(*gaps, strict=True)
            marker = "o" if len(gaps) <= _MARKERS_UP_TO else None
            right.plot(rounds, values_, color=line.color, marker=marker, markersize=3, lw=1.4)
    left.set_xticks(range(len(present)), [str(d) for d in present])
    left.set(xlabel="degree (neighbours in a round; only degrees that occur)")
    left.set(ylabel="share of node-rounds")
    left.set_title("(a) degree distribution, all rounds", fontsize="medium")
    right.set(xlabel=_ROUND, ylabel="spectral gap 1 - |lambda_2(W)|")
    right.set_title("(b) spectral gap of the round's mixing matrix", fontsize="medium")
    right.xaxis.set_major_locator(_round_ticks())
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)
