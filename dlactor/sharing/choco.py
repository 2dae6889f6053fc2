"""CHOCO-SGD (Koloskova, Stich and Jaggi, ICML 2019): gossip with compressed differences.

Each node keeps public estimates x-hat of its own model and of its neighbours', known to
everyone who receives its messages. Each round, after training, node i sends
``q_i = C(x_i - xhat_i)`` (any compressor: top-k, random-k or quantized), every node adds
the ``q`` it sent or received to the matching estimate, and node i takes a consensus step::

    x_i <- x_i + gamma * sum_j w_ij (xhat_j - xhat_i)        (j over i and its neighbours)

Only ``s_i = sum_j w_ij xhat_j`` and ``xhat_i`` are stored (the paper's memory-efficient
form, two vectors instead of one per neighbour), so the weights must not change: CHOCO runs
on a static topology, which the config checks. With doubly stochastic weights the average
of the models is preserved exactly; the models reach consensus as the estimates catch up
(the paper proves a linear rate for ``gamma`` small enough for the compressor).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload
from dlactor.sharing.lossy import Compressor, Part
from dlactor.sharing.ops import flatten, unflatten_into
from dlactor.sharing.partial import CompressedSharing

__all__ = ["ChocoSharing"]


def _add(target: torch.Tensor, part: Part, weight: float = 1.0) -> None:
    if part.indices is None:
        target.add_(part.values, alpha=weight)
    else:
        target.index_add_(0, part.indices, part.values, alpha=weight)


class ChocoSharing(CompressedSharing):
    #: A checkpoint saves the public estimates and the weights they were mixed with.
    checkpointed = ("compressor", "x_hat", "s", "_weights")

    def __init__(self, *, compressor: Compressor, gamma: float) -> None:
        super().__init__(compressor)
        self.gamma = gamma
        self.x_hat: torch.Tensor | None = None  # this node's public estimate
        self.s: torch.Tensor | None = None  # sum_j w_ij xhat_j
        self._weights: dict[int, float] | None = None
        self._own: torch.Tensor | None = None
        self._sent: Part | None = None

    async def outgoing(self, ctx: RoundContext) -> Payload:
        flat = flatten(ctx.model.parameters())
        if self.x_hat is None:
            self.x_hat, self.s = torch.zeros_like(flat), torch.zeros_like(flat)
        self._own = flat
        payload, self._sent = self.compressor.encode(flat - self.x_hat, ctx.round)
        return payload

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        assert self.x_hat is not None and self.s is not None
        assert self._own is not None and self._sent is not None
        weights = dict(ctx.weights)
        if self._weights is None:
            self._weights = weights
        elif weights != self._weights:
            raise RuntimeError(
                f"round {ctx.round}: CHOCO-SGD keeps sum_j w_ij xhat_j, so its neighbours and "
                "weights must stay the same; this topology changed them"
            )
        n = self._own.numel()
        _add(self.x_hat, self._sent)
        _add(self.s, self._sent, weights[ctx.node])
        for sender, part in self.received_parts(received, n).items():
            _add(self.s, part, weights[sender])
        step = (self.s - self.x_hat).mul_(self.gamma)
        unflatten_into(self._own.add_(step), ctx.model.parameters())
