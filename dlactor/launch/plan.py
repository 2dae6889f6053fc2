"""From a validated config to everything the nodes are built from, made once, before forking."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import random
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from dlactor.checkpoint.files import load_node
from dlactor.churn.availability import Availability
from dlactor.config import ConfigError, FieldError, LocalLauncher, RunConfig, field_path
from dlactor.context import NodeEnv, Service, ServiceEnv
from dlactor.data.base import Dataset
from dlactor.network.model import NetworkModel
from dlactor.node.node import Node, Record
from dlactor.security.credentials import RunKeys
from dlactor.training.models import count_parameters, parameter_bytes
from dlactor.transport.base import Deliver, Transport
from dlactor.transport.emulated import EmulatedTransport
from dlactor.wire.codec import MAX_HEADER
from dlactor.wire.framing import PREFIX_LEN

__all__ = [
    "Plan",
    "build_node",
    "build_service",
    "import_optimizers",
    "make_plan",
    "process_count",
    "uses_tls",
]


@dataclass(frozen=True)
class Plan:
    """The run's shared, read-only state: graph, data, partitions, initial model, keys.

    ``keys`` holds every process's key pair when the launcher makes them (the local backend:
    each forked node keeps its own and drops the rest), or only the launcher's and the
    public ring (Ray: each node makes its own).
    """

    config: RunConfig
    graph: nx.Graph
    dataset: Dataset
    parts: list[np.ndarray]
    model: torch.nn.Module
    keys: RunKeys
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    #: The emulated network (``[network]``), the same in every process; None without one.
    network: NetworkModel | None = None
    #: Which learning nodes are online in each round (``[availability]``); None: all.
    availability: Availability | None = None
    #: A resumed run: the round of the checkpoint every process starts from (None: round 0),
    #: and the records' wall time up to it (the resumed records' ``t_wall`` continue it).
    resume_round: int | None = None
    resume_wall_s: float = 0.0

    @property
    def services(self) -> int:
        """Processes beside the nodes: the topology's services (ids ``nodes``...), then the
        algorithm's servers."""
        return process_count(self.config) - self.config.nodes

    @property
    def processes(self) -> int:
        """Every process of the run: the learning nodes, then the services."""
        return process_count(self.config)

    @property
    def servers(self) -> range:
        """The algorithm's server processes (a FedAvg server): after the topology's services."""
        return range(self.processes - self.config.algorithm.servers, self.processes)

    def role(self, process: int) -> str:
        """How to name a process in messages: "node 3", "peer sampler (process 16)"."""
        if process < self.config.nodes:
            return f"node {process}"
        if process in self.servers:
            return f"{self.config.algorithm.kind} server (process {process})"
        return f"{self.config.topology.kind} service (process {process})"

    @property
    def model_params(self) -> int:
        return count_parameters(self.model)

    @property
    def model_bytes(self) -> int:
        return parameter_bytes(self.model)

    @property
    def max_frame(self) -> int:
        """The largest frame a process of this run accepts from another that has proven who
        it is: a payload as big as the sharing strategy can make for this model, or a header
        as big as the wire allows (overlay messages, the address book), with room for both."""
        payload = self.config.sharing.max_payload_bytes(self.model_bytes)
        return PREFIX_LEN + MAX_HEADER + payload


def process_count(config: RunConfig) -> int:
    """The run's processes: the learning nodes, the topology's services (when the algorithm
    has a topology), the algorithm's servers."""
    algorithm = config.algorithm
    services = config.topology.services if algorithm.needs_topology(config) else 0
    return config.nodes + services + algorithm.servers


def uses_tls(config: RunConfig) -> bool:
    """``security.tls``, with "auto" resolved: on under Ray, and when nodes listen on an
    address other than loopback."""
    if config.security.tls != "auto":
        return config.security.tls == "on"
    launcher = config.launcher
    return not isinstance(launcher, LocalLauncher) or not _is_loopback(launcher.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_plan(config: RunConfig) -> Plan:
    """Build the graph, load and partition the data, build the initial model.

    Problems the config could not see alone (a graph file's line, too few samples for the
    partition, a degree too large for the node count, a model that does not fit the data)
    become ConfigError (exit 2).
    """
    with _field("topology"):
        graph = _graph(config)
    with _field("sharing"):
        config.sharing.check(config)
        if config.algorithm.needs_topology(config):
            config.sharing.check_graph(graph, config)
    with _field("data"):
        dataset = _subsample_test(config.data.load(config.seed), config)
    with _field("partition"):
        parts = config.partition.split(dataset, config.nodes, config.seed)
    with _field("model"):
        model = _build_model(config, dataset)
    with _field("network"):
        network = _network(config)
    with _field("availability"):
        availability = _availability(config)
    if config.launcher.kind == "local":  # this process is the template nodes fork from
        import_optimizers()
    plan = Plan(
        config,
        graph,
        dataset,
        parts,
        model,
        _make_keys(config),
        network=network,
        availability=availability,
    )
    if uses_tls(config):
        plan.keys.enable_tls(plan.run_id)
    return plan


def _graph(config: RunConfig) -> nx.Graph:
    """The topology's graph at round 0 (no edges for an algorithm without a topology)."""
    if not config.algorithm.needs_topology(config):
        graph = nx.Graph()
        graph.add_nodes_from(range(config.nodes))
        return graph
    graph = config.topology.graph(config.nodes, config.seed)
    if sorted(graph.nodes) != list(range(config.nodes)):
        raise ValueError(
            f"the graph's nodes are not 0..{config.nodes - 1} (nodes = {config.nodes})"
        )
    config.topology.check(graph, config.rounds)
    config.algorithm.check_graph(graph)
    return graph


def _network(config: RunConfig) -> NetworkModel | None:
    """The emulated network every process of the run shares, if the config has one."""
    if config.network is None:
        return None
    try:
        files = config.network.load(config.nodes)
    except FieldError as exc:
        raise FieldError(f"network.{exc.field}", str(exc)) from exc
    return NetworkModel(
        config.network,
        nodes=config.nodes,
        processes=process_count(config),
        seed=config.seed,
        files=files,
    )


def _availability(config: RunConfig) -> Availability | None:
    """The availability schedule every process of the run shares, if the config has one."""
    if config.availability is None:
        return None
    try:
        return config.availability.load(config.nodes, config.rounds, config.seed)
    except FieldError as exc:
        raise FieldError(f"availability.{exc.field}", str(exc)) from exc


def _make_keys(config: RunConfig) -> RunKeys:
    """Every process's key pair for forked nodes; under Ray, only the launcher's (each node
    makes its own, and the backend adds the public keys)."""
    if isinstance(config.launcher, LocalLauncher):
        return RunKeys.make(range(process_count(config)))
    return RunKeys.make()


def _subsample_test(dataset: Dataset, config: RunConfig) -> Dataset:
    """The same seeded subset of the test set for every node (``evaluation.test_samples``)."""
    k = config.evaluation.test_samples
    if k is None or k >= len(dataset.y_test):
        return dataset
    gen = torch.Generator().manual_seed(config.seed)
    idx = torch.randperm(len(dataset.y_test), generator=gen)[:k].sort().values
    return dataclasses.replace(dataset, x_test=dataset.x_test[idx], y_test=dataset.y_test[idx])


def _build_model(config: RunConfig, dataset: Dataset) -> torch.nn.Module:
    """The initial model, checked by a forward pass on one training sample: a model whose
    shapes do not fit the data (a CNN sized for other images) fails here, named as the
    ``model`` setting, rather than in every node's first training step."""
    model = config.model.build(dataset, config.seed)
    was_training = model.training
    model.eval()  # one sample: batch-statistics layers would refuse it in training mode
    try:
        with torch.no_grad():
            model(dataset.x_train[:1])
    except (RuntimeError, IndexError) as exc:
        what = f"{config.model.kind} does not fit {dataset.name}'s inputs"
        raise ValueError(f"{what}: {exc}") from exc
    finally:
        model.train(was_training)
    return model


@contextmanager
def _field(name: str) -> Iterator[None]:
    """Turn a ValueError/OSError raised while building ``name`` into a ConfigError naming it
    (or naming the field a FieldError names, relative to ``name`` unless it starts at the
    config's top level)."""
    try:
        yield
    except FieldError as exc:
        raise ConfigError(f"invalid config:\n  {field_path(name, exc.field)}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(f"invalid config:\n  {name}: {exc}") from exc


def import_optimizers() -> None:
    """Make the process nodes are forked from import what the first optimizer imports,
    torch._dynamo (~150 MB, ~1 s), before the plan's own objects are made (the local
    launcher: as it makes the plan; a Ray agent: as it starts). ``warm_up_node`` would
    import it anyway, but done first, a forked node holds 0.65 MiB less (12.38 against
    13.03 MiB, experiments/bench/node_memory.py): where the template's objects lie decides
    how many of its pages a node writes to.

    Ray's driver forks nothing and skips it: there it only held more, 4 MiB per node at 16
    nodes (docs/scaling.md)."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


def warm_up_node(plan: Plan) -> None:
    """Do once, before forking, what every forked node would otherwise do first for itself:
    build a learning node's strategies (importing their modules) and train its model for a
    round, on a copy (torch's first backward pass and optimizer step import and set up parts
    of torch). A page of the template that a node writes becomes that node's own: a node
    that imported and set up these itself held about 5 MiB more, and spent start-up CPU on
    it. The random generators' states are put back: the nodes draw what they drew before."""
    cfg = plan.config
    env = node_env(plan, 0, copy.deepcopy(plan.model))
    with _random_state_kept():
        cfg.sharing.build(env)
        cfg.algorithm.build(env)
        trainer = cfg.training.build(env)
        train_steps = getattr(trainer, "train_steps", None)
        if callable(train_steps):
            train_steps()


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """torch's, numpy's and Python's global random states, as they were before."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def node_env(plan: Plan, node: int, model: torch.nn.Module) -> NodeEnv:
    """What process ``node``'s strategies are built from (a server has no training samples)."""
    cfg = plan.config
    learner = node < cfg.nodes
    return NodeEnv(
        node=node,
        nodes=cfg.nodes,
        seed=cfg.seed,
        graph=plan.graph,
        dataset=plan.dataset,
        train_indices=plan.parts[node] if learner else np.zeros(0, dtype=np.int64),
        model=model,
        rounds=cfg.rounds,
        round_timeout=cfg.launcher.round_timeout_s,
        parts=plan.parts,
        servers=plan.servers,
        config=cfg,
        run_id=plan.run_id,
        availability=plan.availability,
    )


def build_service(plan: Plan, process: int, transport: Callable[[Deliver], Transport]) -> Service:
    """The actor of topology service process ``process`` (the peer sampler)."""
    cfg = plan.config
    env = ServiceEnv(
        process=process,
        nodes=cfg.nodes,
        seed=cfg.seed,
        rounds=cfg.rounds,
        transport=emulated(plan, process, transport),
        availability=plan.availability,
    )
    return cfg.topology.service(env)


def emulated(
    plan: Plan, process: int, transport: Callable[[Deliver], Transport]
) -> Callable[[Deliver], Transport]:
    """``transport`` through the plan's emulated network, on a clock of the process's own
    (``transport`` as it is without one)."""
    network = plan.network
    if network is None:
        return transport
    return partial(
        EmulatedTransport,
        transport,
        process=process,
        model=network,
        clock=network.clock(process),
    )


def build_node(
    plan: Plan,
    node: int,
    transport: Callable[[Deliver], Transport],
    *,
    model: torch.nn.Module | None = None,
    on_round: Callable[[Record], None] | None = None,
    run_dir: Path | None = None,
) -> Node:
    """Process ``node`` of this plan: a learning node, or one of the algorithm's servers.
    ``model`` defaults to the plan's own (right in a forked process, where it is this
    process's private copy); in-process tests pass a copy per node. With ``run_dir``, it
    takes checkpoints there (``[checkpoint]``), and a resumed plan's node starts from its
    checkpoint there."""
    cfg = plan.config
    env = node_env(plan, node, plan.model if model is None else model)
    sharing = cfg.sharing.build(env)
    if cfg.sharing.compression != "none":
        from dlactor.sharing.lossless import Lossless

        # what a peer may make us inflate: as much as the strategy could send uncompressed
        bound = cfg.sharing.max_payload_bytes(plan.model_bytes)
        sharing = Lossless(sharing, cfg.sharing.compression, bound)
    server = node in plan.servers
    algorithm = cfg.algorithm.server(env) if server else cfg.algorithm.build(env)
    built = Node(
        node=node,
        transport=emulated(plan, node, transport),
        topology=None
        if server or not cfg.algorithm.needs_topology(cfg)
        else cfg.topology.build(env),
        sharing=sharing,
        trainer=cfg.training.evaluator(env) if server else cfg.training.build(env),
        model=env.model,
        rounds=cfg.rounds,
        eval_every=cfg.evaluation.every,
        round_timeout=cfg.launcher.round_timeout_s,
        on_round=on_round,
        nodes=cfg.nodes,
        allow_nonfinite=cfg.security.allow_nonfinite,
        algorithm=algorithm,
        processes=plan.processes,
        lookahead=cfg.algorithm.lookahead(cfg),
        availability=plan.availability,
        survive=cfg.launcher.on_node_failure == "continue",
        checkpoint_every=cfg.checkpoint.every,
        run_dir=run_dir,
    )
    if plan.resume_round is not None:
        if run_dir is None:
            raise ValueError("a resumed plan's nodes need the run directory")
        load_node(built, run_dir, plan.resume_round)
        built.t_wall_offset = plan.resume_wall_s
    return built
