"""Pure tensor operations behind the sharing strategies. Nothing here knows about nodes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["flatten", "unflatten_into", "weighted_sum"]


def flatten(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """One new contiguous 1-D tensor holding all ``params`` in order (a snapshot, never a view)."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in params])


def unflatten_into(vector: torch.Tensor, params: Iterable[torch.Tensor]) -> None:
    """Copy ``vector`` back into ``params`` in order; the sizes must add up exactly."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} values, parameters take {offset}")


def weighted_sum(vectors: Mapping[int, torch.Tensor], weights: Mapping[int, float]) -> torch.Tensor:
    """sum_j weights[j] * vectors[j], over the keys of ``weights`` (all must be in ``vectors``)."""
    missing = set(weights) - set(vectors)
    if missing:
        raise KeyError(f"no vector for {sorted(missing)}")
    keys = iter(weights)
    first = next(keys)
    out = vectors[first].to(torch.float32, copy=True).mul_(weights[first])
    for k in keys:
        out.add_(vectors[k], alpha=weights[k])
    return out
