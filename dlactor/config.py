"""Run configuration: pydantic models loaded from TOML, strategies chosen by ``kind``.

Each strategy category (topology, sharing, training, model, data, partition) is a
discriminated union on ``kind`` over the settings models registered for it
(built-ins below, plugins through :mod:`dlactor.plugins`). Settings are frozen and
reject unknown keys; a settings model builds its strategy (``build``), so node code
never parses strings. :func:`load_config` is the one entry point: TOML + ``--set``
overrides + plugins -> a validated :class:`RunConfig`, or a :class:`ConfigError`
whose message names every bad field.
"""

from __future__ import annotations

import importlib.util
import re
import stat
import tomllib
from functools import lru_cache, reduce
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import networkx as nx
import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from dlactor import plugins
from dlactor.plugins import register
from dlactor.topology.graphs import MAX_EDGES, MAX_NODES, check_size

if TYPE_CHECKING:
    from dlactor.data.base import Dataset
    from dlactor.node.context import NodeEnv, Service, ServiceEnv
    from dlactor.sharing.base import Sharing
    from dlactor.topology.base import Topology
    from dlactor.training.base import Trainer

__all__ = [
    "CATEGORIES",
    "ConfigError",
    "DataSettings",
    "LauncherSettings",
    "LocalLauncher",
    "ModelSettings",
    "PartitionSettings",
    "RayLauncher",
    "RunConfig",
    "SharingSettings",
    "TopologySettings",
    "TrainingSettings",
    "apply_overrides",
    "load_config",
    "validate_config",
]


class ConfigError(ValueError):
    """The config is invalid; the message names the field(s). The CLI exits 2 on it."""


class Settings(BaseModel):
    # No setting means anything at inf or nan (TOML has both): every float must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
_EDGES = f"nodes x degree / 2 <= {MAX_EDGES:,} edges"


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


NodeId = Annotated[int, Field(ge=0, lt=MAX_NODES)]
Edge = tuple[NodeId, NodeId]


class EdgeChange(Settings):
    """Edges added and removed at the start of a round (``[[topology.schedule]]``)."""

    round: int = Field(
        ge=1, le=MAX_ROUNDS, description="the first round that runs on the changed graph"
    )
    add: list[Edge] = Field(default_factory=list)
    remove: list[Edge] = Field(default_factory=list)


class StaticSettings(TopologySettings):
    """A graph fixed in advance; with a ``schedule``, one that changes at given rounds."""

    schedule: list[EdgeChange] = Field(
        default_factory=list, description="edges added or removed at given rounds"
    )

    @field_validator("schedule")
    @classmethod
    def _one_change_per_round(cls, schedule: list[EdgeChange]) -> list[EdgeChange]:
        rounds = [c.round for c in schedule]
        if len(set(rounds)) != len(rounds):
            raise ValueError("two changes for the same round: merge them into one")
        return sorted(schedule, key=lambda c: c.round)

    def check(self, graph: nx.Graph, rounds: int) -> None:
        from dlactor.topology.static import check_schedule

        check_schedule(graph, self._changes(), rounds)

    def _changes(self) -> dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
        return {c.round: (list(c.add), list(c.remove)) for c in self.schedule}

    def build(self, env: NodeEnv) -> Topology:
        from dlactor.topology.static import StaticTopology

        return StaticTopology(graph=env.graph, changes=self._changes())


@register("topology")
class RingTopology(StaticSettings):
    kind: Literal["ring"] = "ring"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import ring

        return ring(nodes)


@register("topology")
class RegularTopology(StaticSettings):
    kind: Literal["regular"] = "regular"
    degree: int = Field(4, ge=1, lt=MAX_NODES, description=f"every node's degree ({_EDGES})")

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import regular

        return regular(nodes, self.degree, seed)


@register("topology")
class CompleteTopology(StaticSettings):
    kind: Literal["complete"] = "complete"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import complete

        return complete(nodes)


@register("topology")
class SmallWorldTopology(StaticSettings):
    kind: Literal["small_world"] = "small_world"
    k: int = Field(
        4, ge=2, lt=MAX_NODES, description=f"each node's ring neighbours before rewiring ({_EDGES})"
    )
    p: float = Field(0.1, ge=0.0, le=1.0, description="rewiring probability")

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import small_world

        return small_world(nodes, self.k, self.p, seed)


@register("topology")
class ErdosRenyiTopology(StaticSettings):
    kind: Literal["erdos_renyi"] = "erdos_renyi"
    p: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description=f"edge probability (expected edges p x nodes x (nodes-1) / 2 <= {MAX_EDGES:,})",
    )

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import erdos_renyi

        return erdos_renyi(nodes, self.p, seed)


@register("topology")
class FileTopology(StaticSettings):
    kind: Literal["file"] = "file"
    path: Path = Field(
        description="graph file, read when the config is: a regular file of at most "
        "dlactor.topology.graphs.max_file_bytes(nodes) bytes (1 MiB plus twice the edge list "
        "of the densest graph allowed; 219 MB at 65,536 nodes), whose header must say `nodes`"
    )
    format: Literal["auto", "edges", "adjacency"] = "auto"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        return _read_graph_file(self.path, self.format, nodes, _file_stamp(self.path))


def _file_stamp(path: Path) -> tuple[int, ...]:
    """A file's identity and version: what makes a cached read of it still good."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=1)
def _read_graph_file(
    path: Path, fmt: Literal["auto", "edges", "adjacency"], nodes: int, stamp: tuple[int, ...]
) -> nx.Graph:
    """Read once when the config is validated; the plan gets the same graph, not a re-read."""
    from dlactor.topology.graphs import read_graph_file

    return read_graph_file(path, fmt, n=nodes)


@register("topology")
class DynamicRegularTopology(TopologySettings):
    """A fresh random d-regular graph every round, drawn by every node itself from the seed
    (no messages: all nodes draw the same graph)."""

    kind: Literal["dynamic_regular"] = "dynamic_regular"
    degree: int = Field(
        5, ge=1, lt=MAX_NODES, description=f"every node's degree, in every round ({_EDGES})"
    )

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.dynamic import random_regular_at

        check_size(nodes, nodes * self.degree // 2, f"a {self.degree}-regular graph")
        return random_regular_at(nodes, self.degree, seed, 0)

    def build(self, env: NodeEnv) -> Topology:
        from dlactor.topology.dynamic import RandomRegularDynamic

        return RandomRegularDynamic(nodes=env.nodes, degree=self.degree, seed=env.seed)


@register("topology")
class PeerSamplerTopology(DynamicRegularTopology):
    """A fresh random d-regular graph every round, drawn by a peer-sampler process that
    tells each node its neighbours (decentralizepy's dynamic topology)."""

    kind: Literal["peer_sampler"] = "peer_sampler"  # type: ignore[assignment]
    services: ClassVar[int] = 1

    def build(self, env: NodeEnv) -> Topology:
        from dlactor.topology.sampler import SampledTopology

        return SampledTopology(
            node=env.node,
            nodes=env.nodes,
            sampler=env.nodes,
            rounds=env.rounds,
            timeout=env.round_timeout,
        )

    def service(self, env: ServiceEnv) -> Service:
        from dlactor.topology.sampler import PeerSampler

        return PeerSampler(
            node=env.process,
            nodes=env.nodes,
            degree=self.degree,
            seed=env.seed,
            rounds=env.rounds,
            transport=env.transport,
        )


@register("topology")
class GossipTopologySettings(TopologySettings):
    """No sampler: each node runs Cyclon gossip peer sampling and agrees up to ``degree``
    neighbours a round from its view (dlactor.topology.gossip)."""

    kind: Literal["gossip"] = "gossip"
    degree: int = Field(
        5, ge=1, lt=MAX_NODES, description="the most neighbours a node has in a round"
    )
    view_size: int = Field(
        16,
        ge=1,
        lt=MAX_NODES,
        description=f"entries in each node's Cyclon view (nodes x view_size / 2 <= {MAX_EDGES:,})",
    )
    shuffle_length: int = Field(6, ge=1, lt=MAX_NODES, description="entries exchanged per shuffle")

    @model_validator(mode="after")
    def _fits(self) -> GossipTopologySettings:
        if self.shuffle_length > self.view_size:
            raise ValueError(
                f"shuffle_length ({self.shuffle_length}) must be <= view_size ({self.view_size})"
            )
        return self

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        """The bootstrap views, as a graph: each node starts knowing its ring neighbours."""
        from dlactor.topology.gossip import bootstrap_contacts

        if not 1 <= self.degree < nodes:
            raise ValueError(f"degree must be in [1, nodes) = [1, {nodes}), got {self.degree}")
        contacts = min(self.view_size, nodes - 1)
        check_size(nodes, nodes * contacts // 2, f"bootstrap views of {contacts} contacts")
        graph = nx.Graph()
        graph.add_nodes_from(range(nodes))
        for i in range(nodes):
            graph.add_edges_from((i, j) for j in bootstrap_contacts(i, nodes, self.view_size))
        return graph

    def build(self, env: NodeEnv) -> Topology:
        from dlactor.topology.gossip import GossipTopology, bootstrap_contacts

        return GossipTopology(
            node=env.node,
            nodes=env.nodes,
            degree=self.degree,
            view_size=self.view_size,
            shuffle_length=self.shuffle_length,
            seed=env.seed,
            rounds=env.rounds,
            contacts=bootstrap_contacts(env.node, env.nodes, self.view_size),
            timeout=env.round_timeout,
        )


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

    def max_payload_bytes(self, model_bytes: int) -> int:
        """The most bytes of tensors one payload can hold for a model of ``model_bytes``: the
        largest frame a peer may announce follows from it (``Plan.max_frame``). The built-in
        strategies' largest is 2.25x the model (8-bit codes plus 8 bytes of scales per
        parameter, at bucket_size 1); a plugin that sends more says so here."""
        return 3 * model_bytes + (64 << 10)

    def build(self, env: NodeEnv) -> Sharing:
        raise NotImplementedError


@register("sharing")
class FullSharingSettings(SharingSettings):
    kind: Literal["full"] = "full"

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.full import FullSharing

        return FullSharing()


Budget = Annotated[float, Field(gt=0.0, le=1.0, description="fraction of parameters sent")]


@register("sharing")
class RandomSharingSettings(SharingSettings):
    """A random ``budget`` of the parameters each round; only the mask's seed travels."""

    kind: Literal["random"] = "random"
    budget: Budget = 0.1

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.random import RandomSharing

        return RandomSharing(budget=self.budget, seed=env.seed, node=env.node)


def _layer_sizes(model: torch.nn.Module) -> list[int]:
    return [p.numel() for p in model.parameters()]


@register("sharing")
class TopKSharingSettings(SharingSettings):
    """The ``budget`` of parameters that changed most, with compact indices."""

    kind: Literal["topk"] = "topk"
    budget: Budget = 0.1
    per_layer: bool = Field(False, description="each layer sends its share of the budget")
    error_feedback: bool = Field(
        True, description="rank by change since last shared (else: since last round)"
    )

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.topk import TopKSharing

        layers = _layer_sizes(env.model) if self.per_layer else None
        return TopKSharing(budget=self.budget, layers=layers, error_feedback=self.error_feedback)


def _quantizer_seed(env: NodeEnv) -> int:
    """Each node's own stream of stochastic-rounding noise, fixed by the run's seed."""
    return env.seed * 1_000_003 + env.node


@register("sharing")
class QuantizeSharingSettings(SharingSettings):
    """The whole model, stochastically quantized to ``bits`` bits (QSGD-style)."""

    kind: Literal["quantize"] = "quantize"
    bits: int = Field(8, ge=1, le=8)
    bucket_size: int | None = Field(
        512,
        ge=1,
        le=MAX_BUCKET,
        description="elements per scale, at most 2**20: a tensor is padded to whole buckets "
        "(None: one bucket per tensor)",
    )

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.quantize import QuantizeSharing

        seed = _quantizer_seed(env)
        return QuantizeSharing(bits=self.bits, bucket_size=self.bucket_size, seed=seed)


@register("sharing")
class ChocoSettings(SharingSettings):
    """CHOCO-SGD: compressed differences to public estimates, consensus step ``gamma``."""

    kind: Literal["choco"] = "choco"
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="consensus step size")
    compressor: Literal["topk", "random", "quantize"] = "topk"
    budget: Budget = 0.1
    bits: int = Field(8, ge=1, le=8, description="for compressor = quantize")
    bucket_size: int | None = Field(
        512,
        ge=1,
        le=MAX_BUCKET,
        description="elements per scale, at most 2**20: a tensor is padded to whole buckets "
        "(None: one bucket per tensor)",
    )

    def check(self, config: RunConfigBase) -> None:
        topology = getattr(config, "topology", None)
        if not isinstance(topology, StaticSettings) or topology.schedule:
            kind = getattr(topology, "kind", "?")
            raise ValueError(
                "choco keeps sum_j w_ij xhat_j for a fixed set of neighbours: it needs a "
                f"static topology without a schedule, not {kind!r}"
            )

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.choco import ChocoSharing
        from dlactor.sharing.compressors import Compressor, Quantizer, RandomK, TopK

        compressor: Compressor
        if self.compressor == "topk":
            compressor = TopK(budget=self.budget)
        elif self.compressor == "random":
            compressor = RandomK(budget=self.budget, seed=env.seed, node=env.node)
        else:
            compressor = Quantizer(
                bits=self.bits, bucket_size=self.bucket_size, seed=_quantizer_seed(env)
            )
        return ChocoSharing(compressor=compressor, gamma=self.gamma)


# --- training ---------------------------------------------------------------------------


class TrainingSettings(Settings):
    kind: str

    def build(self, env: NodeEnv) -> Trainer:
        raise NotImplementedError


@register("training")
class SGDSettings(TrainingSettings):
    kind: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, ge=0.0, description="learning rate (0: pure gossip averaging)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    local_steps: int = Field(
        10, ge=1, le=MAX_STEPS, description="minibatch steps per round (at most 1,000,000)"
    )
    batch_size: int = Field(
        16,
        ge=1,
        le=MAX_BATCH,
        description="samples per step (at most 65,536; capped at the node's)",
    )

    def build(self, env: NodeEnv) -> Trainer:
        from dlactor.training.sgd import SGDTrainer

        ds = env.dataset
        return SGDTrainer(
            model=env.model,
            x=ds.x_train,
            y=ds.y_train,
            indices=torch.from_numpy(env.train_indices).to(torch.int64),
            x_test=ds.x_test,
            y_test=ds.y_test,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            seed=env.seed * 100_003 + env.node,
            task=ds.task,
        )


# --- model ------------------------------------------------------------------------------


class ModelSettings(Settings):
    kind: str

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        raise NotImplementedError


def _features(dataset: Dataset) -> int:
    return int(np.prod(dataset.input_shape))


def _check_parameters(count: int, what: str) -> None:
    """Refuse, before anything is allocated, a model beyond MAX_PARAMETERS."""
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{what} make {count:,} parameters, more than the {MAX_PARAMETERS:,} a model may "
            "have (8 GiB of float32 per node)"
        )


def _mlp_parameters(widths: list[int]) -> int:
    return sum(a * b + b for a, b in pairwise(widths))


@register("model")
class MLPSettings(ModelSettings):
    kind: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [64],
        max_length=1024,
        description="hidden layer widths: at most 1,024 layers of at most 2**20 units, and "
        "at most 2**31 parameters in all",
    )

    @field_validator("hidden")
    @classmethod
    def _fits(cls, hidden: list[int]) -> list[int]:
        _check_parameters(_mlp_parameters(hidden), "the hidden layers alone")
        return hidden

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import mlp

        widths = [_features(dataset), *self.hidden, dataset.num_classes]
        _check_parameters(_mlp_parameters(widths), f"hidden = {self.hidden} on {dataset.name}")
        torch.manual_seed(seed)
        return mlp(_features(dataset), dataset.num_classes, self.hidden)


@register("model")
class LogisticRegressionSettings(ModelSettings):
    kind: Literal["logreg"] = "logreg"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import logistic_regression

        torch.manual_seed(seed)
        return logistic_regression(_features(dataset), dataset.num_classes)


def _channels(dataset: Dataset) -> int:
    if len(dataset.input_shape) != 3:
        raise ValueError(
            f"a CNN needs (channels, height, width) images; {dataset.name} has "
            f"input shape {dataset.input_shape}"
        )
    return dataset.input_shape[0]


@register("model")
class LeNet5Settings(ModelSettings):
    kind: Literal["lenet5"] = "lenet5"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import lenet5

        torch.manual_seed(seed)
        return lenet5(dataset.num_classes, _channels(dataset))


@register("model")
class GNLeNetSettings(ModelSettings):
    """The reference paper's CIFAR-10 model (GroupNorm LeNet)."""

    kind: Literal["gn_lenet"] = "gn_lenet"

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import gn_lenet

        torch.manual_seed(seed)
        return gn_lenet(dataset.num_classes, _channels(dataset))


@register("model")
class CharLSTMSettings(ModelSettings):
    """LEAF's Shakespeare baseline: embedding, stacked LSTM, next-character logits."""

    kind: Literal["char_lstm"] = "char_lstm"
    embed: int = Field(8, ge=1, le=1 << 16, description="at most 65,536")
    hidden: int = Field(256, ge=1, le=1 << 16, description="at most 65,536")
    layers: int = Field(
        2, ge=1, le=1024, description="at most 1,024; at most 2**31 parameters in all"
    )

    def parameters(self, vocab: int) -> int:
        h = self.hidden
        stack = 4 * h * (self.embed + h) + 8 * h + (self.layers - 1) * (8 * h * h + 8 * h)
        return vocab * self.embed + stack + h * vocab + vocab

    @model_validator(mode="after")
    def _fits(self) -> CharLSTMSettings:
        _check_parameters(self.parameters(2), "embed, hidden and layers")
        return self

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.training.models import char_lstm

        if dataset.vocab <= 0:
            raise ValueError(f"char_lstm needs character inputs; {dataset.name} has none")
        _check_parameters(
            self.parameters(dataset.vocab), f"embed, hidden, layers on {dataset.name}"
        )
        torch.manual_seed(seed)
        return char_lstm(dataset.vocab, self.embed, self.hidden, self.layers)


@register("model")
class MatrixFactorizationSettings(ModelSettings):
    """Rating = <user, item> + biases, for MovieLens."""

    kind: Literal["mf"] = "mf"
    dim: int = Field(20, ge=1, le=1 << 16, description="factors per user and item (<= 65,536)")

    def build(self, dataset: Dataset, seed: int) -> torch.nn.Module:
        from dlactor.data.movielens import movielens_sizes
        from dlactor.training.models import matrix_factorization

        n_users, n_items = movielens_sizes(dataset)
        _check_parameters((n_users + n_items) * (self.dim + 1) + 1, f"dim on {dataset.name}")
        torch.manual_seed(seed)
        return matrix_factorization(n_users, n_items, self.dim, item_offset=n_users)


# --- data -------------------------------------------------------------------------------


class PartitionSettings(Settings):
    kind: str

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        """Training-sample indices for each node."""
        raise NotImplementedError


def _labels(dataset: Dataset) -> np.ndarray:
    if dataset.task != "classification":
        raise ValueError(f"{dataset.name} has no class labels: use iid or natural")
    return dataset.y_train.numpy()


@register("partition")
class IIDPartition(PartitionSettings):
    kind: Literal["iid"] = "iid"

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import iid

        return iid(np.zeros(len(dataset.y_train), dtype=np.int64), nodes, seed)


@register("partition")
class ShardsPartition(PartitionSettings):
    kind: Literal["shards"] = "shards"
    shards_per_node: int = Field(2, ge=1, le=1 << 16, description="at most 65,536")

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import shards

        return shards(_labels(dataset), nodes, self.shards_per_node, seed)


@register("partition")
class DirichletPartition(PartitionSettings):
    kind: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(0.5, gt=0.0)
    min_size: int = Field(1, ge=1, lt=MAX_SAMPLES, description="samples per node, at least")

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import dirichlet

        return dirichlet(_labels(dataset), nodes, self.alpha, seed, self.min_size)


@register("partition")
class NaturalPartition(PartitionSettings):
    """Each writer, speaking role or user goes whole to one node."""

    kind: Literal["natural"] = "natural"

    def split(self, dataset: Dataset, nodes: int, seed: int) -> list[np.ndarray]:
        from dlactor.data.partition import natural

        if dataset.groups is None:
            raise ValueError(f"{dataset.name} has no natural groups (shakespeare and movielens do)")
        return natural(dataset.groups, nodes, seed)


class DataSettings(Settings):
    kind: str

    def load(self, seed: int) -> Dataset:
        raise NotImplementedError


@register("data")
class DigitsSettings(DataSettings):
    kind: Literal["digits"] = "digits"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    def load(self, seed: int) -> Dataset:
        from dlactor.data.digits import load_digits

        return load_digits(test_fraction=self.test_fraction, seed=seed)


def _stored(name: str) -> Path:
    """The dataset's directory in the data store, or MissingDataset naming the fetch command."""
    from dlactor.data.store import require

    return require(name)


@register("data")
class MnistSettings(DataSettings):
    kind: Literal["mnist"] = "mnist"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.idx import load_mnist

        return load_mnist(_stored("mnist"))


@register("data")
class FashionMnistSettings(DataSettings):
    kind: Literal["fashion_mnist"] = "fashion_mnist"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.idx import load_mnist

        return load_mnist(_stored("fashion_mnist"), fashion=True)


@register("data")
class Cifar10Settings(DataSettings):
    kind: Literal["cifar10"] = "cifar10"

    def load(self, seed: int) -> Dataset:
        from dlactor.data.cifar import load_cifar10

        return load_cifar10(_stored("cifar10"))


@register("data")
class ShakespeareSettings(DataSettings):
    """LEAF-style next-character prediction, one group per (play, speaking role)."""

    kind: Literal["shakespeare"] = "shakespeare"
    seq_len: int = Field(80, ge=1, le=4096, description="characters of context (<= 4,096)")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_samples: int = Field(64, ge=1, lt=MAX_SAMPLES, description="drop roles with fewer samples")
    max_roles: int | None = Field(
        None, ge=1, lt=MAX_SAMPLES, description="keep only the largest N roles"
    )

    def load(self, seed: int) -> Dataset:
        from dlactor.data.shakespeare import load_shakespeare

        return load_shakespeare(
            _stored("shakespeare"),
            seq_len=self.seq_len,
            test_fraction=self.test_fraction,
            seed=seed,
            min_samples=self.min_samples,
            max_roles=self.max_roles,
        )


@register("data")
class MovieLensSettings(DataSettings):
    """Ratings regression from (user, item) pairs, one group per user."""

    kind: Literal["movielens"] = "movielens"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    def load(self, seed: int) -> Dataset:
        from dlactor.data.movielens import load_movielens

        return load_movielens(_stored("movielens"), test_fraction=self.test_fraction, seed=seed)


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
        5.0, gt=0, le=300, description="longest a connection may take to prove who it is"
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


class LocalLauncher(LauncherSettings):
    """Node processes forked on this machine (``dlactor.launch.local``)."""

    kind: Literal["local"] = "local"
    host: str = Field("127.0.0.1", description="address the nodes listen on")


class RayLauncher(LauncherSettings):
    """Node processes placed by a Ray cluster (``dlactor.launch.ray``; the ``ray`` extra).

    Nodes listen on their Ray node's IP address; the launcher's control channel listens on
    ``control_host`` (default: this machine's Ray node IP). A local cluster that dlactor
    starts itself (``address`` unset) keeps everything on 127.0.0.1.
    """

    kind: Literal["ray"] = "ray"
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
        description="Ray CPUs reserved per node: 0.25 places up to 4 nodes per core (<= 1,024)",
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

    @field_validator("launcher", mode="before")
    @classmethod
    def _local_unless_told(cls, value: Any) -> Any:
        """A ``[launcher]`` table without ``kind`` is the local backend's (as it always was)."""
        if isinstance(value, dict) and "kind" not in value:
            return {**value, "kind": "local"}
        return value


#: category (also the run-config field name) -> (settings base class, default kind)
CATEGORIES: dict[str, tuple[type[Settings], str]] = {
    "topology": (TopologySettings, "regular"),
    "sharing": (SharingSettings, "full"),
    "training": (TrainingSettings, "sgd"),
    "model": (ModelSettings, "mlp"),
    "data": (DataSettings, "digits"),
    "partition": (PartitionSettings, "iid"),
}

if TYPE_CHECKING:

    class RunConfig(RunConfigBase):
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
        default = plugins.registered(category)[default_kind]()
        fields[category] = (_union_for(category), default)
    return create_model("RunConfig", __base__=RunConfigBase, **fields)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """The dotted path as the user wrote it: pydantic puts the union's tag after a category
    name (``topology.regular.degree``); the TOML says ``topology.degree``."""
    parts = list(loc)
    tagged = parts[0] == "launcher" or (
        parts[0] in CATEGORIES and len(plugins.kinds(str(parts[0]))) > 1
    )
    if len(parts) >= 2 and tagged:
        del parts[1]
    return ".".join(str(p) for p in parts) or "(top level)"


def format_validation_error(err: ValidationError) -> str:
    lines = [f"  {_field_path(e['loc'])}: {e['msg']}" for e in err.errors()]
    return "invalid config:\n" + "\n".join(lines)


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


def validate_config(data: dict[str, Any], base_dir: Path | None = None) -> RunConfig:
    """Load the plugins the data names, then validate it against the registry's model."""
    plugin_specs = data.get("plugins", [])
    if not isinstance(plugin_specs, list) or not all(isinstance(s, str) for s in plugin_specs):
        raise ConfigError(
            "invalid config:\n  plugins: expected a list of module names or .py paths"
        )
    try:
        plugins.load_plugins(plugin_specs, base_dir)
        model = config_model()
    except plugins.PluginError as exc:
        raise ConfigError(f"invalid config:\n  plugins: {exc}") from exc
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    cfg = _resolve_paths(cfg, base_dir)
    _read_files(cfg)
    return cfg  # type: ignore[return-value]


def _resolve_paths(cfg: RunConfigBase, base_dir: Path | None) -> RunConfigBase:
    topo = getattr(cfg, "topology", None)
    if base_dir is not None and isinstance(topo, FileTopology) and not topo.path.is_absolute():
        topo = topo.model_copy(update={"path": (base_dir / topo.path).resolve()})
        return cfg.model_copy(update={"topology": topo})
    return cfg


def _read_files(cfg: RunConfigBase) -> None:
    """Read the files the config names (a graph file) now, so that their errors name the
    field; a file's content is never quoted (a path may name any file, secrets included)."""
    topo = getattr(cfg, "topology", None)
    if isinstance(topo, FileTopology):
        try:
            topo.graph(cfg.nodes, cfg.seed)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"invalid config:\n  topology.path: {exc}") from exc


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


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """TOML file + ``--set`` overrides -> a validated config, or ConfigError."""
    try:
        data = tomllib.loads(_read_config_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_unquoted(str(exc))}") from exc
    data = apply_overrides(data, overrides or [])
    return validate_config(data, base_dir=path.resolve().parent)
