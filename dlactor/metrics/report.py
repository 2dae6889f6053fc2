"""Read run directories (the schema: README.md, "Results") and make curves, tables, plots.

Imported by the CLI only; matplotlib is imported when plots are drawn, never by node code.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import statistics
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise, product
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from dlactor.metrics.jsonio import loads
from dlactor.metrics.recorder import read_jsonl
from dlactor.metrics.summary import load_node_records, load_server_records, spread

if TYPE_CHECKING:
    from dlactor.metrics.plots import Line

__all__ = [
    "RunData",
    "config_labels",
    "draw_figures",
    "draw_report",
    "eval_curves",
    "load_run",
    "report",
    "run_labels",
    "summary_table",
    "write_table",
]

#: Columns of the summary table: (key, markdown header, markdown format).
COLUMNS: list[tuple[str, str, str]] = [
    ("run", "run", ""),
    ("status", "status", ""),
    ("nodes", "nodes", "d"),
    ("rounds", "rounds", "d"),
    ("metric", "metric", ""),
    ("final_mean", "final mean", ".4f"),
    ("final_min", "final min", ".4f"),
    ("final_max", "final max", ".4f"),
    ("wall_s", "wall (s)", ".2f"),
    ("virtual_s", "virtual (s)", ".2f"),
    ("round_ms_median", "median round (ms)", ".1f"),
    ("bytes_per_node", "sent per node (MiB)", "mib"),
    ("offline", "offline", "pct"),
    ("lost", "lost nodes", "d"),
]
#: Columns shown only when some run has them (a virtual clock, churn).
_OPTIONAL_COLUMNS = ("virtual_s", "offline", "lost")
#: The run's resolved config, every default written out: what labels compare.
CONFIG = "config.toml"
#: Labels longer than this drop their keys' table prefixes where the key stays unambiguous:
#: the legend's columns are as wide as its longest label, and at 40 characters three of them
#: fit under the accuracy figure.
LABEL_WIDTH = 40


@dataclass
class RunData:
    """One run directory, read: its summary, manifest, per-node records and consensus rows."""

    name: str
    path: Path
    summary: dict[str, Any]
    manifest: dict[str, Any]
    records: dict[int, list[dict[str, Any]]]
    consensus: list[dict[str, Any]]
    #: The algorithm's servers' records (FedAvg, parameter server): their model is evaluated.
    servers: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    #: ``config.toml``, read; empty if the run has none (or it is not readable).
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> dict[int, list[dict[str, Any]]]:
        """Whose records hold the run's test figures: the servers', if there are any."""
        return self.servers or self.records

    @functools.cached_property
    def metric(self) -> str:
        """``test_rmse`` for regression runs (MovieLens), ``test_acc`` otherwise (read once:
        it scans every record)."""
        regression = any("test_rmse" in r for rs in self.evaluated.values() for r in rs)
        return "test_rmse" if regression else "test_acc"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_run(path: Path) -> RunData:
    """Read a run directory; ValueError naming ``path`` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    has_meta = (path / "summary.json").is_file() or (path / "manifest.json").is_file()
    if not (path.is_dir() and (path / "nodes").is_dir() and has_meta):
        raise ValueError(
            f"{path} is not a dlactor run directory (expected nodes/ and summary.json or "
            "manifest.json in it)"
        )
    summary, manifest = _read_json(path / "summary.json"), _read_json(path / "manifest.json")
    consensus_path = path / "consensus.jsonl"
    return RunData(
        name=str(summary.get("name") or manifest.get("name") or path.name),
        path=path,
        summary=summary,
        manifest=manifest,
        records=_records(load_node_records(path)),
        consensus=read_jsonl(consensus_path) if consensus_path.is_file() else [],
        servers=_records(load_server_records(path)),
        config=_read_config(path / CONFIG),
    )


def _read_config(path: Path) -> dict[str, Any]:
    """The run's config, or ``{}``: it only labels the run, so a run whose config cannot be
    read is still reported (labelled by its name)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _records(by_node: dict[int, list[Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each process's well-formed records, in round order."""
    return {
        n: sorted((r for r in rs if isinstance(r, dict) and "round" in r), key=lambda r: r["round"])
        for n, rs in by_node.items()
    }


def run_labels(runs: list[RunData]) -> list[str]:
    """Legend labels: the config settings that differ between the runs (see
    :func:`config_labels`), else the runs' names when they are unique, else their directory
    names, else names numbered in order."""
    by_config = config_labels(runs)
    if by_config is not None:
        return by_config
    for labels in ([run.name for run in runs], [run.path.name for run in runs]):
        if len(set(labels)) == len(labels):
            return labels
    return [f"{run.name} #{i}" for i, run in enumerate(runs, start=1)]


def config_labels(runs: list[RunData]) -> list[str] | None:
    """Each run's settings that differ between the runs, as ``key=value``, comma separated,
    in the configs' order: ``topology.kind=ring`` or ``sharing.kind=topk, sharing.budget=0.1``.

    A setting is compared among the runs whose table has the same kind: a topk run's
    ``budget`` is not told apart from a full-sharing run, which has none (the kinds already
    are); a run of the same kind without it left it unset (``test_samples=unset``). A table
    that only some runs have is ``table=none`` in the others (``table=on`` where it has no
    kind). ``name`` is left out: it is what a run is called, not how it ran (the names are
    the labels when nothing else differs). Labels longer than :data:`LABEL_WIDTH` are shortened
    (:func:`_shorten`); equal ones (runs of one config) are numbered in order. None when
    there is no difference to show: fewer than two runs, a run without a readable config,
    or configs that differ in ``name`` alone."""
    if len(runs) < 2 or not all(run.config for run in runs):
        return None
    settings = [_settings(run.config) for run in runs]
    keys = list(dict.fromkeys(key for s in settings for key in s))
    tables = [key for key in keys if any(isinstance(s.get(key), _Table) for s in settings)]
    for s, key in product(settings, tables):
        s.setdefault(key, _Table(None))
    for key in keys:  # left unset (None: config.toml leaves it out) where a run of its kind has it
        kinds = {_enclosing_kind(key, s) for s in settings if key in s}
        for s in settings:
            if key not in s and _enclosing_kind(key, s) in kinds:
                s[key] = None
    differing = [key for key in keys if key != "name" and _differs(key, settings)]
    if not differing:
        return None
    labels = _shorten([_shown(differing, s) for s in settings])
    counts, seen = Counter(labels), Counter[str]()
    numbered = []
    for label in labels:
        seen[label] += 1
        numbered.append(f"{label} #{seen[label]}" if counts[label] > 1 else label)
    return numbered


@dataclass(frozen=True)
class _Table:
    """A config table as a setting of its own: its ``kind``; ``""`` if it has none, None
    where a run does not have the table."""

    kind: str | None


def _settings(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's settings by dotted key, in its order; a table is the setting
    :class:`_Table` (its kind), then its other settings."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out[dotted] = _Table(str(value.get("kind", "")))
            out.update(_settings({k: v for k, v in value.items() if k != "kind"}, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _shown(keys: list[str], settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``(key, value)`` of those ``keys`` that a run has; ``table=on`` only where none of
    the table's settings is shown (which says as much)."""
    items = [(key, settings[key]) for key in keys if key in settings]
    return [
        (key, value)
        for key, value in items
        if value != _Table("") or not any(k.startswith(f"{key}.") for k, _ in items)
    ]


def _enclosing_kind(key: str, settings: dict[str, Any]) -> str | None:
    """The kind of the table that holds the setting ``key`` in a run (``""`` at the top
    level or for a table without kind; None where the run has no such table)."""
    if "." not in key:
        return ""
    table = settings.get(key.rsplit(".", 1)[0])
    return table.kind if isinstance(table, _Table) else None


def _differs(key: str, settings: list[dict[str, Any]]) -> bool:
    """Whether the runs that have the setting ``key`` have it with more than one value."""
    return len({json.dumps(s[key], default=repr) for s in settings if key in s}) > 1


def _shorten(items: list[list[tuple[str, Any]]]) -> list[str]:
    """The labels of the runs' ``(key, value)`` items. If some label is longer than
    :data:`LABEL_WIDTH`, every key loses its table prefix where no other key shown ends the
    same: ``sharing.kind=topk`` becomes ``sharing=topk``, ``sharing.bits=8`` ``bits=8``.
    Nothing is cut: what is left is what tells the runs apart."""
    labels = [", ".join(_item(key, value) for key, value in its) for its in items]
    if max(map(len, labels)) <= LABEL_WIDTH:
        return labels
    ends = Counter(key.rsplit(".", 1)[-1] for key in {key for its in items for key, _ in its})

    def name(key: str) -> str:
        end = key.rsplit(".", 1)[-1]
        return end if ends[end] == 1 else key

    return [", ".join(_item(name(key), value, short=True) for key, value in its) for its in items]


def _item(name: str, value: Any, *, short: bool = False) -> str:
    """One setting as ``name=value``. A table is ``name.kind=kind`` (``name=kind`` if
    ``short``), ``name=on`` if it has no kind, ``name=none`` where the run has no such
    table."""
    if not isinstance(value, _Table):
        return f"{name}={_value(value)}"
    if value.kind is None:
        return f"{name}=none"
    if not value.kind:
        return f"{name}=on"
    return f"{name}={value.kind}" if short else f"{name}.kind={value.kind}"


def _value(value: Any) -> str:
    """A setting's value as it reads in a TOML file, but a path as its file name (configs
    hold absolute paths, which would make up most of the label) and strings unquoted."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return PurePath(value).name if PurePath(value).is_absolute() else value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _gap(x: float) -> float:
    """``x``, or NaN (a gap in a plotted line) if it is not finite."""
    return x if math.isfinite(x) else math.nan


def eval_curves(run: RunData, metric: str = "test_acc") -> dict[str, list[float]]:
    """Per round where some node recorded ``metric``: the round, the mean, min and max of the
    metric across those nodes, their mean ``t_wall``, and their mean cumulative ``bytes_sent``
    (up to and including that round). ``nodes`` counts the nodes behind each point. A round
    where some node's value is not finite (a diverged loss) has NaN there: a gap."""
    points: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
    sent_by_round = _mean_bytes_sent_by_round(run) if run.servers else {}
    for records in run.evaluated.values():
        sent = 0.0
        for rec in records:
            sent += rec.get("bytes_sent", 0)
            if rec.get(metric) is not None:
                # a server's point: what each node had sent by then, on average
                so_far = sent_by_round.get(rec["round"], sent) if run.servers else sent
                virtual = rec.get("t_virtual", math.nan)
                points[rec["round"]].append((rec[metric], rec.get("t_wall", 0.0), virtual, so_far))
    curves: dict[str, list[float]] = {
        k: [] for k in ("round", "mean", "min", "max", "t_wall", "t_virtual", "bytes_sent", "nodes")
    }
    for rnd in sorted(points):
        values, walls, virtuals, sent_so_far = zip(*points[rnd], strict=True)
        mean, low, high = spread(values) or (math.nan,) * 3
        curves["round"].append(rnd)
        curves["mean"].append(_gap(mean))
        curves["min"].append(_gap(low))
        curves["max"].append(_gap(high))
        curves["t_wall"].append(statistics.fmean(walls))
        # the emulated network's virtual time by which every node had finished the round
        curves["t_virtual"].append(
            math.nan if any(math.isnan(t) for t in virtuals) else max(virtuals)
        )
        curves["bytes_sent"].append(statistics.fmean(sent_so_far))
        curves["nodes"].append(len(values))
    return curves


def churned(run: RunData) -> bool:
    """Whether some node of the run sat rounds out (``[availability]``) or was lost."""
    offline = any(r.get("online") is False for rs in run.records.values() for r in rs)
    return offline or bool(run.summary.get("lost"))


def participation_curves(run: RunData, _: str = "") -> dict[str, list[float]]:
    """Per round: the learning nodes that took part (online, and not lost yet), with the
    round's mean ``t_wall``, ``t_virtual`` and cumulative bytes sent per node, for drawing
    it on the accuracy panels' axes; ``lost`` lists the rounds nodes were lost in."""
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for records in run.records.values():
        for rec in records:
            rows[rec["round"]].append(rec)
    sent = _mean_bytes_sent_by_round(run)
    curves: dict[str, list[float]] = {
        k: [] for k in ("round", "mean", "t_wall", "t_virtual", "bytes_sent")
    }
    for rnd in sorted(rows):
        recs = rows[rnd]
        curves["round"].append(rnd)
        curves["mean"].append(sum(1 for r in recs if r.get("online") is not False))
        curves["t_wall"].append(statistics.fmean(r.get("t_wall", 0.0) for r in recs))
        virtual = [r.get("t_virtual", math.nan) for r in recs]
        curves["t_virtual"].append(
            math.nan if any(math.isnan(t) for t in virtual) else max(virtual)
        )
        curves["bytes_sent"].append(sent.get(rnd, math.nan))
    curves["lost"] = [float(x["round"]) for x in run.summary.get("lost", [])]
    return curves


def _mean_bytes_sent_by_round(run: RunData) -> dict[int, float]:
    """The learning nodes' mean cumulative ``bytes_sent`` after each round."""
    totals: dict[int, list[float]] = defaultdict(list)
    for records in run.records.values():
        sent = 0.0
        for rec in records:
            sent += rec.get("bytes_sent", 0)
            totals[rec["round"]].append(sent)
    return {r: statistics.fmean(values) for r, values in totals.items()}


def _final(run: RunData) -> list[float]:
    """Each evaluated process's last recorded value of the run's metric (not the nodes the
    run lost: their last value is from before the end)."""
    last = []
    lost = {x["node"] for x in run.summary.get("lost", [])}
    for process, records in run.evaluated.items():
        if process in lost and not run.servers:
            continue
        values = [r[run.metric] for r in records if r.get(run.metric) is not None]
        if values:
            last.append(values[-1])
    return last


def _median_round_ms(run: RunData) -> float | None:
    median = run.summary.get("round_s_median")
    if median is None:
        walls = [b["t_wall"] - a["t_wall"] for rs in run.records.values() for a, b in pairwise(rs)]
        median = statistics.median(walls) if walls else None
    return None if median is None else median * 1000


def _summary_row(run: RunData, label: str) -> dict[str, Any]:
    final = spread(_final(run)) or (None, None, None)
    records = run.records.values()
    walls = [r.get("t_wall", 0.0) for rs in records for r in rs]
    sent = [sum(r.get("bytes_sent", 0) for r in rs) for rs in records]
    completed = min((len(rs) for rs in records), default=0)
    return {
        "run": label,
        "status": run.summary.get("status") or run.manifest.get("status") or "unknown",
        "nodes": run.summary.get("nodes") or run.manifest.get("nodes") or len(run.records),
        "rounds": run.summary.get("rounds", completed),
        "metric": "RMSE" if run.metric == "test_rmse" else "accuracy",
        "final_mean": final[0],
        "final_min": final[1],
        "final_max": final[2],
        "wall_s": run.summary.get("wall_s", max(walls, default=None)),
        "virtual_s": run.summary.get("virtual_s"),
        "round_ms_median": _median_round_ms(run),
        "bytes_per_node": statistics.fmean(sent) if sent else None,
        "offline": (run.summary.get("availability") or {}).get("offline_share"),
        "lost": len(run.summary["lost"]) if run.summary.get("lost") else None,
    }


def summary_table(runs: list[RunData], labels: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per run, its ``run`` cell from ``labels`` (default: :func:`run_labels`): final
    metric mean/min/max across nodes, rounds, times, bytes per node (total sent per node,
    averaged over nodes)."""
    labels = run_labels(runs) if labels is None else labels
    return [_summary_row(run, label) for run, label in zip(runs, labels, strict=True)]


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "mib":
        return f"{value / 2**20:,.2f}"
    if spec == "pct":
        return f"{value:.1%}"
    return format(value, spec)


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The table's columns: the virtual time, the share offline and the nodes lost only if
    some run has them."""
    shown = {key for key in _OPTIONAL_COLUMNS if any(row.get(key) is not None for row in rows)}
    return [c for c in COLUMNS if c[0] not in _OPTIONAL_COLUMNS or c[0] in shown]


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = columns(rows)
    header = "| " + " | ".join(title for _, title, _ in cols) + " |"
    rule = "|" + "|".join("---" if not spec else "---:" for _, _, spec in cols) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [_cell(row.get(key), spec).replace("|", "\\|") for key, _, spec in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.md`` (for people) and ``summary.csv`` (raw numbers) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / "summary.md", out_dir / "summary.csv"
    md.write_text(_markdown(rows), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        cols = columns(rows)
        writer = csv.DictWriter(f, fieldnames=[key for key, _, _ in cols])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key, *_ in cols})
    return md, csv_path


_Styled = tuple[RunData, str, str]  # a run, its label, its color
_CurveFn = Callable[[RunData, str], dict[str, list[float]]]


def _lines(styled: list[_Styled], metric: str, curves: _CurveFn = eval_curves) -> list[Line]:
    """A plot line for each run that has data for ``metric``."""
    from dlactor.metrics.plots import Line

    out = []
    for run, label, color in styled:
        data = curves(run, metric)
        if data["round"]:
            out.append(Line(label, color, data))
    return out


def _consensus_curves(run: RunData, _: str) -> dict[str, list[float]]:
    rows = [r for r in run.consensus if r.get("consensus_distance") is not None]
    distances = [_gap(r["consensus_distance"]) for r in rows]
    return {"round": [r["round"] for r in rows], "mean": distances}


def _topology_curves(run: RunData, _: str) -> dict[str, list[float]]:
    from dlactor.metrics.topology import round_stats

    nodes = int(run.manifest.get("nodes") or len(run.records))
    return round_stats(run.records, nodes)


def draw_figures(runs: list[RunData], labels: list[str], out_dir: Path) -> list[Path]:
    """Write ``accuracy.png``, ``loss.png``, ``consensus.png`` and ``topology.png`` into
    ``out_dir``, each when some run has data for it; return the files written. A run keeps
    its color in every figure; classification and regression runs get a row each in
    ``accuracy.png``."""
    from dlactor.metrics.plots import (
        consensus_figure,
        loss_figure,
        metric_figure,
        run_colors,
        topology_figure,
    )

    styled = list(zip(runs, labels, run_colors(len(runs)), strict=True))
    written = []
    metrics = sorted({run.metric for run in runs})
    rows = {m: _lines([s for s in styled if s[0].metric == m], m) for m in metrics}
    if any(rows.values()):
        rows = {m: lines for m, lines in rows.items() if lines}
        churn = [s for s in styled if churned(s[0])]
        online = _lines(churn, "online", participation_curves) if churn else []
        written.append(metric_figure(rows, out_dir / "accuracy.png", online=online))
    test, train = _lines(styled, "test_loss"), _lines(styled, "train_loss")
    if test or train:
        written.append(loss_figure(test, train, out_dir / "loss.png"))
    consensus = _lines(styled, "consensus_distance", _consensus_curves)
    if any(d > 0 for line in consensus for d in line.curves["mean"]):
        written.append(consensus_figure(consensus, out_dir / "consensus.png"))
    topology = _lines(styled, "topology", _topology_curves)
    if topology:
        written.append(topology_figure(topology, out_dir / "topology.png"))
    return written


def report(
    run_dirs: list[Path], out: Path | None = None, labels: list[str] | None = None
) -> list[Path]:
    """:func:`draw_report` of the runs in ``run_dirs``."""
    return draw_report([load_run(Path(d)) for d in run_dirs], out, labels)


def draw_report(
    runs: list[RunData], out: Path | None = None, labels: list[str] | None = None
) -> list[Path]:
    """Draw accuracy (or RMSE), loss and consensus PNGs; return the files written.

    With ``out``, one comparison of all runs (a line per run) goes into ``out``; without it,
    each run's own figures go into ``<run>/plots/``. ``labels``, one per run, name the runs
    in the legends (default: :func:`run_labels` in a comparison, each run's name on its
    own).
    """
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs: give one per run")
    if out is not None:
        return draw_figures(runs, run_labels(runs) if labels is None else labels, Path(out))
    written: list[Path] = []
    for i, run in enumerate(runs):
        label = run.name if labels is None else labels[i]
        written += draw_figures([run], [label], run.path / "plots")
    return written
