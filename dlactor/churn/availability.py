"""Which learning nodes are online in each round: a schedule every process of a run knows.

An availability schedule is fixed before the run starts, from a trace file or drawn from the
run's seed, and every process gets the same one (it is part of the plan, like a static
graph). So a node knows, without a message, which of its neighbours sit a round out: it does
not wait for them, and two online nodes agree on the online part of the round's graph, which
keeps the mixing weights symmetric and the online nodes' average exact (docs/churn.md).

A node's schedule is stored as the rounds at which it changes state (``toggles``) and its
state in round 0: a run of 10,000 rounds with sessions of a few rounds costs a few thousand
integers per node, not a bit per node and round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dlactor.network.files import NetworkFileError, _lines

__all__ = [
    "AVAILABILITY_HEADER",
    "Availability",
    "read_availability",
    "sessions",
]

#: The columns of an availability trace (``state`` is optional: ``offline`` by default).
AVAILABILITY_HEADER = ("node", "start", "end")
MAX_TRACE_BYTES = 64 << 20
#: The latest time a trace in seconds may give (about 31.7 years, as the network's clock).
MAX_SECONDS = 1e9
#: The most state changes a schedule may hold over all nodes (about 128 MB of int64).
MAX_TOGGLES = 1 << 24
# Spawn-key tag of the generated sessions: not another strategy's stream.
_SESSIONS = 0xA7A1


@dataclass(frozen=True)
class Availability:
    """Each learning node's online rounds. ``initial[i]``: node i is online in round 0;
    ``toggles[i]``: the sorted rounds at which it changes state."""

    nodes: int
    rounds: int
    initial: np.ndarray  # bool, one per node
    toggles: Sequence[np.ndarray]  # int64 arrays, one per node

    def online(self, node: int, round: int) -> bool:
        """Whether ``node`` takes part in ``round`` (processes that are not learning nodes,
        servers and services, always do)."""
        if not 0 <= node < self.nodes:
            return True
        flips = int(np.searchsorted(self.toggles[node], round, side="right"))
        return bool(self.initial[node]) ^ bool(flips % 2)

    def online_nodes(self, round: int) -> np.ndarray:
        """The learning nodes online in ``round``, sorted."""
        flips = np.fromiter(
            (np.searchsorted(t, round, side="right") for t in self.toggles),
            dtype=np.int64,
            count=self.nodes,
        )
        return np.flatnonzero(self.initial ^ (flips % 2 == 1))

    def online_count(self) -> np.ndarray:
        """How many nodes are online in each round (for summaries and figures)."""
        delta = np.zeros(self.rounds + 1, dtype=np.int64)
        for node in range(self.nodes):
            sign = 1 if self.initial[node] else -1
            delta[0] += 1 if self.initial[node] else 0
            for t in self.toggles[node]:
                if t < self.rounds:
                    sign = -sign
                    delta[t] += sign
        return np.cumsum(delta)[: self.rounds]

    def offline_share(self) -> float:
        """The share of node-rounds spent offline."""
        return 1.0 - float(self.online_count().sum()) / (self.nodes * self.rounds)


def _from_online_masks(
    nodes: int, rounds: int, initial: list[bool], toggles: list[list[int]]
) -> Availability:
    return Availability(
        nodes=nodes,
        rounds=rounds,
        initial=np.array(initial, dtype=bool),
        toggles=[np.array(t, dtype=np.int64) for t in toggles],
    )


def sessions(
    nodes: int, rounds: int, seed: int, *, offline: float, mean_offline: float
) -> Availability:
    """Alternating online and offline sessions of geometric lengths (in rounds), drawn for
    each node from (``seed``, node): offline sessions last ``mean_offline`` rounds on average
    and online ones ``mean_offline * (1 - offline) / offline``, so a share ``offline`` of the
    nodes is offline at any time on average. Each node starts in its stationary state
    (offline with probability ``offline``); the geometric law is memoryless, so the session it
    starts in has the same law as any other."""
    if offline == 0.0:
        return _from_online_masks(nodes, rounds, [True] * nodes, [[] for _ in range(nodes)])
    mean_online = mean_offline * (1.0 - offline) / offline
    if mean_online < 1.0:
        raise ValueError(
            f"online sessions would last {mean_online:.3g} rounds on average, less than one: "
            "lower offline or raise mean_offline"
        )
    expected = nodes * rounds / (mean_online + mean_offline) * 2
    if expected > MAX_TOGGLES:
        raise ValueError(
            f"about {expected:,.0f} session changes: more than {MAX_TOGGLES:,} (raise mean_offline)"
        )
    initial, toggles = [], []
    for node in range(nodes):
        rng = np.random.default_rng(
            np.random.SeedSequence(entropy=seed, spawn_key=(_SESSIONS, node))
        )
        up = bool(rng.random() >= offline)
        initial.append(up)
        flips: list[int] = []
        t, state = 0, up
        while True:
            t += int(rng.geometric(1.0 / (mean_online if state else mean_offline)))
            if t >= rounds:
                break
            flips.append(t)
            state = not state
        toggles.append(flips)
    return _from_online_masks(nodes, rounds, initial, toggles)


def read_availability(
    path: str, nodes: int, rounds: int, *, round_s: float | None = None
) -> Availability:
    """A trace file: a header ``node,start,end`` (or ``node,start,end,state``), then one
    interval per line. ``state`` is ``offline`` (the default) or ``online``: a node given
    offline intervals is online outside them; a node given online intervals is offline
    outside them (one node's lines are all of one state); a node on no line is always
    online. ``start`` and ``end`` are rounds (``end`` excluded), or seconds when
    ``round_s`` is given: round r then takes the state of time ``r * round_s``."""
    rows = _lines(path, MAX_TRACE_BYTES)
    if not rows:
        raise NetworkFileError(path, None, "empty: expected the header node,start,end[,state]")
    line, text = rows[0]
    header = tuple(c.strip() for c in text.split(","))
    if header not in (AVAILABILITY_HEADER, (*AVAILABILITY_HEADER, "state")):
        raise NetworkFileError(path, line, "expected the header node,start,end[,state]")
    kinds: dict[int, str] = {}
    intervals: dict[int, list[tuple[int, int]]] = {}
    for line, text in rows[1:]:
        cells = [c.strip() for c in text.split(",")]
        if len(cells) != len(header):
            raise NetworkFileError(path, line, f"{len(cells)} columns, expected {len(header)}")
        node = _node(path, line, cells[0], nodes)
        state = cells[3] if len(cells) == 4 else "offline"
        if state not in ("online", "offline"):
            raise NetworkFileError(path, line, "state: expected online or offline")
        if kinds.setdefault(node, state) != state:
            raise NetworkFileError(
                path, line, f"node {node} has both online and offline lines: give one kind"
            )
        start, end = (
            _time(path, line, cell, name, round_s)
            for cell, name in ((cells[1], "start"), (cells[2], "end"))
        )
        if end[0] <= start[0]:
            raise NetworkFileError(path, line, "end must be after start")
        intervals.setdefault(node, []).append((min(start[1], rounds), min(end[1], rounds)))
    initial, toggles = [], []
    for node in range(nodes):
        kind = kinds.get(node, "offline")
        merged = _merge(intervals.get(node, []))
        inside = kind == "online"  # the state within the intervals
        state0 = (not inside) if not merged or merged[0][0] > 0 else inside
        flips = [t for a, b in merged for t in (a, b) if 0 < t < rounds]
        initial.append(state0)
        toggles.append(flips)
    return _from_online_masks(nodes, rounds, initial, toggles)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _node(path: str, line: int, cell: str, nodes: int) -> int:
    if not (cell.isascii() and cell.isdigit()) or len(cell) > 12:
        raise NetworkFileError(path, line, "node: expected a node id")
    node = int(cell)
    if node >= nodes:
        raise NetworkFileError(path, line, f"node {node} is not in the run (0 to {nodes - 1})")
    return node


def _time(path: str, line: int, cell: str, name: str, round_s: float | None) -> tuple[float, int]:
    """A start or end as given, and as a round: the round itself, or the first round that
    starts at or after that many seconds."""
    if round_s is None:
        if not (cell.isascii() and cell.isdigit()) or len(cell) > 12:
            raise NetworkFileError(path, line, f"{name}: expected a round (0 to 10**12)")
        return int(cell), int(cell)
    try:
        seconds = float(cell)
    except ValueError:
        raise NetworkFileError(path, line, f"{name}: expected seconds (a number >= 0)") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise NetworkFileError(path, line, f"{name}: expected seconds (0 to {MAX_SECONDS:g})")
    return seconds, math.ceil(seconds / round_s)
