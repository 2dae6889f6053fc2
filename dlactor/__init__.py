"""dlactor: emulate decentralized learning with one asyncio actor per OS process.

The public API is what a strategy-plugin author and a protocol test need; the rest
is reached through the ``dlactor`` command.
"""

from dlactor.algorithms.base import Algorithm
from dlactor.config import (
    AlgorithmSettings,
    ConfigError,
    DataSettings,
    ModelSettings,
    PartitionSettings,
    RunConfig,
    SharingSettings,
    TopologySettings,
    TrainingSettings,
    load_config,
    validate_config,
)
from dlactor.context import EvalStats, NodeEnv, RoundContext, TrainStats
from dlactor.launch.plan import Plan, build_node, make_plan
from dlactor.messages import Payload
from dlactor.node.node import Node
from dlactor.plugins import register
from dlactor.testing import build_network, run_in_memory

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "AlgorithmSettings",
    "ConfigError",
    "DataSettings",
    "EvalStats",
    "ModelSettings",
    "Node",
    "NodeEnv",
    "PartitionSettings",
    "Payload",
    "Plan",
    "RoundContext",
    "RunConfig",
    "SharingSettings",
    "TopologySettings",
    "TrainStats",
    "TrainingSettings",
    "__version__",
    "build_network",
    "build_node",
    "load_config",
    "make_plan",
    "register",
    "run_in_memory",
    "validate_config",
]
