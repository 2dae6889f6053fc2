"""What secure aggregation costs: CPU per round against full sharing's, the one-time key
agreement per pair, and the quickstart's round time and bytes, plain against secure.

The CPU figures are one node's sharing calls of one D-PSGD round at degree 5, in one
process, with process CPU time: full sharing's ``outgoing`` + ``aggregate`` of 5 models,
against secure sharing's ``outgoing_each`` (5 masked payloads, each with 4 pairwise
streams) + ``aggregate`` of 5 masked payloads. The two alternate, so that the machine's
load falls on both alike. The launched runs alternate too.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from launches import quickstart_summary
from report import Section, Table

from dlactor.context import Roster, RoundContext
from dlactor.messages import Payload
from dlactor.security.agreement import PairwiseKeys
from dlactor.sharing.full import FullSharing
from dlactor.sharing.ops import flatten
from dlactor.sharing.secure import SecureSharing
from dlactor.training.models import count_parameters, lenet5, mlp

DEGREE = 5
FRACTION_BITS = 26


@dataclass
class SecureResult:
    cpu_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # model -> kind
    params: dict[str, int] = field(default_factory=dict)
    agree_us: list[float] = field(default_factory=list)
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # launched
    notes: list[str] = field(default_factory=list)


def _keys(n: int) -> list[PairwiseKeys]:
    keys = [PairwiseKeys(i, "bench") for i in range(n)]
    for k in keys:
        k.learn({j.process: j.public for j in keys})
    return keys


async def _one_round(model: torch.nn.Module, keys: list[PairwiseKeys]) -> dict[str, float]:
    """CPU seconds of node 0's sharing calls in one round, full then secure. Node 0's
    neighbours are 1..5; each neighbour's own neighbours are 0 and four others."""
    peers = frozenset(range(1, DEGREE + 1))
    weights = {p: 1.0 / (DEGREE + 1) for p in [0, *peers]}
    ctx = RoundContext(node=0, round=3, model=model, peers=peers, weights=weights)
    out = {}
    full = FullSharing()
    received = {p: Payload({"params": flatten(model.parameters())}) for p in peers}
    t = time.process_time()
    ctx.sent = await full.outgoing(ctx)
    await full.aggregate(ctx, received)
    out["full"] = time.process_time() - t
    ctx.sent = None
    ctx.rosters = {
        p: Roster(frozenset({p, 0, *((p + k) % len(keys) for k in range(1, DEGREE))}) - {p},
                  1.0 / (DEGREE + 1))
        for p in peers
    }  # fmt: skip
    secure = SecureSharing(node=0, fraction_bits=FRACTION_BITS, keys=keys[0])
    # what node 0 receives from its neighbours, masked for it (their cost is theirs)
    masked = {}
    for p in peers:
        sender = SecureSharing(node=p, fraction_bits=FRACTION_BITS, keys=keys[p])
        roster = {0: Roster(peers, 1.0 / (DEGREE + 1))}
        theirs = RoundContext(p, 3, model, peers=frozenset({0}), rosters=roster)
        masked[p] = (await sender.outgoing_each(theirs))[0]
    t = time.process_time()
    await secure.outgoing_each(ctx)
    await secure.aggregate(ctx, masked)
    out["secure"] = time.process_time() - t
    if secure.report()["secure_rejected"]:
        raise AssertionError("the benchmark's masked payloads did not sum to a model")
    return out


def run_secure(progress: Callable[[str], None], *, quick: bool = False) -> SecureResult:
    result = SecureResult()
    torch.set_num_threads(1)
    keys = _keys(2 * DEGREE + 2)
    models = {
        "quickstart MLP": mlp(64, 10, (64,)),
        "LeNet-5": lenet5(10, 1),
        "a layer of MovieLens MF's size": torch.nn.Linear(999, 204),  # 204,000 parameters
    }
    reps = 10 if quick else 30
    for name, model in models.items():
        progress(f"secure: CPU of one round's sharing, {name}, {reps} rounds")
        result.params[name] = count_parameters(model)
        result.cpu_ms[name] = {"full": [], "secure": []}
        for _ in range(reps):
            for kind, seconds in asyncio.run(_one_round(model, keys)).items():
                result.cpu_ms[name][kind].append(seconds * 1000)
    for _ in range(20):  # a fresh pair each time: no cached secret
        pair = _keys(2)
        t = time.process_time()
        pair[0].secret(1)
        result.agree_us.append((time.process_time() - t) * 1e6)
    variants = {"full": "sharing.kind=full", "secure": "sharing.kind=secure"}
    with tempfile.TemporaryDirectory(prefix="dlactor-bench-") as tmp:
        for rep in range(2 if quick else 3):
            for name, override in variants.items():
                progress(f"secure: quickstart, {name}, run {rep + 1}")
                summary = quickstart_summary(Path(tmp) / "out", override)
                result.runs.setdefault(name, []).append(
                    {
                        "round_ms": float(summary["round_s_median"]) * 1000,
                        "bytes": float(summary["bytes_sent_per_node_per_round"]),
                        "acc": float(summary["final"]["test_acc_mean"]),
                    }
                )
    return result


def secure_section(result: SecureResult) -> Section:
    cpu = Table(["model", "parameters", "full: CPU ms per round", "secure: CPU ms per round",
                 "secure extra, ms", "ratio"])  # fmt: skip
    for name, kinds in result.cpu_ms.items():
        full, secure = statistics.median(kinds["full"]), statistics.median(kinds["secure"])
        cpu.add(name, f"{result.params[name]:,}", f"{full:.3f}", f"{secure:.3f}",
                f"{secure - full:+.3f}", f"{secure / full:.2f}x")  # fmt: skip
    runs = Table(["quickstart (16 nodes, 40 rounds)", "median round, ms: median of runs",
                  "bytes per node per round", "final accuracy", "runs"])  # fmt: skip
    for name, rows in result.runs.items():
        runs.add(name, f"{statistics.median(r['round_ms'] for r in rows):.1f}",
                 f"{statistics.median(r['bytes'] for r in rows):,.0f}",
                 f"{statistics.median(r['acc'] for r in rows):.4f}", str(len(rows)))  # fmt: skip
    agree = statistics.median(result.agree_us)
    intro = (
        f"One node's sharing calls in one D-PSGD round at degree {DEGREE}, process CPU time "
        "in one process (`experiments/bench/bench_secure.py`): full sharing's `outgoing` + "
        f"`aggregate` against secure sharing's `outgoing_each` ({DEGREE} masked payloads, "
        f"{DEGREE - 1} AES-256-CTR streams each) + `aggregate` of {DEGREE} masked payloads, "
        "alternating. Then the quickstart launched with `sharing.kind = full` and `secure` "
        f"in turn. The one-time X25519 agreement + HKDF per pair: {agree:.0f} µs (median of "
        f"{len(result.agree_us)})."
    )
    return Section("10. Secure aggregation: CPU, bytes, round time", intro, [cpu, runs],
                   result.notes)  # fmt: skip
