"""Pure tensor operations behind the sharing strategies. Nothing here knows about nodes."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from dlactor.messages import Payload
from dlactor.wire.errors import RemoteProtocolError

__all__ = [
    "Layout",
    "aliased",
    "all_finite",
    "check_finite",
    "check_layout",
    "flat_layout",
    "flatten",
    "model_tensors",
    "partial_average",
    "unflatten_into",
    "weighted_sum",
]

#: What a payload's tensors must be: name -> (dtype, shape).
Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True if no floating-point tensor among ``tensors`` holds a NaN or an infinity.

    Through numpy where it can: it runs on the node's event loop, and while training runs in
    the compute thread (``Handoff``: training of 10 ms and more) every torch call there
    releases the GIL, to get it back only after the training thread's next switch interval
    (torch's ``isfinite`` + ``all`` on a small tensor cost ~0.5 ms of a round that way,
    numpy's a few microseconds; on large arrays numpy releases the GIL too, and the work
    dominates)."""
    for t in tensors:
        if t.dtype in _NUMPY_FLOATS and t.device.type == "cpu":
            if not np.isfinite(t.data.numpy()).all():
                return False
        elif t.dtype in _OTHER_FLOATS:
            with torch.no_grad():
                if not bool(torch.isfinite(t).all()):
                    return False
    return True


_NUMPY_FLOATS = frozenset({torch.float32, torch.float64, torch.float16})
_OTHER_FLOATS = frozenset({torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2})


def check_finite(payload: Payload) -> None:
    """RemoteProtocolError if a payload's tensors or meta numbers hold NaN or Inf: one such
    model, averaged in, spreads to every node of the run within a few rounds."""
    for name, tensor in payload.tensors.items():
        if not all_finite([tensor]):
            raise RemoteProtocolError(f"tensor {name!r} holds NaN or Inf")
    for key, value in payload.meta.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise RemoteProtocolError(f"meta[{key!r}] holds NaN or Inf")


def model_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model``'s parameters and buffers by name: what :func:`aliased` compares a payload
    with (a node takes this list once; the tensors' storage is read at each check)."""
    return [*model.named_parameters(), *model.named_buffers()]


def aliased(
    payload: Payload, tensors: Iterable[tuple[str, torch.Tensor]]
) -> tuple[str, str] | None:
    """``(payload tensor, model tensor)`` if one of ``payload``'s tensors shares memory with
    one of ``tensors`` (:func:`model_tensors`: a view, ``.detach()``, ``.data``, a numpy
    view of it), else None. Compared by the memory each tensor's storage spans, so a view of
    part of a parameter counts too."""
    spans = []
    for name, t in payload.tensors.items():
        if t.layout is not torch.strided:
            continue  # no storage to compare (a sparse tensor); the codec refuses it anyway
        storage = t.untyped_storage()
        if storage.nbytes():
            spans.append((name, storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    if not spans:
        return None
    for pname, p in tensors:
        storage = p.untyped_storage()
        low, high = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        for name, start, end in spans:
            if start < high and low < end:
                return name, pname
    return None


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


def partial_average(
    own: torch.Tensor,
    own_weight: float,
    parts: Iterable[tuple[float, torch.Tensor | None, torch.Tensor]],
) -> torch.Tensor:
    """Each coordinate averaged over the node and the neighbours that sent it, with the
    mixing weights renormalized over those: for coordinate k,
    ``(w_ii x_i[k] + sum_{j sent k} w_ij v_j[k]) / (w_ii + sum_{j sent k} w_ij)``.

    ``parts`` are ``(w_ij, indices, values)``, ``indices`` sorted and unique, or None for a
    dense vector. When every neighbour sends everything, this is ``weighted_sum`` exactly.
    ``own_weight`` must be > 0 (it is for Metropolis-Hastings and max-degree weights).
    """
    if own_weight <= 0:
        raise ValueError(f"the node's own weight must be > 0, got {own_weight}")
    total = own.to(torch.float32, copy=True).mul_(own_weight)
    weight = torch.full_like(total, own_weight)
    for w, indices, values in parts:
        if indices is None:
            total.add_(values, alpha=w)
            weight.add_(w)
        else:
            total.index_add_(0, indices, values, alpha=w)
            weight.index_add_(0, indices, torch.full_like(values, w))
    return total.div_(weight)


def flat_layout(
    params: Iterable[torch.Tensor], name: str = "params"
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The layout of ``{name: flatten(params)}``: one vector of every parameter, in the dtype
    ``torch.cat`` promotes them to."""
    tensors = list(params)
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in tensors))
    return {name: (dtype, (sum(p.numel() for p in tensors),))}


def check_layout(payload: Payload, layout: Layout) -> None:
    """RemoteProtocolError unless ``payload`` has exactly the tensors of ``layout``, each with
    its dtype and shape: received bytes that do not fit are the sender's fault."""
    names, expected = sorted(payload.tensors), sorted(layout)
    if names != expected:
        raise RemoteProtocolError(f"payload has tensors {names}, expected {expected}")
    for name, (dtype, shape) in layout.items():
        tensor = payload.tensors[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RemoteProtocolError(
                f"payload tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                f"expected {dtype} {list(shape)}"
            )
