"""The built-in topologies' settings (``[topology]``), registered like any plugin's.

Each builds its strategy from this package: a static graph (``static.py``, with an optional
schedule of edge changes), a fresh random regular graph every round drawn by every node
(``dynamic.py``) or by a peer-sampler process (``sampler.py``), or gossip peer sampling
(``gossip.py``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import networkx as nx
from pydantic import Field, field_validator, model_validator

from dlactor.config import (
    MAX_ROUNDS,
    FieldError,
    RunConfigBase,
    Settings,
    TopologySettings,
)
from dlactor.plugins import register
from dlactor.topology.graphs import MAX_EDGES, MAX_NODES, check_size

if TYPE_CHECKING:
    from dlactor.context import NodeEnv, Service, ServiceEnv
    from dlactor.topology.base import Topology

__all__ = [
    "CompleteSettings",
    "DynamicRegularSettings",
    "EdgeChange",
    "ErdosRenyiSettings",
    "GossipSettings",
    "GraphFileSettings",
    "PeerSamplerSettings",
    "RegularSettings",
    "RingSettings",
    "SmallWorldSettings",
    "StaticSettings",
]

_EDGES = f"nodes x degree / 2 <= {MAX_EDGES:,} edges"

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

        return StaticTopology(
            graph=env.graph, changes=self._changes(), availability=env.availability
        )


@register("topology")
class RingSettings(StaticSettings):
    kind: Literal["ring"] = "ring"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import ring

        return ring(nodes)


@register("topology")
class RegularSettings(StaticSettings):
    kind: Literal["regular"] = "regular"
    degree: int = Field(4, ge=1, lt=MAX_NODES, description=f"every node's degree ({_EDGES})")

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import regular

        return regular(nodes, self.degree, seed)


@register("topology")
class CompleteSettings(StaticSettings):
    kind: Literal["complete"] = "complete"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import complete

        return complete(nodes)


@register("topology")
class SmallWorldSettings(StaticSettings):
    kind: Literal["small_world"] = "small_world"
    k: int = Field(
        4, ge=2, lt=MAX_NODES, description=f"each node's ring neighbours before rewiring ({_EDGES})"
    )
    p: float = Field(0.1, ge=0.0, le=1.0, description="rewiring probability")

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        from dlactor.topology.graphs import small_world

        return small_world(nodes, self.k, self.p, seed)


@register("topology")
class ErdosRenyiSettings(StaticSettings):
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
class GraphFileSettings(StaticSettings):
    kind: Literal["file"] = "file"
    path: Path = Field(
        description="graph file, read when the config is: a regular file of at most "
        "dlactor.topology.graphs.max_file_bytes(nodes) bytes (1 MiB plus twice the edge list "
        "of the densest graph allowed; 219 MB at 65,536 nodes), whose header must say `nodes`"
    )
    format: Literal["auto", "edges", "adjacency"] = "auto"

    def graph(self, nodes: int, seed: int) -> nx.Graph:
        return _read_graph_file(self.path, self.format, nodes, _file_stamp(self.path))

    def resolve(self, base_dir: Path) -> GraphFileSettings:
        """A relative path is the config file's directory's."""
        if self.path.is_absolute():
            return self
        return self.model_copy(update={"path": (base_dir / self.path).resolve()})

    def read_files(self, config: RunConfigBase) -> None:
        """Read the graph now, so that its errors name the field; the file's content is never
        quoted (a path may name any file, secrets included)."""
        try:
            self.graph(config.nodes, config.seed)
        except (ValueError, OSError) as exc:
            raise FieldError("path", str(exc)) from exc


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
class DynamicRegularSettings(TopologySettings):
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

        return RandomRegularDynamic(
            nodes=env.nodes, degree=self.degree, seed=env.seed, availability=env.availability
        )


@register("topology")
class PeerSamplerSettings(DynamicRegularSettings):
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
            availability=env.availability,
        )


@register("topology")
class GossipSettings(TopologySettings):
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
    def _fits(self) -> GossipSettings:
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
            availability=env.availability,
        )
