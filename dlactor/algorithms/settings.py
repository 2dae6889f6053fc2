"""The built-in algorithms' settings (``[algorithm]``), registered like any plugin's."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import networkx as nx
from pydantic import Field

from dlactor.config import AlgorithmSettings, FieldError, RunConfigBase
from dlactor.plugins import register
from dlactor.topology.graphs import MAX_NODES

if TYPE_CHECKING:
    from dlactor.algorithms.base import Algorithm
    from dlactor.context import NodeEnv

__all__ = [
    "DPSGDSettings",
    "EpidemicSettings",
    "FedAvgSettings",
    "ParameterServerSettings",
]


@register("algorithm")
class DPSGDSettings(AlgorithmSettings):
    """D-PSGD: train, exchange with the topology's neighbours, average (the default)."""

    kind: Literal["dpsgd"] = "dpsgd"

    def build(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.dpsgd import DPSGD

        return DPSGD()


# The algorithms below do without a neighbour graph: a [topology] table is refused, and so is
# a sharing strategy they cannot use. Their checks raise FieldError naming the field.


def _no_topology(kind: str, given: frozenset[str]) -> None:
    if "topology" in given:
        raise FieldError("topology", f"algorithm {kind!r} has no topology: remove [topology]")


def _sharing_kind(config: RunConfigBase) -> str:
    return str(getattr(getattr(config, "sharing", None), "kind", "full"))


@register("algorithm")
class FedAvgSettings(AlgorithmSettings):
    """FedAvg (McMahan et al., 2017): a server samples clients each round, sends them the
    global model, and averages the models they send back after their local steps."""

    kind: Literal["fedavg"] = "fedavg"
    servers: ClassVar[int] = 1
    uses_topology: ClassVar[bool] = False
    fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of the clients sampled each round, in (0, 1]"
    )
    min_clients: int = Field(
        1, ge=1, le=MAX_NODES, description="clients sampled each round, at least (<= nodes)"
    )
    weighted: bool = Field(
        True,
        description="average weighted by each client's training samples (false: unweighted, "
        "as decentralizepy)",
    )

    def sampled(self, nodes: int) -> int:
        """Clients per round: ``max(min_clients, round(fraction x nodes))``."""
        return max(self.min_clients, round(self.fraction * nodes))

    def check(self, config: RunConfigBase, given: frozenset[str]) -> None:
        _no_topology(self.kind, given)
        if self.min_clients > config.nodes:
            raise FieldError(
                "algorithm.min_clients", f"{self.min_clients} is more than nodes = {config.nodes}"
            )
        kind = _sharing_kind(config)
        if kind not in UPLOADS:
            raise FieldError(
                "sharing.kind",
                f"fedavg uploads can use {sorted(UPLOADS)}, not {kind!r} (downloads are full)",
            )

    def build(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.fedavg import FedAvgClient

        return FedAvgClient(settings=self, env=env)

    def server(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.fedavg import FedAvgServer

        return FedAvgServer(settings=self, env=env)


#: The sharing strategies a FedAvg client may upload with: whole models, or parts of them
#: that the server averages coordinate by coordinate (CHOCO needs fixed neighbours).
UPLOADS = frozenset({"full", "topk", "random", "quantize", "secure"})


@register("algorithm")
class ParameterServerSettings(AlgorithmSettings):
    """A synchronous parameter server: every client sends a gradient each round; the server
    applies the optimizer of ``[training]`` (SGD with its momentum and weight decay) and
    sends the new model back."""

    kind: Literal["parameter_server"] = "parameter_server"
    servers: ClassVar[int] = 1
    uses_topology: ClassVar[bool] = False

    def check(self, config: RunConfigBase, given: frozenset[str]) -> None:
        from dlactor.training.settings import SGDSettings

        _no_topology(self.kind, given)
        if _sharing_kind(config) != "full":
            raise FieldError(
                "sharing.kind", "the parameter server sends whole gradients: sharing must be full"
            )
        if getattr(getattr(config, "sharing", None), "compression", "none") != "none":
            raise FieldError("sharing.compression", "the parameter server compresses nothing")
        if not isinstance(getattr(config, "training", None), SGDSettings):
            raise FieldError(
                "training.kind", "the parameter server applies SGD: training.kind must be sgd"
            )

    def build(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.parameter_server import PSClient

        return PSClient(env=env)

    def server(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.parameter_server import PSServer

        return PSServer(env=env)


@register("algorithm")
class EpidemicSettings(AlgorithmSettings):
    """Epidemic Learning (de Vos et al., NeurIPS 2023): each round every node sends its model
    to ``s`` peers drawn at random and averages its own with what it received.

    ``variant = "oracle"`` (EL-Oracle): the round's directed graph is drawn from the run's
    seed, so every node knows whom it will hear from. ``"local"`` (EL-Local): each node draws
    its own targets; a node knows its round is in when every contact (its ``[topology]``
    neighbours, default every node) has sent it a model or a short notice that it was not
    drawn (docs/design.md).
    """

    kind: Literal["epidemic"] = "epidemic"
    s: int = Field(5, ge=1, lt=MAX_NODES, description="peers each node sends to per round")
    variant: Literal["oracle", "local"] = "oracle"

    def check_graph(self, graph: nx.Graph) -> None:
        """EL-Local draws ``s`` targets among a node's neighbours: every node needs ``s``."""
        fewest = min((d for _, d in graph.degree), default=0)
        if fewest < self.s:
            raise FieldError(
                "algorithm.s",
                f"{self.s} targets per round, but a node has only {fewest} neighbour(s) in "
                "the [topology] graph",
            )

    def needs_topology(self, config: RunConfigBase) -> bool:
        """Only EL-Local with a ``[topology]`` table uses a graph (its contacts)."""
        return self.variant == "local" and "topology" in config.model_fields_set

    def lookahead(self, config: RunConfigBase) -> int:
        """EL-Local: every node waits for every contact each round, so none is more than a
        round ahead. EL-Oracle: a sender waits only for its own in-neighbours and can run
        several rounds ahead of a node it does not depend on, so every later round may hold
        its share; a share is accepted only for a round whose seeded draw has it send to
        this node, which bounds what one sender can make a node hold to those rounds."""
        return max(1, config.rounds) if self.variant == "oracle" else 1

    def check(self, config: RunConfigBase, given: frozenset[str]) -> None:
        if self.s >= config.nodes:
            raise FieldError("algorithm.s", f"{self.s} must be below nodes = {config.nodes}")
        kind = _sharing_kind(config)
        if kind == "choco":
            raise FieldError("sharing.kind", "choco needs fixed neighbours; epidemic has none")
        topology = getattr(config, "topology", None)
        if "topology" in given:
            if self.variant == "oracle":
                raise FieldError(
                    "topology", "EL-Oracle draws from every node: [topology] is for EL-Local"
                )
            from dlactor.topology.settings import StaticSettings

            if not isinstance(topology, StaticSettings) or topology.schedule:
                raise FieldError(
                    "topology.kind",
                    "EL-Local's contacts are a static graph without a schedule, not "
                    f"{getattr(topology, 'kind', '?')!r}",
                )

    def build(self, env: NodeEnv) -> Algorithm:
        from dlactor.algorithms.epidemic import EpidemicLearning

        return EpidemicLearning(settings=self, env=env)
