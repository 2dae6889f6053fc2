"""Top-k sparsification (decentralizepy's ``TopKParams``): each round a node sends the
``budget`` of its parameters that changed most, as values plus compact indices.

"Changed most" is measured against what the node last shared of each parameter (error
feedback: a change that was not sent keeps counting until it is), or, with
``error_feedback = false``, against its model of the previous round only. Selection is over
the whole model, or within each layer (``per_layer``: every layer gets its share of the
budget). Receivers average what they got, coordinate by coordinate (``PartialSharing``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dlactor.sharing.lossy import Part, TopK
from dlactor.sharing.partial import PartialSharing

__all__ = ["TopKSharing"]


class TopKSharing(PartialSharing):
    #: A checkpoint saves the reference too (error feedback's last shared values).
    checkpointed = ("compressor", "_reference")

    def __init__(
        self, *, budget: float, layers: Sequence[int] | None, error_feedback: bool
    ) -> None:
        super().__init__(TopK(budget=budget, layers=layers))
        self.error_feedback = error_feedback
        self._reference: torch.Tensor | None = None  # last shared value, or last round's

    def score(self, flat: torch.Tensor) -> torch.Tensor:
        if self._reference is None:  # round 0: nothing shared yet, rank by magnitude
            self._reference = torch.zeros_like(flat)
        return (flat - self._reference).abs_()

    def rebase(self, flat: torch.Tensor) -> None:
        """Rank coordinates by their change since ``flat`` from now on.

        A FedAvg client calls it with each model it downloads: its model is replaced every
        round it is sampled, so error feedback does not carry across rounds there (what a
        client did not send is measured against the new global model, not its old one).
        """
        self._reference = flat.clone()

    def sent(self, part: Part) -> None:
        assert self._reference is not None and self._own is not None
        if self.error_feedback:
            self._reference[part.indices] = part.values
        else:
            self._reference = self._own.clone()
