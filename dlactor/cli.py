"""The ``dlactor`` command: launch, validate, graph.

Exit codes: 0 ok, or degraded (finished without the nodes it lost, under
``launcher.on_node_failure = "continue"``); 1 the run failed (a node raised or died); 2
invalid input (config, graph file, arguments), reported before any process starts; 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import tomli_w
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup

from dlactor.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from dlactor.launch.run import RunResult

__all__ = ["app", "main"]

EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


class _Argument(TyperArgument):
    """A positional argument shown by its metavar as it is: ``CONFIG.toml`` in the usage
    line (``[CONFIG.toml]`` if optional) and in the help's list of arguments, not typer's
    ``{config}`` beside a type (``<path>``, ``<list[Path]>``)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        if not self.metavar:
            return super().get_usage_pieces(ctx)
        return [self.metavar if self.required else f"[{self.metavar}]"]


def _placeholders(params: list[Any]) -> list[Any]:
    """``params`` with the help's placeholders that say what to give: a flag shows none
    (typer shows ``<bool>``, though a flag takes no value), an argument its metavar. Typer
    makes the parameters itself, with no say in their class: its arguments become
    :class:`_Argument` here."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """A command whose help shows :func:`_placeholders`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _placeholders(super().get_params(ctx))


class _Group(TyperGroup):
    """A group (``dlactor``, ``dlactor data``) whose help shows :func:`_placeholders`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _placeholders(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Emulate decentralized learning: one asyncio actor per OS process, tensors over TCP.",
)


def _console(stderr: bool = False) -> Console:
    """Rich output at the terminal's width; piped or redirected (not a terminal), as wide as
    a table needs: rich would otherwise cut tables and wrap lines at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else 1000
    return Console(stderr=stderr, width=wide)


err = _console(stderr=True)
out = _console()


def _config_argument(help: str) -> Any:
    """A config file argument, shown as ``CONFIG.toml``."""
    return typer.Argument(help=help, metavar="CONFIG.toml", show_default=False)


ConfigArg = Annotated[Path, _config_argument("TOML experiment config.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config value: --set nodes=32 --set topology.degree=5 "
        "(setting a table's kind starts that table afresh)",
    ),
]


def _refuse(message: str) -> NoReturn:
    """Exit 2 with ``message`` as written, on one line (paths in it are not markup)."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INVALID)


def _invalid(config: Path, message: str) -> NoReturn:
    """Exit 2 with ``message`` as written: its brackets (``[topology]``) are not markup. The
    file is named once (a message that starts or ends with it already names it)."""
    named = message.startswith(str(config)) or message.endswith(f": {config}")
    _refuse(message if named else f"{config}: {message}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"dlactor {version('dlactor')}", highlight=False)
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            out.print("dlactor (not installed)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print dlactor's version."
        ),
    ] = False,
) -> None:
    """Emulate decentralized learning: one asyncio actor per OS process, tensors over TCP."""


@app.command(cls=_Command)
def kinds(
    config: Annotated[
        Path | None, _config_argument("Also the plugins this config lists (plugins = [...]).")
    ] = None,
) -> None:
    """Each table's kinds (built in, and from installed plugins), their settings and defaults."""
    from pydantic_core import PydanticUndefined

    from dlactor import plugins
    from dlactor.config import CATEGORIES, load_config_plugins

    try:
        if config is None:
            plugins.load_plugins([])  # the built-ins and the installed plugins' entry points
        else:
            load_config_plugins(config)
    except plugins.PluginError as exc:
        _refuse(str(exc))
    except ConfigError as exc:
        _invalid(config or Path(), str(exc))
    table = Table(title="strategy kinds", title_justify="left")
    for col in ("table", "kind", "settings (default)"):
        table.add_column(col)
    for category, (_, default_kind) in CATEGORIES.items():
        for kind, model in sorted(plugins.registered(category).items()):
            settings = []
            for name, field in model.model_fields.items():
                if name == "kind":
                    continue
                if field.default is not PydanticUndefined:
                    default = repr(field.default)
                elif field.default_factory is not None:
                    default = repr(field.default_factory())  # type: ignore[call-arg]
                else:
                    default = "required"
                settings.append(f"{name} ({default})")
            mark = " (default)" if kind == default_kind else ""
            row = (f"[{category}]", kind + mark, ", ".join(settings) or "-")
            table.add_row(*(escape(cell) for cell in row))
    out.print(table)
    for plugin in plugins.broken():  # what the kinds it would have brought cannot be
        err.print(f"[yellow]warning:[/] {escape(str(plugin))}", highlight=False, soft_wrap=True)


def _load(config: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        _invalid(config, str(exc))


def _plan(cfg: RunConfig, config: Path) -> Any:
    from dlactor.launch.plan import make_plan

    try:
        return make_plan(cfg)
    except ConfigError as exc:
        _invalid(config, str(exc))


def config_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))  # TOML has no null


@app.command(cls=_Command)
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a config (and build its graph and partition) without running anything."""
    cfg = _load(config, set_)
    plan = _plan(cfg, config)
    out.print(
        f"[green]ok[/] {config}: {cfg.nodes} nodes, {cfg.rounds} rounds, "
        f"topology {cfg.topology.kind} ({plan.graph.number_of_edges()} edges), "
        f"model {cfg.model.kind} ({plan.model_params:,} parameters), data {cfg.data.kind} "
        f"({cfg.partition.kind} partition)"
    )


@app.command(cls=_Command)
def launch(
    config: Annotated[
        Path | None, _config_argument("TOML experiment config (not with --resume).")
    ] = None,
    set_: SetOpt = None,
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where run directories go.")
    ] = Path("runs"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="RUN_DIR",
            help=escape(
                "Continue this run directory from its last complete checkpoint "
                "([checkpoint] every), appending to its records."
            ),
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run an experiment: one OS process per node, then print the summary table."""
    from dlactor.launch.run import make_run_dir, open_backend, run

    manifest = None
    if resume is not None:
        if config is not None or set_:
            _invalid(resume, "--resume takes the run directory alone: its config.toml is the run's")
        cfg, plan, manifest = _resumed(resume)
        run_dir = resume
    elif config is None:
        err.print("[red]error:[/] give a config, or --resume RUN_DIR", highlight=False)
        raise typer.Exit(EXIT_INVALID)
    else:
        cfg = _load(config, set_)
        plan = None
    source = resume if resume is not None else config
    assert source is not None
    with ExitStack() as stack:
        try:  # the Ray backend connects here: an unreachable cluster is invalid input
            backend = stack.enter_context(open_backend(cfg))
        except ConfigError as exc:
            _invalid(source, str(exc))
        if plan is None:
            # After connecting: under Ray's agents, each machine's agent starts (its worker
            # imports torch) while this process makes the plan.
            assert config is not None
            plan = _plan(cfg, config)
        if resume is None:
            try:
                run_dir = make_run_dir(out_dir, cfg.name)
            except OSError as exc:
                where = escape(f"cannot create a run directory in {out_dir}: {exc}")
                err.print(f"[red]error:[/] {where}", highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_FAILED) from None
        rounds = f"{cfg.rounds} rounds"
        if plan.resume_round is not None:
            rounds = f"rounds {plan.resume_round}..{cfg.rounds - 1} (resumed)"
        where = f"{cfg.nodes} nodes ({cfg.launcher.kind}), {rounds} -> {run_dir}"
        err.print(f"dlactor: {where}", highlight=False)
        result = run(
            plan,
            run_dir,
            config_toml(cfg),
            backend=backend,
            show_progress=progress,
            manifest=manifest,
        )
    print_summary(result.summary, run_dir)
    if result.status == "degraded":
        why = escape(result.reason)
        err.print(f"[yellow]run degraded:[/] {why}", highlight=False, soft_wrap=True)
    elif result.status != "ok":
        _say_why(result)
        raise typer.Exit(EXIT_INTERRUPTED if result.status == "interrupted" else EXIT_FAILED)


def _resumed(run_dir: Path) -> tuple[RunConfig, Any, dict[str, Any]]:
    """The config, plan and manifest of a run to resume from its last complete checkpoint
    (its records set back to that round); exit 2 if it cannot be."""
    from dlactor.checkpoint.state import CheckpointError
    from dlactor.launch.resume import CONFIG, prepare_resume, resumed_manifest

    if not (run_dir / CONFIG).is_file():
        _invalid(run_dir, f"not a run directory: no {CONFIG} in it")
    cfg = _load(run_dir / CONFIG, [])
    plan = _plan(cfg, run_dir / CONFIG)
    try:
        plan, point = prepare_resume(run_dir, plan)
        manifest = resumed_manifest(run_dir, point, plan.run_id)
    except (ConfigError, CheckpointError, OSError) as exc:
        _invalid(run_dir, str(exc))
    return cfg, plan, manifest


def _say_why(result: RunResult) -> None:
    """Why a run did not end ok, on stderr: the failed node's traceback (once), the reason,
    the launcher's own failures after it, and where the results are, or, if summary.json
    could not be written, one line saying so and why. Lines are not wrapped: each stays
    one line for whatever reads the log."""
    reason = result.reason
    if result.outcome.traceback:  # it ends with the error, which the reason repeats
        err.print(result.outcome.traceback, highlight=False, markup=False)
        reason = result.outcome.reason
    also = result.outcome.also_failed
    extra = f" (nodes {also[:10]} failed after it)" if also else ""
    why = escape(f"{reason}{extra}")
    err.print(f"[red]run {result.status}:[/] {why}", highlight=False, soft_wrap=True)
    for problem in result.problems:
        if problem not in (result.reason, result.lost):
            err.print(f"also: {problem}", highlight=False, markup=False, soft_wrap=True)
    if result.lost:
        lost = escape(f"{result.lost}; this run's outcome is only what is printed here")
        err.print(f"[red]error:[/] {lost}", highlight=False, soft_wrap=True)
    else:
        err.print(f"results so far are kept in {result.run_dir}", highlight=False)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _metric_rows(final: dict[str, Any]) -> list[tuple[str, str]]:
    """Accuracy rows, or RMSE rows for a regression run (MovieLens)."""
    metric, label = ("test_acc", "accuracy")
    if final.get("test_acc_mean") is None and final.get("test_rmse_mean") is not None:
        metric, label = ("test_rmse", "RMSE")
    low, high = _fmt(final.get(f"{metric}_min"), ".4f"), _fmt(final.get(f"{metric}_max"), ".4f")
    return [
        (f"test {label} mean", _fmt(final.get(f"{metric}_mean"), ".4f")),
        (f"test {label} min / max", f"{low} / {high}"),
    ]


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary table's rows: (figure, value), values formatted for people."""
    final = summary.get("final") or {}  # bare when the node records could not be read
    med = summary.get("round_s_median")
    pss = summary.get("peak_pss_bytes") or None
    per_round = summary.get("bytes_sent_per_node_per_round")
    return [
        ("status", summary["status"]),
        ("nodes", str(summary["nodes"])),
        ("rounds completed", str(summary["rounds"])),
        *_churn_rows(summary),
        ("wall time (s, from the start barrier)", _fmt(summary["wall_s"], ".2f")),
        *_virtual_rows(summary),
        ("median round (ms)", _fmt(None if med is None else med * 1000, ".1f")),
        ("bytes sent per node per round", _fmt(per_round, ",.0f")),
        *_secure_rows(summary),
        *_metric_rows(final),
        ("test loss mean", _fmt(final.get("test_loss_mean"), ".4f")),
        ("peak memory, whole run (PSS MiB)", _fmt(None if pss is None else pss / 2**20, ",.0f")),
    ]  # fmt: skip


def _churn_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Nodes lost, and the share of node-rounds spent offline, when the run had either."""
    rows = []
    if summary.get("lost"):
        rows.append(
            ("nodes lost", ", ".join(f"{x['node']} (round {x['round']})" for x in summary["lost"]))
        )
    availability = summary.get("availability")
    if isinstance(availability, dict):
        rows.append(("node-rounds offline", _fmt(availability.get("offline_share"), ".1%")))
    return rows


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"run {summary['name']}", title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for row in summary_rows(summary):
        table.add_row(*row)
    out.print(table)
    out.print(f"results: {run_dir}", highlight=False)


@app.command(cls=_Command)
def graph(
    config: ConfigArg,
    set_: SetOpt = None,
    output: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="Write the edge list here.")
    ] = None,
) -> None:
    """Build a config's topology and print its size, degrees and spectral gap."""
    from dlactor.topology.graphs import write_edge_list
    from dlactor.topology.mixing import mixing_matrix, spectral_gap

    cfg = _load(config, set_)
    try:
        g = cfg.topology.graph(cfg.nodes, cfg.seed)
    except (ValueError, OSError) as exc:
        _invalid(config, f"invalid config: {exc}")
    degrees = [d for _, d in g.degree]
    out.print(
        f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges, degree "
        f"{min(degrees)}..{max(degrees)}, spectral gap {spectral_gap(mixing_matrix(g)):.4f}"
    )
    if output is not None:
        write_edge_list(g, output)
        out.print(f"wrote {output}")


data_app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Datasets: what is here, and fetching the rest.",
)
app.add_typer(data_app, name="data")


@data_app.command("list", cls=_Command)
def data_list() -> None:
    """Each dataset, whether it is present, and where it is cached ($DLACTOR_DATA)."""
    from dlactor.data.store import data_home, entries, is_present

    table = Table(title=f"datasets in {data_home()}", title_justify="left")
    for col in ("name", "present", "location", "sources, in order"):
        table.add_column(col)
    table.add_row("digits", "yes", "inside scikit-learn", "-")
    for name, entry in entries().items():
        present = "[green]yes[/]" if is_present(name) else "[red]no[/]"
        where = str(data_home() / name)
        table.add_row(name, present, where, "; ".join(src.name for src in entry.sources))
    out.print(table)


@data_app.command("fetch", cls=_Command)
def data_fetch(
    name: Annotated[
        str,
        typer.Argument(metavar="DATASET", help="Dataset name, as `dlactor data list` shows it."),
    ],
    local: Annotated[
        Path | None,
        typer.Option(
            "--from", metavar="FILE|DIR", help="Take it from this local file or directory."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if present.")] = False,
) -> None:
    """Get a dataset from the first source that answers, and say which one it was."""
    from dlactor.data.store import (
        SourceUnavailable,
        UnusableLocalSource,
        dataset_dir,
        entries,
        fetch,
        is_present,
    )

    def plain(console: Console, text: str) -> None:
        """Names, paths and reasons as they are (a "[/]" in a file name is text, not
        markup), each line whole (not cut at the terminal's width)."""
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    if name not in entries():
        err.print("[red]error:[/]", end=" ")
        plain(err, f"unknown dataset {name!r}; known: {', '.join(entries())}")
        raise typer.Exit(EXIT_INVALID)
    if local is None and not force and is_present(name):
        plain(out, f"{name} is already in {dataset_dir(name)} (--force fetches it again)")
        return
    try:
        where, source = fetch(name, local=local, log=lambda line: plain(err, line))
    except SourceUnavailable as exc:
        err.print("[red]error:[/]", end=" ")
        plain(err, str(exc))
        bad_input = isinstance(exc, UnusableLocalSource)  # the --from file cannot be used
        raise typer.Exit(EXIT_INVALID if bad_input else EXIT_FAILED) from None
    out.print("[green]fetched[/]", end=" ")
    plain(out, f"{name} from {source} into {where}")


@app.command(cls=_Command)
def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories to plot.")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="DIR", help="Write a comparison here (default: each run's plots/)."
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            metavar="LABEL",
            help="Name a run in the legends and the table, once per run, in order (default: "
            "the config settings that differ between the runs, else the runs' names).",
        ),
    ] = None,
) -> None:
    """Plot accuracy against rounds, wall-clock time and bytes; write a summary table."""
    from dlactor.metrics.report import draw_report, load_run, summary_table, write_table

    if labels and len(labels) != len(run_dirs):
        given = f"{len(labels)} --label for {len(run_dirs)} run directories"
        _refuse(f"{given}: give one --label per run, in order")
    if labels and len(set(labels)) < len(labels):
        _refuse("--label: each run needs a label of its own (two are the same)")
    try:
        runs = [load_run(d) for d in run_dirs]
    except ValueError as exc:
        _refuse(str(exc))
    written = draw_report(runs, out_dir, labels or None)
    table_dir = out_dir if out_dir is not None else run_dirs[0] / "plots"
    md, csv = write_table(summary_table(runs, labels or None), table_dir)
    # Plain stdout: a markdown table wrapped at the terminal's width would no longer parse.
    sys.stdout.write(md.read_text())
    for path in [*written, md, csv]:
        out.print(f"wrote {path}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _secure_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """That the run was secure, and what it cost beyond the shares."""
    secure = summary.get("secure")
    if not isinstance(secure, dict):
        return []
    extra = _fmt(secure["extra_bytes_per_node_per_round"], ",.0f")
    kept = secure["rounds_skipped"] + secure["sums_rejected"]
    return [
        ("secure aggregation", f"on (fixed point, {secure.get('fraction_bits')} fraction bits)"),
        ("  extra bytes per node per round", extra),
        ("  rounds a receiver kept its model", str(kept)),
    ]


def _virtual_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The emulated network's virtual duration and times to the accuracy targets reached."""
    if summary.get("virtual_s") is None:
        return []
    rows = [("virtual time (s, emulated network)", _fmt(summary["virtual_s"], ".2f"))]
    for target, hit in summary.get("time_to_accuracy", {}).items():
        if hit is not None and hit.get("t_virtual_s") is not None:
            rows.append((f"virtual s to mean accuracy {target}", _fmt(hit["t_virtual_s"], ".2f")))
    return rows
