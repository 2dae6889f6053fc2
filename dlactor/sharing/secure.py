"""Secure aggregation, exact: a receiver learns the weighted sum of what its senders sent it,
and no single one of them (docs/secure.md has the scheme, its precision and threat model).

Each sender ``j`` sends each receiver ``i`` its weighted model in fixed point modulo 2**32,
plus a mask: ``y_ji = enc(W_ij x_j) + sum_{k in S_i, k != j} +-PRG(s_jk; round, i)``, with
``+`` when ``j < k`` and ``-`` otherwise, over the receiver's senders ``S_i`` (its roster).
Each pair's two terms cancel in ``sum_j y_ji``, which is therefore exactly
``sum_j enc(W_ij x_j)``: the receiver decodes it and adds its own ``W_ii x_i``. ``enc``
scales by ``2**fraction_bits`` and rounds to the nearest integer; the pairwise secrets
``s_jk`` and their keystreams (AES-256-CTR) are
:class:`~dlactor.security.agreement.PairwiseKeys`'.

Words are 32 bits, as many bytes as the float32 model they replace. A sender refuses to
send a value beyond ``2**(30 - fraction_bits)`` (SecureRangeError: its model left the
fixed-point range), so an honest sum never wraps; a receiver whose unmasked sum is out of
the range honest senders can make (a sender that lied, a message missing) keeps its own
model that round, and the record says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dlactor.context import RoundContext
from dlactor.messages import Payload
from dlactor.security.agreement import PairwiseKeys, scratch_size
from dlactor.sharing.ops import flatten, unflatten_into
from dlactor.wire.errors import RemoteProtocolError

__all__ = [
    "WORD_BITS",
    "SecureRangeError",
    "SecureSharing",
    "decode",
    "encode",
    "headroom",
    "mask_for",
]

log = logging.getLogger("dlactor.node")

#: Bits of one masked word: the arithmetic is modulo 2**32.
WORD_BITS = 32
#: Largest magnitude of an encoded value: one bit below the sign's, so that a sum of weighted
#: values (weights summing to at most 1) plus their roundings still fits a signed word.
LIMIT = 1 << (WORD_BITS - 2)
MASKED = "masked"
SKIP = "skip"


class SecureRangeError(ArithmeticError):
    """This node's model holds a value the fixed-point encoding cannot carry: sending it
    would wrap around into a wrong model at the receiver, so the node stops instead."""

    def __init__(self, node: int, round: int, peak: float, fraction_bits: int) -> None:
        self.node, self.round = node, round
        bound = headroom(fraction_bits)
        super().__init__(
            f"node {node}'s model holds {peak:.6g} in round {round}, beyond the secure "
            f"fixed-point range +-{bound:g} (sharing.fraction_bits = {fraction_bits}): a lower "
            "fraction_bits widens the range, at a coarser precision"
        )


def headroom(fraction_bits: int) -> float:
    """The largest magnitude a model value may have: ``2**(30 - fraction_bits)``."""
    return LIMIT / 2.0**fraction_bits


def encode(x: np.ndarray, weight: float, fraction_bits: int) -> np.ndarray:
    """``round(weight * x * 2**fraction_bits)`` as uint32 words (two's complement). The
    caller has checked that ``|x| <= headroom``, so every value fits."""
    scaled = np.multiply(x, weight * 2.0**fraction_bits, dtype=np.float64)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int32).view(np.uint32)


def decode(words: np.ndarray, fraction_bits: int) -> np.ndarray:
    """The float64 values of signed fixed-point ``words``."""
    return np.multiply(words.view(np.int32), 2.0**-fraction_bits, dtype=np.float64)


def mask_for(
    keys: PairwiseKeys,
    senders: frozenset[int],
    receiver: int,
    round: int,
    words: int,
    scratch: bytearray | None = None,
) -> np.ndarray:
    """This process's mask for ``receiver`` in ``round``: its pairwise streams with every
    other sender, added when this process's id is the lower of the pair, else subtracted,
    so that the masks of all ``senders`` sum to zero modulo 2**32. ``scratch`` (at least
    ``scratch_size(words)`` bytes) is reused for the streams when given."""
    me = keys.process
    total = np.zeros(words, dtype=np.uint32)
    if scratch is None:
        scratch = bytearray(scratch_size(words))
    for other in sorted(senders - {me}):
        stream = keys.mask(other, receiver, round, words, scratch)
        if me < other:
            total += stream
        else:
            total -= stream
    return total


class SecureSharing:
    """Full sharing (D-PSGD's average, a FedAvg upload) under pairwise masks.

    ``keys`` is None on a process that only receives (a FedAvg server)."""

    checkpointed = ()  # nothing kept across rounds (keys are made afresh: masks cancel)

    needs_rosters = True

    def __init__(self, *, node: int, fraction_bits: int, keys: PairwiseKeys | None) -> None:
        self.node, self.fraction_bits, self.agreement = node, fraction_bits, keys
        self._size: int | None = None
        self._own: tuple[int, np.ndarray] | None = None  # (round, this model as sent)
        self._report: dict[str, Any] = {}
        self._scratch = bytearray()  # the keystreams' buffer, reused every round

    # --- sending ---------------------------------------------------------------------

    async def outgoing(self, ctx: RoundContext) -> Payload:
        raise TypeError("secure sharing sends each peer its own payload: use outgoing_each")

    async def outgoing_each(self, ctx: RoundContext) -> dict[int, Payload]:
        """Each peer's masked, weighted model (or a skip notice for a receiver with fewer
        than two senders, whose sum would be this model alone)."""
        if self.agreement is None:
            raise RuntimeError(f"process {self.node} has no agreement keys: it cannot mask")
        x = flatten(ctx.model.parameters()).numpy()
        self._own = (ctx.round, x)
        if len(self._scratch) < scratch_size(x.size):
            self._scratch = bytearray(scratch_size(x.size))
        peak = float(np.abs(x).max()) if x.size else 0.0
        if not peak <= headroom(self.fraction_bits):  # NaN too
            raise SecureRangeError(self.node, ctx.round, peak, self.fraction_bits)
        out: dict[int, Payload] = {}
        encoded: dict[float, np.ndarray] = {}  # by weight: a regular graph's are all one
        for peer in sorted(ctx.peers):
            roster = ctx.rosters[peer]
            if len(roster.senders) < 2:
                out[peer] = Payload(meta={SKIP: True})
                continue
            plain = encoded.get(roster.weight)
            if plain is None:
                plain = encoded[roster.weight] = encode(x, roster.weight, self.fraction_bits)
            words = plain + mask_for(
                self.agreement, roster.senders, peer, ctx.round, x.size, self._scratch
            )
            out[peer] = Payload({MASKED: torch.from_numpy(words.view(np.int32))})
        return out

    # --- receiving -------------------------------------------------------------------

    def check(self, model: torch.nn.Module, payload: Payload) -> None:
        """One int32 vector of the model's size, or a skip notice (on arrival)."""
        if self._size is None:
            self._size = sum(p.numel() for p in model.parameters())
        if not payload.tensors:
            if dict(payload.meta) != {SKIP: True}:
                raise RemoteProtocolError("a secure payload without words is not a skip notice")
            return
        tensor = payload.tensors.get(MASKED)
        if len(payload.tensors) != 1 or tensor is None or payload.meta:
            raise RemoteProtocolError(f"a secure payload is one tensor {MASKED!r}, no meta")
        if tensor.dtype != torch.int32 or tuple(tensor.shape) != (self._size,):
            raise RemoteProtocolError(
                f"masked words are {tensor.dtype} {list(tensor.shape)}, expected int32 "
                f"[{self._size}]"
            )

    async def aggregate(self, ctx: RoundContext, received: Mapping[int, Payload]) -> None:
        """``x_i <- W_ii x_i + decode(sum of the masked words)``. With fewer than two senders,
        or an unmasked sum out of the honest range, the model stays as it is (recorded)."""
        own = self._own[1] if self._own is not None and self._own[0] == ctx.round else None
        if own is None:
            own = flatten(ctx.model.parameters()).numpy()
        self._report = {"secure_skipped": False, "secure_rejected": False}
        words = [p.tensors[MASKED] for p in received.values() if MASKED in p.tensors]
        if len(received) < 2 or len(words) != len(received):
            self._report["secure_skipped"] = True
            return
        total = np.zeros(own.size, dtype=np.uint32)
        for w in words:
            total += w.numpy().view(np.uint32)
        summed = total.view(np.int32)
        weight = sum(ctx.weights.get(j, 0.0) for j in received)
        bound = weight * LIMIT + len(received)
        if summed.size and max(int(summed.max()), -int(summed.min())) > bound:
            self._report["secure_rejected"] = True
            log.warning(
                "node %d: round %d's secure sum from %s is out of range (a sender lied or "
                "a message is missing); the model is kept as it is",
                self.node,
                ctx.round,
                sorted(received),
            )
            return
        mixed = decode(summed, self.fraction_bits)
        mixed += np.multiply(own, ctx.weights.get(ctx.node, 0.0), dtype=np.float64)
        unflatten_into(torch.from_numpy(mixed.astype(np.float32)), ctx.model.parameters())

    def report(self) -> dict[str, Any]:
        """The last aggregate's fields for the round's record."""
        out, self._report = self._report, {}
        return out
