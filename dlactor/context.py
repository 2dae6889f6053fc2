"""What strategies are built from and what they see each round.

These types sit below every strategy package and the node: ``topology``, ``sharing``,
``training`` and ``algorithms`` import them, and ``node`` imports those packages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import networkx as nx
import numpy as np
import torch

from dlactor.data.base import Dataset
from dlactor.messages import Payload
from dlactor.transport.base import Address, Deliver, Transport

if TYPE_CHECKING:
    from dlactor.churn.availability import Availability
    from dlactor.config import RunConfigBase

__all__ = [
    "EvalStats",
    "ModelDiverged",
    "NodeEnv",
    "PayloadAliasesModel",
    "Roster",
    "RoundContext",
    "SendStalled",
    "Service",
    "ServiceEnv",
    "TrainStats",
]


@dataclass(frozen=True, slots=True)
class NodeEnv:
    """Everything a node's strategies are built from; made by the launcher, read-only after."""

    node: int
    nodes: int
    seed: int
    graph: nx.Graph
    dataset: Dataset
    train_indices: np.ndarray
    model: torch.nn.Module
    rounds: int = 1
    round_timeout: float = 120.0
    #: Every learning node's training-sample indices (a server weighs clients by them).
    parts: Sequence[np.ndarray] = ()
    #: The algorithm's server processes (ids after the nodes and the topology's services).
    servers: range = range(0)
    #: The whole run config, for strategies that read another table (a parameter server
    #: builds its optimizer from ``[training]``).
    config: RunConfigBase | None = None
    #: The run's id (what per-run key derivations bind to).
    run_id: str = ""
    #: Which learning nodes are online in each round ([availability]); None: all, always.
    availability: Availability | None = None


@dataclass(frozen=True, slots=True)
class ServiceEnv:
    """What a topology's service process (the peer sampler) is built from."""

    process: int  # its id: the learning nodes are 0..nodes-1, services come after
    nodes: int
    seed: int
    rounds: int
    transport: Callable[[Deliver], Transport]
    availability: Availability | None = None  # as NodeEnv's


class Service(Protocol):
    """A service process's actor: the node lifecycle without learning. ``run`` returns when
    the service has done all the run needs of it."""

    node: int

    async def start(self) -> Address: ...

    def connect(self, addresses: Mapping[int, Address], t0: float | None = None) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Roster:
    """What one receiver aggregates in a round, as a sender to it sees it: every process
    that sends to it (this one included), and the weight this one's payload takes in it."""

    senders: frozenset[int]
    weight: float


@dataclass(slots=True)
class RoundContext:
    """One node's view of one round, passed to every strategy call of that round."""

    node: int
    round: int
    model: torch.nn.Module
    peers: frozenset[int] = frozenset()
    weights: Mapping[int, float] = field(default_factory=dict)
    #: What ``outgoing`` returned this round, set by the node before ``aggregate``: the model
    #: has not changed in between, so a strategy can reuse it instead of flattening again.
    sent: Payload | None = None
    #: For a strategy that sends each peer its own payload (``SharesPerPeer``) and asks for
    #: them (``needs_rosters``): each peer's :class:`Roster` this round.
    rosters: Mapping[int, Roster] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainStats:
    loss: float
    steps: int
    samples: int


@dataclass(frozen=True, slots=True)
class EvalStats:
    """Test-set figures: ``accuracy`` for classification, ``rmse`` for regression (else None)."""

    loss: float
    accuracy: float
    samples: int
    rmse: float | None = None


# --- what a round raises (the node's and every algorithm's) ------------------------------


class SendStalled(TimeoutError):
    """This round's share did not leave for some neighbours within the round timeout: they
    stopped reading (their socket buffers are full), so waiting longer would hang the round."""

    def __init__(self, round: int, peers: Iterable[int], timeout: float) -> None:
        self.round = round
        self.peers = sorted(peers)
        super().__init__(
            f"round {round}: node(s) {self.peers} did not take this node's share within "
            f"{timeout:g} s (they stopped reading)"
        )


class ModelDiverged(ArithmeticError):
    """This node's own model (or the share it made of it) holds NaN or Inf: it stops the run
    rather than send it to its neighbours (``security.allow_nonfinite`` lets it go on)."""

    def __init__(self, node: int, round: int, what: str = "model") -> None:
        self.node, self.round = node, round
        super().__init__(
            f"node {node}'s {what} holds NaN or Inf after training in round {round} "
            "(training diverged: a lower training.lr may help)"
        )


class PayloadAliasesModel(RuntimeError):
    """A payload a node was about to send shares memory with its live model: the transport
    could send parameters as the next round changes them, and an in-memory receiver would
    average a tensor the sender keeps training. A bug in what made it (``makers``: the
    sharing strategy, or the algorithm): the node fails the run naming it, rather than run
    on with status ok."""

    def __init__(self, makers: str, tensor: str, parameter: str) -> None:
        super().__init__(
            f"a payload made by {makers} has a tensor {tensor!r} that shares memory with the "
            f"model's {parameter!r}: a payload must be a copy (dlactor.sharing.ops.flatten "
            "copies; .detach(), .data, views and torch.from_numpy(p.numpy()) do not)"
        )
