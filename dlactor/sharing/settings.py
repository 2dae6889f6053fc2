"""The built-in sharing strategies' settings (``[sharing]``), registered like any plugin's.

Full sharing (``full.py``), random and top-k sparsification and stochastic quantization
(``partial.py`` and the lossy compressors in ``lossy.py``), and CHOCO-SGD (``choco.py``).
``compression`` (lossless lz4 or zstd around any of them) is the base class's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import Field

from dlactor.config import MAX_BUCKET, FieldError, RunConfigBase, SharingSettings
from dlactor.plugins import register

if TYPE_CHECKING:
    import networkx as nx

    from dlactor.context import NodeEnv
    from dlactor.sharing.base import Sharing

__all__ = [
    "ChocoSettings",
    "FullSettings",
    "QuantizeSettings",
    "RandomSettings",
    "SecureSharingSettings",
    "TopKSettings",
]


@register("sharing")
class FullSettings(SharingSettings):
    kind: Literal["full"] = "full"

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.full import FullSharing

        return FullSharing()


Budget = Annotated[float, Field(gt=0.0, le=1.0, description="fraction of parameters sent")]
BucketSize = Annotated[
    int | None,
    Field(
        ge=1,
        le=MAX_BUCKET,
        description="elements per scale, at most 2**20: a tensor is padded to whole buckets "
        "(None: one bucket per tensor)",
    ),
]


@register("sharing")
class RandomSettings(SharingSettings):
    """A random ``budget`` of the parameters each round; only the mask's seed travels."""

    kind: Literal["random"] = "random"
    budget: Budget = 0.1

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.random_subset import RandomSharing

        return RandomSharing(budget=self.budget, seed=env.seed, node=env.node)


def _layer_sizes(model: torch.nn.Module) -> list[int]:
    return [p.numel() for p in model.parameters()]


@register("sharing")
class TopKSettings(SharingSettings):
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
class QuantizeSettings(SharingSettings):
    """The whole model, stochastically quantized to ``bits`` bits (QSGD-style)."""

    kind: Literal["quantize"] = "quantize"
    bits: int = Field(8, ge=1, le=8)
    bucket_size: BucketSize = 512

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
    bucket_size: BucketSize = 512

    def check(self, config: RunConfigBase) -> None:
        from dlactor.topology.settings import StaticSettings

        topology = getattr(config, "topology", None)
        if not isinstance(topology, StaticSettings) or topology.schedule:
            kind = getattr(topology, "kind", "?")
            raise ValueError(
                "choco keeps sum_j w_ij xhat_j for a fixed set of neighbours: it needs a "
                f"static topology without a schedule, not {kind!r}"
            )

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.sharing.choco import ChocoSharing
        from dlactor.sharing.lossy import Compressor, Quantizer, RandomK, TopK

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


#: The algorithms whose averages secure sharing can mask: a node's weighted neighbours
#: (D-PSGD), a server's weighted clients (FedAvg).
SECURE_ALGORITHMS = ("dpsgd", "fedavg")
#: The most nodes a secure run may have: its Start message, with an X25519 key per node
#: beside the Ed25519 one, must fit the wire's 4 MiB header (about 47,000 nodes).
MAX_SECURE_NODES = 1 << 15


@register("sharing")
class SecureSharingSettings(SharingSettings):
    """Full sharing under pairwise masks (secure aggregation): a node, or a FedAvg server,
    learns the weighted sum of what its senders sent and no single model (docs/secure.md).
    Exact: fixed point modulo 2**32, ``fraction_bits`` of them below the point."""

    kind: Literal["secure"] = "secure"
    fraction_bits: int = Field(
        26,
        ge=8,
        le=28,
        description="fixed-point bits below the point: a precision of 2**-fraction_bits, "
        "model values within +-2**(30 - fraction_bits) (26: 1.5e-8 and +-16)",
    )

    def check(self, config: RunConfigBase) -> None:
        if self.compression != "none":
            raise FieldError(
                "sharing.compression",
                "masked words are uniformly random: lossless compression cannot shrink them",
            )
        if config.nodes > MAX_SECURE_NODES:
            raise FieldError(
                "nodes",
                f"{config.nodes}: the start barrier's address book holds every node's two "
                f"public keys within a 4 MiB header, {MAX_SECURE_NODES:,} nodes at most",
            )
        algorithm = getattr(config, "algorithm", None)
        kind = getattr(algorithm, "kind", "dpsgd")
        if kind not in SECURE_ALGORITHMS:
            raise FieldError(
                "sharing.kind",
                f"secure aggregation masks D-PSGD's or FedAvg's averages, not {kind!r}'s",
            )
        if kind == "fedavg":
            sampled = algorithm.sampled(config.nodes)  # type: ignore[union-attr]
            if sampled < 2:
                raise FieldError(
                    "algorithm.fraction",
                    f"{sampled} client per round: the server would learn its model (secure "
                    "aggregation needs at least 2 sampled clients)",
                )
            return
        degree = getattr(getattr(config, "topology", None), "degree", None)
        if isinstance(degree, int) and degree < 2:
            raise FieldError(
                "topology.degree",
                f"{degree}: a node with one neighbour would learn its model (secure "
                "aggregation needs at least 2 neighbours)",
            )

    def check_graph(self, graph: nx.Graph, config: RunConfigBase) -> None:
        """A static graph (every graph of its schedule) gives every node 2 neighbours."""
        from dlactor.topology.settings import StaticSettings
        from dlactor.topology.static import StaticTopology

        topology = getattr(config, "topology", None)
        if not isinstance(topology, StaticSettings):
            return  # dynamic: a round with fewer is skipped and recorded (docs/secure.md)
        changes = {c.round: (list(c.add), list(c.remove)) for c in topology.schedule}
        static = StaticTopology(graph=graph, changes=changes)
        for r in [0, *sorted(changes)]:
            degrees = dict(static.graph_at(r).degree)
            fewest = min(degrees.values(), default=2)
            if fewest < 2:
                node = min(n for n, d in degrees.items() if d == fewest)
                when = f" from round {r}" if r else ""
                raise FieldError(
                    "topology",
                    f"node {node} has {fewest} neighbour(s){when}: secure aggregation needs "
                    "at least 2 (with one, that neighbour's model is what it receives)",
                )

    def build(self, env: NodeEnv) -> Sharing:
        from dlactor.security.agreement import PairwiseKeys
        from dlactor.sharing.secure import SecureSharing

        # Only a learning node masks; a FedAvg server only sums, and needs no key.
        keys = PairwiseKeys(env.node, env.run_id) if env.node < env.nodes else None
        return SecureSharing(node=env.node, fraction_bits=self.fraction_bits, keys=keys)
