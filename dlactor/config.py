"""Run configuration: the run-level settings, the strategy settings' base classes, the loader.

Each strategy category (algorithm, topology, sharing, training, model, data, partition) is a
discriminated union on ``kind`` over the settings models registered for it. No strategy's
settings live here: each lives beside its strategy (``dlactor/<package>/settings.py``), and
built-ins are registered exactly as plugins are (the ``dlactor.plugins`` entry points in
pyproject.toml, see :mod:`dlactor.plugins`). Settings are frozen and reject unknown keys; a
settings model builds its strategy (``build``), so node code never parses strings.
:func:`load_config` is the one entry point: TOML + ``--set`` overrides + plugins -> a
validated :class:`RunConfig`, or a :class:`ConfigError` whose message names every bad field.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import stat
import tomllib
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args

import networkx as nx
import numpy as np
import torch
from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from dlactor import plugins
from dlactor.churn.settings import (
    AvailabilitySettings,
    CheckpointSettings,
    FaultSettings,
    check_churn,
)
from dlactor.network.settings import NetworkSettings
from dlactor.settings_base import FieldError, Settings
from dlactor.topology.graphs import MAX_NODES
from dlactor.transport.tcp import HANDSHAKE_TIMEOUT_S

if TYPE_CHECKING:
    from dlactor.algorithms.base import Algorithm
    from dlactor.context import NodeEnv, Service, ServiceEnv
    from dlactor.data.base import Dataset
    from dlactor.sharing.base import Sharing
    from dlactor.topology.base import Topology
    from dlactor.training.base import Trainer

__all__ = [
    "CATEGORIES",
    "AlgorithmSettings",
    "ConfigError",
    "FieldError",
    "DataSettings",
    "LauncherSettings",
    "LocalLauncher",
    "ModelSettings",
    "PartitionSettings",
    "RayLauncher",
    "RunConfig",
    "Settings",
    "SharingSettings",
    "TopologySettings",
    "TrainingSettings",
    "apply_overrides",
    "load_config",
    "validate_config",
]


class ConfigError(ValueError):
    """The config is invalid; the message names the field(s). The CLI exits 2 on it."""


# Upper bounds: far beyond any study on one machine or a cluster, low enough that a typo or a
# hostile config exits 2 naming the field before it can overflow or exhaust memory. Each
# field's description states its bound; MAX_NODES and MAX_EDGES are dlactor.topology.graphs'.
MAX_ROUNDS = 10_000_000
MAX_PARAMETERS = 1 << 31  # 8 GiB of float32 in every node's copy of the model
MAX_WIDTH = 1 << 20  # units of one MLP layer
MAX_SAMPLES = 1 << 31  # any count of samples or roles
MAX_STEPS = 1_000_000
MAX_BATCH = 1 << 16
MAX_BUCKET = 1 << 20  # the quantizer pads every tensor to whole buckets
MAX_SECONDS = 86_400.0  # a day
MAX_THREADS = 256
MAX_SEED = (1 << 32) - 1
MAX_CONFIG_BYTES = 8 << 20


# --- algorithm: the round protocol -------------------------------------------------------


class AlgorithmSettings(Settings):
    """Base of algorithm settings (``[algorithm]``): the round protocol every process runs.

    ``servers`` processes of the algorithm's own come after the learning nodes and the
    topology's services (a FedAvg server, a parameter server). An algorithm that does not
    use the topology or the sharing strategy says so in ``check``, which sees the whole
    config and the tables the user wrote (``given``): a bad combination exits 2 naming the
    field before any process starts.
    """

    kind: str
    servers: ClassVar[int] = 0
    #: False: the nodes have no topology (``[topology]`` is refused, none is built).
    uses_topology: ClassVar[bool] = True

    def needs_topology(self, config: RunConfigBase) -> bool:
        """Whether this run's nodes get a topology (its graph built, its services started)."""
        return self.uses_topology

    def lookahead(self, config: RunConfigBase) -> int:
        """How many rounds ahead of a node one peer's shares may be buffered (1: a peer
        waits for this node's share before it goes on, as in D-PSGD)."""
        return 1

    def check(self, config: RunConfigBase, given: frozenset[str]) -> None:
        """Raise FieldError (``field`` as a dotted path from the config's top level, e.g.
        ``topology.kind``) if this algorithm cannot run with the rest of ``config``."""

    def check_graph(self, graph: nx.Graph) -> None:
        """Raise FieldError if this algorithm cannot run on the topology's round-0 graph
        (called when the plan is made, for algorithms that use a topology)."""

    def build(self, env: NodeEnv) -> Algorithm:
        """A learning node's part of the protocol."""
        raise NotImplementedError

    def server(self, env: NodeEnv) -> Algorithm:
        """Server process ``env.node``'s part (for algorithms with ``servers``)."""
        raise NotImplementedError(f"algorithm {self.kind!r} has no server processes")


# --- topology ---------------------------------------------------------------------------


class TopologySettings(Settings):
    """Base of topology settings: the graph at round 0, and the strategy a node runs.

    A topology may need processes of its own beside the nodes (``services``: the peer
    sampler is one); they get the process ids after the learning nodes'.
    """

    kind: str
    services: ClassVar[int] = 0

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        raise NotImplementedError

    def check(self, graph: nx.Graph, rounds: int) -> None:
        """Raise ValueError if these settings cannot run on ``graph`` for ``rounds``."""

    def build(self, env: NodeEnv) -> Topology:
        from dlactor.topology.static import StaticTopology

        return StaticTopology(graph=env.graph)

    def service(self, env: ServiceEnv) -> Service:
        """The actor of service process ``env.process`` (for topologies with services)."""
        raise NotImplementedError(f"topology {self.kind!r} has no service processes")


# --- sharing ----------------------------------------------------------------------------


class SharingSettings(Settings):
    """Base of sharing settings. ``compression`` wraps any strategy's payloads in lossless
    lz4 or zstd compression (``dlactor.sharing.lossless``)."""

    kind: str
    compression: Literal["none", "lz4", "zstd"] = Field(
        "none", description="lossless compression of every payload on the wire"
    )

    def check(self, config: RunConfigBase) -> None:
        """Raise ValueError if this strategy cannot run with the rest of ``config``."""

    def check_graph(self, graph: nx.Graph, config: RunConfigBase) -> None:
        """Raise FieldError if this strategy cannot run on the topology's graph (called when
        the plan is made, after ``check``, for runs with a topology)."""

    def max_payload_bytes(self, model_bytes: int) -> int:
        """The most bytes of tensors one payload can hold for a model of ``model_bytes``: the
        largest frame a peer may announce follows from it (``Plan.max_frame``). The built-in
        strategies' largest is 2.25x the model (8-bit codes plus 8 bytes of scales per
        parameter, at bucket_size 1); a plugin that sends more says so here."""
        return 3 * model_bytes + (64 << 10)

    def build(self, env: NodeEnv) -> Sharing:
        raise NotImplementedError


# --- training ---------------------------------------------------------------------------


class TrainingSettings(Settings):
    kind: str

    def build(self, env: NodeEnv) -> Trainer:
        raise NotImplementedError

    def evaluator(self, env: NodeEnv) -> Trainer:
        """What a server process evaluates with: the test set, no training samples."""
        from dlactor.training.sgd import Evaluator

        return Evaluator(model=env.model, dataset=env.dataset)


# --- model ------------------------------------------------------------------------------


class ModelSettings(Settings):
    kind: str

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        raise NotImplementedError


# --- data -------------------------------------------------------------------------------


class PartitionSettings(Settings):
    kind: str

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        """Training-sample indices for each node."""
        raise NotImplementedError


class DataSettings(Settings):
    kind: str

    def load(self, seed: int) -> Dataset:
        raise NotImplementedError


# --- run-level --------------------------------------------------------------------------


class EvaluationSettings(Settings):
    every: int = Field(
        5, ge=1, le=MAX_ROUNDS, description="evaluate every N rounds (and after the last)"
    )
    test_samples: int | None = Field(
        None,
        ge=1,
        lt=MAX_SAMPLES,
        description="evaluate on a fixed, seeded subset of the test set (default: all)",
    )
    consensus: bool = Field(
        True, description="record the consensus distance of the node models on evaluation rounds"
    )
    targets: list[float] = Field(
        default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9],
        max_length=100,
        description="mean test accuracies whose time to reach summary.json gives",
    )

    @field_validator("targets")
    @classmethod
    def _accuracies(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < t <= 1.0 for t in value):
            raise ValueError("every target is an accuracy in (0, 1]")
        return sorted(set(value))


class SecuritySettings(Settings):
    """``[security]``: how processes prove who they are and what they accept from each other
    (docs/security.md has the threat model)."""

    tls: Literal["auto", "on", "off"] = Field(
        "auto",
        description='TLS on every connection: "auto" turns it on when nodes listen beyond '
        "loopback or run under Ray",
    )
    allow_nonfinite: bool = Field(
        False, description="accept NaN or Inf in peers' payloads (for a study that wants them)"
    )
    handshake_timeout_s: float = Field(
        HANDSHAKE_TIMEOUT_S,
        gt=0,
        le=300,
        description="longest a connection may take to prove who it is",
    )
    max_pending_handshakes: int = Field(
        128, ge=1, le=65536, description="connections kept at once whose handshake is unfinished"
    )


class LauncherSettings(Settings):
    """Base of the backends' settings (``[launcher]``, chosen by ``kind``): what every
    backend's nodes need."""

    kind: str
    round_timeout_s: float = Field(
        120.0,
        gt=0,
        le=MAX_SECONDS,
        description="longest wait for a round's messages (finite, at most a day: 86,400)",
    )
    start_timeout_s: float = Field(
        120.0,
        gt=0,
        le=MAX_SECONDS,
        description="longest wait at the start barrier (finite, at most a day: 86,400)",
    )
    torch_threads: int = Field(
        1, ge=1, le=MAX_THREADS, description="torch intra-op threads per node (at most 256)"
    )
    on_node_failure: Literal["stop", "continue"] = Field(
        "stop",
        description='a learning node that dies: "stop" the run, or "continue" without it '
        '(status "degraded"; docs/churn.md)',
    )


class LocalLauncher(LauncherSettings):
    """Node processes forked on this machine (``dlactor.launch.local``)."""

    kind: Literal["local"] = "local"
    host: str = Field("127.0.0.1", description="address the nodes listen on")


class RayLauncher(LauncherSettings):
    """Node processes placed by a Ray cluster (``dlactor.launch.ray``; the ``ray`` extra).

    Nodes listen on their Ray node's IP address; the launcher's control channel listens on
    ``control_host`` (default: this machine's Ray node IP). A local cluster that dlactor
    starts itself (``address`` unset) keeps everything on 127.0.0.1.

    ``placement = "agents"`` (the default) puts one agent actor on each machine (each Ray
    node), which forks that machine's share of the nodes from itself as the local launcher
    does (``dlactor.launch.agents``); ``"workers"`` makes every node a Ray worker process of
    its own (docs/scaling.md compares the two).
    """

    kind: Literal["ray"] = "ray"
    placement: Literal["agents", "workers"] = Field(
        "agents",
        description='"agents": an agent per machine forks its nodes; "workers": a Ray '
        "worker process per node",
    )
    nodes_per_machine: int | None = Field(
        None,
        ge=1,
        le=MAX_NODES,
        description="agents: at most this many nodes per machine (unset: from its memory)",
    )
    memory_per_node_mib: float = Field(
        16.0,
        gt=0,
        le=1 << 20,
        description="agents: MiB a node needs; a machine holds its Ray memory / this",
    )
    address: str | None = Field(
        None,
        min_length=1,
        description='Ray cluster: unset starts a local one; "auto" joins the one running '
        'here; or "host:port" / "ray://host:port"',
    )
    cpus_per_node: float = Field(
        0.25,
        gt=0,
        le=1024,
        description="workers: Ray CPUs reserved per node, 0.25: up to 4 per core (<= 1,024)",
    )
    control_host: str | None = Field(
        None, min_length=1, description="address the launcher's control channel listens on"
    )
    control_port: int = Field(0, ge=0, le=65535, description="its port (0: any free port)")
    node_port_base: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="node i listens on node_port_base + i (unset: any free port)",
    )

    @model_validator(mode="after")
    def _ray_is_installed(self) -> RayLauncher:
        if importlib.util.find_spec("ray") is None:
            raise ValueError("the ray launcher needs Ray: pip install 'dlactor[ray]'")
        return self


Launcher = Annotated[LocalLauncher | RayLauncher, Field(discriminator="kind")]


class RunConfigBase(Settings):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_.-]+$", max_length=128, description="run directory prefix"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="a 32-bit seed: 0 to 2**32 - 1")
    nodes: int = Field(
        16, ge=2, le=MAX_NODES, description="learning nodes, one process each (at most 65,536)"
    )
    rounds: int = Field(40, ge=1, le=MAX_ROUNDS, description="rounds (at most 10,000,000)")
    plugins: list[str] = Field(default_factory=list)
    evaluation: EvaluationSettings = EvaluationSettings()
    launcher: Launcher = LocalLauncher()
    security: SecuritySettings = SecuritySettings()
    #: The emulated network (docs/network.md); None: messages cross this machine as they are.
    network: NetworkSettings | None = None
    #: Which nodes are online in each round (docs/churn.md); None: every node, every round.
    availability: AvailabilitySettings | None = None
    #: Failures the launcher injects (docs/churn.md); None: none.
    faults: FaultSettings | None = None
    checkpoint: CheckpointSettings = CheckpointSettings()

    @field_validator("launcher", mode="before")
    @classmethod
    def _local_unless_told(cls, value: Any) -> Any:
        """A ``[launcher]`` table without ``kind`` is the local backend's (as it always was)."""
        if isinstance(value, dict) and "kind" not in value:
            return {**value, "kind": "local"}
        return value


#: category (also the run-config field name) -> (settings base class, default kind)
CATEGORIES: dict[str, tuple[type[Settings], str]] = {
    "algorithm": (AlgorithmSettings, "dpsgd"),
    "topology": (TopologySettings, "regular"),
    "sharing": (SharingSettings, "full"),
    "training": (TrainingSettings, "sgd"),
    "model": (ModelSettings, "mlp"),
    "data": (DataSettings, "digits"),
    "partition": (PartitionSettings, "iid"),
}

if TYPE_CHECKING:

    class RunConfig(RunConfigBase):
        algorithm: AlgorithmSettings
        topology: TopologySettings
        sharing: SharingSettings
        training: TrainingSettings
        model: ModelSettings
        data: DataSettings
        partition: PartitionSettings

else:
    RunConfig = RunConfigBase  # replaced by the model built from the registry (below)


def _union_for(category: str) -> Any:
    models = list(plugins.registered(category).values())
    for m in models:
        base = CATEGORIES[category][0]
        if not issubclass(m, base):
            raise plugins.PluginError(f"{m.__name__} must subclass dlactor.config.{base.__name__}")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


def config_model() -> type[RunConfigBase]:
    """The run-config model for the strategies registered right now."""
    fields: dict[str, Any] = {}
    for category, (_, default_kind) in CATEGORIES.items():
        known = plugins.registered(category)
        if default_kind not in known:
            raise plugins.PluginError(
                f"no {category} kind {default_kind!r} is registered: dlactor's built-ins come "
                f"from its entry points (group dlactor.plugins); reinstall it (pip install -e .)"
                f"{plugins.broken_note()}"
            )
        default = known[default_kind]()
        fields[category] = (_union_for(category), default)
    return create_model("RunConfig", __base__=RunConfigBase, **fields)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """The dotted path as the user wrote it: pydantic puts the union's tag after a category
    name (``topology.regular.degree``); the TOML says ``topology.degree``."""
    parts = list(loc)
    if not parts:
        return "(top level)"
    tagged = parts[0] == "launcher" or (
        parts[0] in CATEGORIES and len(plugins.kinds(str(parts[0]))) > 1
    )
    if len(parts) >= 2 and tagged:
        del parts[1]
    return ".".join(str(p) for p in parts) or "(top level)"


def _fields_at(loc: tuple[int | str, ...]) -> set[str]:
    """The field names of the settings model at ``loc`` (the run config's at the top; a
    category table's, by its kind), or none if that cannot be told."""
    model: Any = config_model()
    parts = list(loc)
    if parts and parts[0] in CATEGORIES:
        known = plugins.registered(str(parts[0]))
        kind = parts[1] if len(parts) > 1 and parts[1] in known else None
        if len(known) == 1:
            kind = next(iter(known))
        return set(known[kind].model_fields) if kind is not None else set()
    if parts and parts[0] == "launcher":
        launchers: dict[str, type[Settings]] = {"local": LocalLauncher, "ray": RayLauncher}
        chosen = launchers.get(str(parts[1])) if len(parts) == 2 else None
        return set(chosen.model_fields) if chosen is not None else set()
    if parts:
        field = model.model_fields.get(str(parts[0]))
        annotation = getattr(field, "annotation", None)
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        models = [a for a in nested if issubclass(a, Settings)]
        return set(models[0].model_fields) if len(parts) == 1 and models else set()
    return set(model.model_fields)


def _did_you_mean(error: Any) -> str:
    """`` (did you mean 'degree'?)`` for an unknown key or kind close to a known one."""
    if error["type"] == "extra_forbidden" and error["loc"]:
        typed, known = str(error["loc"][-1]), _fields_at(error["loc"][:-1])
    elif error["type"] == "union_tag_invalid":
        ctx = error.get("ctx", {})
        typed, known = (
            str(ctx.get("tag", "")),
            set(re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))),
        )
    else:
        return ""
    close = difflib.get_close_matches(typed, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where, msg = _field_path(e["loc"]), e["msg"].removeprefix("Value error, ")
        # A table's own check naming one of its fields ("degree: expected a number..."):
        # the field's whole path, as the TOML says it.
        head, sep, rest = msg.partition(": ")
        if sep and head.isidentifier() and head in _fields_at(e["loc"]):
            where = head if where == "(top level)" else f"{where}.{head}"
            msg = rest
        lines.append(f"  {where}: {msg}{_did_you_mean(e)}{_broken_plugins(e)}")
    return "invalid config:\n" + "\n".join(lines)


def _broken_plugins(error: Any) -> str:
    """For a kind that is not registered, the installed plugins that failed to import (one
    of them may be what would have registered it)."""
    loc = error["loc"]
    unknown_kind = error["type"] == "union_tag_invalid" or (
        error["type"] == "literal_error" and len(loc) == 2 and loc[1] == "kind"
    )
    if not unknown_kind or not loc or loc[0] not in CATEGORIES:
        return ""
    return plugins.broken_note()


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` settings (values parsed as TOML, else taken as strings).

    Setting a table's ``kind`` to another kind starts that table afresh (the old kind's
    settings would not fit the new one); later ``--set`` items can fill it in.
    """
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set nodes=32")
        *parents, leaf = [p.strip() for p in key.split(".")]
        target = reduce(lambda d, k: d.setdefault(k, {}), parents, out)
        if not isinstance(target, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parents)} is not a table")
        value = _parse_value(raw.strip())
        if leaf == "kind" and target.get("kind") != value:
            target.clear()
        target[leaf] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _load_plugins(data: dict[str, Any], base_dir: Path | None) -> type[RunConfigBase]:
    """Import the installed plugins and those ``data`` lists; the run-config model then."""
    plugin_specs = data.get("plugins", [])
    if not isinstance(plugin_specs, list) or not all(isinstance(s, str) for s in plugin_specs):
        raise ConfigError(
            "invalid config:\n  plugins: expected a list of module names or .py paths"
        )
    try:
        plugins.load_plugins(plugin_specs, base_dir)
        return config_model()
    except plugins.PluginError as exc:
        raise ConfigError(f"invalid config:\n  plugins: {exc}") from exc


def load_config_plugins(path: Path) -> None:
    """Import the plugins a config file lists (and the installed ones), without validating
    the rest of it: ConfigError if it cannot be read or a plugin fails."""
    _load_plugins(_read_toml(path), path.resolve().parent)


def validate_config(data: dict[str, Any], base_dir: Path | None = None) -> RunConfig:
    """Load the plugins the data names, then validate it against the registry's model."""
    model = _load_plugins(data, base_dir)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    _check_clashes(cfg)
    cfg = _resolve_paths(cfg, base_dir)
    _read_files(cfg)
    _check_algorithm(cfg, frozenset(k for k in data if k in CATEGORIES))
    return cfg  # type: ignore[return-value]


def _check_clashes(cfg: RunConfigBase) -> None:
    """A config whose kind an installed plugin failed to register, another class having it
    already, cannot tell which of the two it means: refused naming the plugin."""
    for plugin in plugins.broken():
        if plugin.clash is None:
            continue
        category, kind = plugin.clash
        if getattr(getattr(cfg, category, None), "kind", None) == kind:
            raise ConfigError(
                f"invalid config:\n  {category}.kind: {kind!r} has two meanings: {plugin}"
            )


def _resolve_paths(cfg: RunConfigBase, base_dir: Path | None) -> RunConfigBase:
    if base_dir is None:
        return cfg
    update = {}
    for category in (*CATEGORIES, "network", "availability"):
        settings = getattr(cfg, category, None)
        if isinstance(settings, Settings):
            resolved = settings.resolve(base_dir)
            if resolved is not settings:
                update[category] = resolved
    return cfg.model_copy(update=update) if update else cfg


def _read_files(cfg: RunConfigBase) -> None:
    """Read the files the config names (a graph file) now, so that their errors name the
    field; a file's content is never quoted (a path may name any file, secrets included)."""
    for category in (*CATEGORIES, "network", "availability"):
        settings = getattr(cfg, category, None)
        if isinstance(settings, Settings):
            try:
                settings.read_files(cfg)
            except FieldError as exc:
                raise ConfigError(f"invalid config:\n  {category}.{exc.field}: {exc}") from exc


def field_path(table: str, field: str) -> str:
    """A field a hook of ``table`` named, as the TOML spells it: as given when it starts at
    the config's top level (``sharing.kind``, ``topology``), else ``table.field``."""
    top = field.split(".", 1)[0]
    return field if top in RunConfigBase.model_fields or top in CATEGORIES else f"{table}.{field}"


def _check_algorithm(cfg: RunConfigBase, given: frozenset[str]) -> None:
    """The algorithm's verdict on the rest of the config (a topology given to FedAvg...)."""
    algorithm = getattr(cfg, "algorithm", None)
    if not isinstance(algorithm, AlgorithmSettings):
        return
    try:
        algorithm.check(cfg, given)
        check_churn(cfg)
    except FieldError as exc:
        raise ConfigError(
            f"invalid config:\n  {field_path('algorithm', exc.field)}: {exc}"
        ) from exc


def _read_config_text(path: Path) -> str:
    """The config file's text, if it is a regular UTF-8 file of at most MAX_CONFIG_BYTES."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: {st.st_size:,} bytes, more than a config may have ({MAX_CONFIG_BYTES:,})"
            )
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than a config may have ({MAX_CONFIG_BYTES:,} bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _unquoted(message: str) -> str:
    """A TOML error without the file's text: quoted keys and characters become '...', short
    punctuation such as '=' stays."""
    return re.sub(
        r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"",
        lambda m: m[0] if re.fullmatch(r".[^\w\s]{1,3}.", m[0]) else "'...'",
        message,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_config_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_unquoted(str(exc))}") from exc


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """TOML file + ``--set`` overrides -> a validated config, or ConfigError."""
    data = apply_overrides(_read_toml(path), overrides or [])
    return validate_config(data, base_dir=path.resolve().parent)
