"""Benchmark 5: round overhead, a run's median round against the compute floor.

The compute floor is the same computation without dlactor around it: the same plan
(`make_plan` on the same config and overrides), every node's trainer, sharing and topology
built as in a node (`node_env` + the config's `build`), and, round after round, every node's
local training steps (`SGDTrainer.train_steps`) and its D-PSGD aggregation (flatten its
model, weighted sum with its neighbours' vectors of that round, copy back), run back to back
in this one process with one torch thread. Per round, the sum over nodes divided by the
cores is the fastest a round could be. Evaluations are timed too, but kept out of the floor:
it is compared with rounds that contain no evaluation.

The work is timed in CPU seconds of this thread (`time.thread_time`), which other processes
on a shared machine do not inflate; wall-clock time is kept beside it.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from bench_e2e import CONFIG, DPY, DPY_HEADER, REPO, Failure, Run, cpu_count, overrides_for
from report import Section, Verdict, figure_table, ms
from sampler import value_at

from dlactor.config import RunConfig, load_config
from dlactor.context import RoundContext
from dlactor.launch.plan import Plan, make_plan, node_env
from dlactor.launch.worker import run_event_loop
from dlactor.messages import Payload

OVERHEAD_TARGET = 0.20
FLOOR_NODES = (16, 64)
FLOOR_PASSES = 3


@dataclass
class Member:
    """One node's computation, without its node."""

    node: int
    model: Any
    trainer: Any
    sharing: Any
    topology: Any


@dataclass(frozen=True)
class Pass:
    """One pass over the run's rounds. Per round, summed over every node: CPU and wall
    seconds of each kind of work."""

    nodes: int
    cores: int
    train_cpu: list[float]
    train_wall: list[float]
    aggregate_cpu: list[float]
    aggregate_wall: list[float]
    eval_cpu: float  # all evaluations of all nodes

    def _round(self, a: list[float], b: list[float]) -> float:
        """Median over rounds 1.. (round 0 warms up) of (a + b) / cores."""
        return statistics.median(x + y for x, y in zip(a[1:], b[1:], strict=True)) / self.cores

    @property
    def round_cpu(self) -> float:
        return self._round(self.train_cpu, self.aggregate_cpu)

    @property
    def round_wall(self) -> float:
        return self._round(self.train_wall, self.aggregate_wall)

    @property
    def cpu_per_node_round(self) -> float:
        """All the work a node does in a round on average, evaluations included."""
        total = sum(self.train_cpu) + sum(self.aggregate_cpu) + self.eval_cpu
        return total / (self.nodes * len(self.train_cpu))


@dataclass(frozen=True)
class Floor:
    """Several passes over the same rounds; the floor is the fastest pass (a floor is a lower
    bound, and on a shared machine even CPU time per instruction varies: SMT siblings,
    caches, the hypervisor)."""

    nodes: int
    passes: list[Pass]
    #: CPU seconds per node-round of the same computation with one process per node
    #: (``measure_process_floor``), evaluations included.
    process_cpu: float | None = None
    #: The same with the round's messages exchanged over TCP (``measure_message_floor``).
    message_cpu: float | None = None

    @property
    def best(self) -> Pass:
        return min(self.passes, key=lambda p: p.round_cpu)

    @property
    def round_cpu(self) -> float:
        return self.best.round_cpu

    @property
    def round_wall(self) -> float:
        return self.best.round_wall

    @property
    def cpu_per_node_round(self) -> float:
        return min(p.cpu_per_node_round for p in self.passes)

    @property
    def spread(self) -> str:
        values = sorted(p.round_cpu for p in self.passes)
        return f"{values[0] * 1e3:.1f}-{values[-1] * 1e3:.1f}"


def config_for(nodes: int) -> RunConfig:
    overrides = [f"nodes={nodes}", *overrides_for(nodes)]
    return load_config(REPO / CONFIG, overrides)


def _member(plan: Plan, node: int) -> Member:
    cfg = plan.config
    env = node_env(plan, node, copy.deepcopy(plan.model))
    return Member(
        node,
        env.model,
        cfg.training.build(env),
        cfg.sharing.build(env),
        cfg.topology.build(env),
    )


def _evaluates(cfg: RunConfig, r: int) -> bool:
    return (r + 1) % cfg.evaluation.every == 0 or r == cfg.rounds - 1


class _Clock:
    """Accumulates CPU and wall seconds of the blocks it times."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> None:
        self._c, self._w = time.thread_time(), time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.thread_time() - self._c
        self.wall += time.perf_counter() - self._w


async def _round(members: list[Member], r: int, evaluate: bool) -> tuple[_Clock, ...]:
    train, aggregate, evaluation = _Clock(), _Clock(), _Clock()
    for m in members:
        with train:
            m.trainer.train_steps()
    contexts = [RoundContext(node=m.node, round=r, model=m.model) for m in members]
    outgoing = {}
    for m, ctx in zip(members, contexts, strict=True):
        with aggregate:
            outgoing[m.node] = await m.sharing.outgoing(ctx)
    for m, ctx in zip(members, contexts, strict=True):
        with aggregate:
            await _aggregate(m, ctx, outgoing)
    if evaluate:
        for m in members:
            with evaluation:
                m.trainer.evaluate_now()
    return train, aggregate, evaluation


async def _aggregate(m: Member, ctx: RoundContext, shares: dict[int, Any]) -> None:
    """The node's D-PSGD step: its neighbours' ``shares`` of the round, weighted."""
    ctx.peers = await m.topology.neighbors(m.node, ctx.round)
    ctx.weights = await m.topology.weights(m.node, ctx.round)
    await m.sharing.aggregate(ctx, {p: shares[p] for p in ctx.peers})


async def _pass(cfg: RunConfig, members: list[Member]) -> Pass:
    clocks = [await _round(members, r, _evaluates(cfg, r)) for r in range(cfg.rounds)]
    return Pass(
        nodes=len(members),
        cores=cpu_count(),
        train_cpu=[c[0].cpu for c in clocks],
        train_wall=[c[0].wall for c in clocks],
        aggregate_cpu=[c[1].cpu for c in clocks],
        aggregate_wall=[c[1].wall for c in clocks],
        eval_cpu=sum(c[2].cpu for c in clocks),
    )


def measure_floor(nodes: int, passes: int = FLOOR_PASSES) -> Floor:
    """The compute floor of the benchmark's run at ``nodes`` nodes (torch must already be
    limited to one thread, as in every node): ``passes`` passes over the run's rounds, the
    nodes' models carrying on from one pass to the next."""
    plan = make_plan(config_for(nodes))
    members = [_member(plan, i) for i in range(nodes)]

    async def all_passes() -> list[Pass]:
        return [await _pass(plan.config, members) for _ in range(passes)]

    return Floor(nodes, asyncio.run(all_passes()))


def measure_process_floor(nodes: int) -> float:
    """The floor's computation with every node in a process of its own, as in a run: CPU
    seconds per node-round (rounds 1.., evaluations included), the mean over the nodes.

    The processes are forked from this one after the plan and the nodes' trainers are
    built (as a launcher forks its template), and they keep in step as a run's nodes do:
    after each round a node writes one byte to this process and sleeps until every node has
    (one wake-up per round; a run's nodes wake up once per message). Each aggregates its
    neighbours' vectors of round 0 (the same arithmetic as fresh ones). What this adds to
    the one-process floor is the cost of N processes sharing the cores: their switches and
    cold caches, the cores' time slices, the kernel's wake-ups."""
    plan = make_plan(config_for(nodes))
    members = [_member(plan, i) for i in range(nodes)]
    shares = asyncio.run(_first_shares(members))
    pipes = []
    for m in members:
        up, down = os.pipe(), os.pipe()
        if os.fork() == 0:

            def node(
                m: Member = m, up: tuple[int, int] = up, down: tuple[int, int] = down
            ) -> float:
                os.close(up[0])
                os.close(down[1])
                return asyncio.run(_node_rounds(plan.config, m, shares, up[1], down[0]))

            _child(up[1], node)
        os.close(up[1])
        os.close(down[0])
        pipes.append((up[0], down[1]))
    for _ in range(plan.config.rounds):
        for r, _w in pipes:
            os.read(r, 1)
        for _r, w in pipes:
            os.write(w, b"x")
    per_node = [struct.unpack("d", os.read(r, 8))[0] for r, _w in pipes]
    for r, w in pipes:
        os.close(r)
        os.close(w)
    for _ in members:
        os.wait()
    return statistics.fmean(per_node)


def _child(report: int, node: Callable[[], float]) -> NoReturn:
    """A forked node process: run ``node`` (its rounds), write the CPU seconds per round it
    returns to ``report``, and exit; whatever happens, it never returns into the benchmark."""
    status = 1
    try:
        os.write(report, struct.pack("d", node()))
        status = 0
    finally:
        os._exit(status)


async def _first_shares(members: list[Member]) -> dict[int, Any]:
    return {
        m.node: await m.sharing.outgoing(RoundContext(node=m.node, round=0, model=m.model))
        for m in members
    }


async def _node_rounds(
    cfg: RunConfig, m: Member, shares: dict[int, Any], up: int, down: int
) -> float:
    """One node's rounds in its own process: train, aggregate, evaluate on the run's
    evaluation rounds, report, wait for the rest."""
    started = 0.0
    for r in range(cfg.rounds):
        if r == 1:
            started = time.process_time()
        m.trainer.train_steps()
        await _aggregate(m, RoundContext(node=m.node, round=r, model=m.model), shares)
        if _evaluates(cfg, r):
            m.trainer.evaluate_now()
        os.write(up, b"x")
        os.read(down, 1)
    return (time.process_time() - started) / (cfg.rounds - 1)


def measure_message_floor(nodes: int) -> float:
    """The process-per-node floor plus the round's messages, as plainly as an asyncio node
    process can exchange them: CPU seconds per node-round (rounds 1.., evaluations
    included), the mean over the nodes.

    Each node process runs dlactor's event loop (uvloop) and, per round, trains, sends its
    sharing strategy's vector to every neighbour of the run's topology over a TCP connection
    on 127.0.0.1 (one per edge, opened before forking) behind a 4-byte length, reads each
    neighbour's, aggregates them and evaluates on the run's evaluation rounds. The messages
    pace the rounds, as in a run. Left out, against a node: the codec, the checks, the
    mailbox, the training hand-off, the handshakes, the records and the launcher."""
    plan = make_plan(config_for(nodes))
    members = [_member(plan, i) for i in range(nodes)]
    cfg = plan.config
    if cfg.topology.kind != "regular" or cfg.sharing.kind != "full":
        raise ValueError(  # what the floor's exchange assumes: fixed peers, one float32 vector
            "the message floor takes a static topology and full sharing, got "
            f"{cfg.topology.kind!r} and {cfg.sharing.kind!r}"
        )
    peers = asyncio.run(_round0_peers(members))
    ends: dict[tuple[int, int], socket.socket] = {}  # (node, peer) -> node's end
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for a in range(nodes):
            for b in (p for p in peers[a] if p > a):
                ends[(a, b)] = socket.create_connection(listener.getsockname()[:2])
                ends[(b, a)] = listener.accept()[0]
    reads = []
    for m in members:
        up = os.pipe()
        if os.fork() == 0:

            def node(m: Member = m, up: tuple[int, int] = up) -> float:
                os.close(up[0])
                for (a, _b), sock in ends.items():
                    if a != m.node:
                        sock.close()
                mine = {b: sock for (a, b), sock in ends.items() if a == m.node}
                return run_event_loop(_messaging_rounds(plan.config, m, mine))

            _child(up[1], node)
        os.close(up[1])
        reads.append(up[0])
    for sock in ends.values():
        sock.close()
    per_node = [struct.unpack("d", os.read(r, 8))[0] for r in reads]
    for r in reads:
        os.close(r)
    for _ in members:
        os.wait()
    return statistics.fmean(per_node)


async def _round0_peers(members: list[Member]) -> dict[int, frozenset[int]]:
    return {m.node: frozenset(await m.topology.neighbors(m.node, 0)) for m in members}


async def _messaging_rounds(cfg: RunConfig, m: Member, socks: dict[int, socket.socket]) -> float:
    streams = {p: await asyncio.open_connection(sock=sock) for p, sock in socks.items()}
    started = 0.0
    for r in range(cfg.rounds):
        if r == 1:
            started = time.process_time()
        m.trainer.train_steps()
        ctx = RoundContext(node=m.node, round=r, model=m.model)
        ctx.sent = await m.sharing.outgoing(ctx)
        [(name, vector)] = ctx.sent.tensors.items()
        data = vector.numpy().tobytes()
        for _, writer in streams.values():
            writer.write(struct.pack("<I", len(data)) + data)
        received = {}
        for p, (reader, _) in streams.items():
            (size,) = struct.unpack("<I", await reader.readexactly(4))
            values = np.frombuffer(bytearray(await reader.readexactly(size)), dtype=np.float32)
            received[p] = Payload({name: torch.from_numpy(values)})
        await _aggregate(m, ctx, received)
        if _evaluates(cfg, r):
            m.trainer.evaluate_now()
    for _, writer in streams.values():
        writer.close()
    return (time.process_time() - started) / (cfg.rounds - 1)


def run_floors(
    progress: Callable[[str], None], node_counts: Sequence[int] = FLOOR_NODES
) -> list[Floor]:
    floors = []
    for nodes in node_counts:
        progress(f"compute floor: {nodes} nodes' training and aggregation in one process")
        floor = measure_floor(nodes)
        progress(f"compute floor: {nodes} nodes: {floor.round_cpu * 1e3:.1f} ms per round")
        progress(f"compute floor: {nodes} nodes' training and aggregation, a process each")
        process_cpu = measure_process_floor(nodes)
        progress(f"compute floor: {nodes} processes exchanging the round's messages")
        message_cpu = measure_message_floor(nodes)
        floor = dataclasses.replace(floor, process_cpu=process_cpu, message_cpu=message_cpu)
        progress(
            f"compute floor: {nodes} processes: {process_cpu * 1e3:.2f} ms of CPU per "
            f"node-round, {message_cpu * 1e3:.2f} ms with the messages (one process: "
            f"{floor.cpu_per_node_round * 1e3:.2f} ms)"
        )
        floors.append(floor)
    return floors


# ---------------------------------------------------------------- the run's side


def node_cpu_per_node_round(run: Run) -> tuple[float, float, float] | None:
    """CPU seconds per node-round of the node processes, of the launcher, and of the nodes'
    loop threads (part of the first), from the start barrier to the last sampler tick at
    which every node was still alive, over the node-rounds completed in that span (from the
    nodes' `t_wall`)."""
    barrier = run.barrier_at
    full = [t for t in run.watch.ticks if t.alive == run.nodes]
    if barrier is None or not full:
        return None
    end = full[-1]
    at = [value_at(run.watch.ticks, barrier, f) for f in _CPU_FIELDS]
    done = sum(barrier + r["t_wall"] <= end.t for rs in run.records.values() for r in rs)
    if done == 0 or any(v is None for v in at):
        return None
    nodes, launcher, loops = (
        (getattr(end, f) - (v or 0.0)) / done for f, v in zip(_CPU_FIELDS, at, strict=True)
    )
    return nodes, launcher, loops


_CPU_FIELDS = ("nodes_cpu_s", "launcher_cpu_s", "nodes_loop_cpu_s")


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Pair:
    """A run and its compute floor, with the CPU its processes used per node-round."""

    run: Run
    floor: Floor
    cpu: tuple[float, float, float] | None  # nodes', launcher's, nodes' loop threads'

    @property
    def overhead(self) -> float | None:
        measured = self.run.plain_round_median
        return None if measured is None else (measured - self.floor.round_cpu) / measured

    @property
    def framework_cpu(self) -> float | None:
        """The nodes' CPU per node-round beyond the same compute and messages in a process
        per node (the message floor): what is dlactor's own."""
        if self.cpu is None or self.floor.message_cpu is None:
            return None
        return self.cpu[0] - self.floor.message_cpu

    @property
    def messages_cpu(self) -> float | None:
        """What exchanging the round's messages adds to the process-per-node floor."""
        if self.floor.message_cpu is None or self.floor.process_cpu is None:
            return None
        return self.floor.message_cpu - self.floor.process_cpu


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _cpu(p: Pair, i: int) -> str:
    return "-" if p.cpu is None else ms(p.cpu[i], 2)


ROWS: list[tuple[str, Callable[[Pair], str], str, str]] = [
    (
        "run: median round without an evaluation in it (ms)",
        lambda p: ms(p.run.plain_round_median, 1),
        "",
        DPY["round"],
    ),
    (
        "floor: training steps of all nodes, per round, CPU (ms)",
        lambda p: ms(_median1(p.floor.best.train_cpu), 1),
        "",
        "",
    ),
    (
        "floor: aggregation of all nodes, per round, CPU (ms)",
        lambda p: ms(_median1(p.floor.best.aggregate_cpu), 1),
        "",
        "",
    ),
    (
        f"**compute floor**: (training + aggregation) / {cpu_count()} cores (ms)",
        lambda p: ms(p.floor.round_cpu, 1),
        "",
        "",
    ),
    (
        f"  the {FLOOR_PASSES} passes' floors, fastest to slowest (ms)",
        lambda p: p.floor.spread,
        "",
        "",
    ),
    (
        "  the fastest pass timed by the wall clock (ms)",
        lambda p: ms(p.floor.round_wall, 1),
        "",
        "",
    ),
    (
        "**overhead**: (round - floor) / round",
        lambda p: _pct(p.overhead),
        f"<= {OVERHEAD_TARGET:.0%}",
        "",
    ),
    (
        "run: node processes' CPU per node-round, evaluations included (ms)",
        lambda p: _cpu(p, 0),
        "",
        "",
    ),
    (
        "  of it, the nodes' loop threads: the protocol (codec, sockets, checks, records), "
        "the aggregation, and training and evaluation short enough to run there (ms)",
        lambda p: _cpu(p, 2),
        "",
        "",
    ),
    (
        "  of it, their compute threads: training and evaluation handed off the loop (ms)",
        lambda p: "-" if p.cpu is None else ms(p.cpu[0] - p.cpu[2], 2),
        "",
        "",
    ),
    (
        "floor: CPU per node-round, evaluations included (ms)",
        lambda p: ms(p.floor.cpu_per_node_round, 2),
        "",
        "",
    ),
    (
        "floor, a process per node (one wake-up per round): CPU per node-round, evaluations "
        "included (ms)",
        lambda p: ms(p.floor.process_cpu, 2),
        "",
        "",
    ),
    (
        "  against the one-process floor: the cost of N processes on the cores",
        lambda p: _ratio(p.floor.process_cpu, p.floor.cpu_per_node_round),
        "",
        "",
    ),
    (
        "floor, a process per node exchanging the round's messages over TCP (an asyncio loop, "
        "a length prefix, no codec or checks): CPU per node-round, evaluations included (ms)",
        lambda p: ms(p.floor.message_cpu, 2),
        "",
        "",
    ),
    (
        "  the messages' cost, against the process-per-node floor (ms)",
        lambda p: ms(p.messages_cpu, 2),
        "",
        "",
    ),
    (
        "run: node processes' CPU per node-round beyond the message floor: dlactor's own (ms)",
        lambda p: ms(p.framework_cpu, 2),
        "",
        "",
    ),
    ("run: launcher's CPU per node-round (ms)", lambda p: _cpu(p, 1), "", ""),
    (
        "other processes' CPU during the run; stolen by the hypervisor (shares of the machine)",
        lambda p: f"{p.run.others_share:.0%}; {p.run.steal_share:.0%}",
        "",
        "",
    ),
]


def overhead_section(
    runs: list[Run], floors: list[Floor], failures: list[Failure]
) -> tuple[Section, list[Verdict]]:
    pairs = [
        Pair(r, f, node_cpu_per_node_round(r)) for f in floors for r in runs if r.nodes == f.nodes
    ]
    table = figure_table(pairs, lambda p: p.run.nodes, ROWS, DPY_HEADER)
    verdicts = [_verdict(p) for p in pairs]
    verdicts += [
        Verdict(_target(f.nodes), f"not measured: {f.reason}", None)
        for f in failures
        if f.nodes in FLOOR_NODES
    ]
    section = Section(
        "5. Round overhead against the compute floor", _INTRO, [table] if pairs else []
    )
    section.notes += [_cpu_note(p, p.cpu) for p in pairs if p.cpu is not None]
    section.notes += [f"Target: {v.target}: {v.measured}, {v.markdown}." for v in verdicts]
    return section, verdicts


def _median1(values: list[float]) -> float:
    return statistics.median(values[1:])


def _target(nodes: int) -> str:
    return f"round overhead <= {OVERHEAD_TARGET:.0%} of the round at {nodes} nodes"


def _verdict(p: Pair) -> Verdict:
    measured = (
        f"{_pct(p.overhead)} ({ms(p.run.plain_round_median, 1)} ms round, "
        f"{ms(p.floor.round_cpu, 1)} ms floor)"
    )
    met = None if p.overhead is None else p.overhead <= OVERHEAD_TARGET
    return Verdict(_target(p.run.nodes), measured, met, "" if met is not False else _limit(p))


def _limit(p: Pair) -> str:
    if p.cpu is None:
        return ""
    nodes_cpu, launcher_cpu, loop_cpu = p.cpu
    busy = (nodes_cpu + launcher_cpu) * p.run.nodes / cpu_count()
    share = 1 - p.floor.cpu_per_node_round / nodes_cpu
    text = (
        f"CPU: nodes use {ms(nodes_cpu, 2)} ms of CPU per node-round against "
        f"{ms(p.floor.cpu_per_node_round, 2)} ms of compute ({share:.0%} of their CPU is beyond "
        f"the one-process floor); with the launcher's, {ms(busy, 0)} ms of CPU per "
        f"{ms(p.run.plain_round_median, 0)} ms round on {cpu_count()} cores"
    )
    process = p.floor.process_cpu
    if process is None or p.framework_cpu is None:
        return text
    return (
        f"{text}. The same compute with a process per node takes {ms(process, 2)} ms per "
        f"node-round ({process / p.floor.cpu_per_node_round:.2f}x: processes sharing "
        f"{cpu_count()} cores), and {ms(p.floor.message_cpu, 2)} ms with the round's "
        f"messages over TCP; beyond that, the framework's own is {ms(p.framework_cpu, 2)} "
        f"ms ({p.framework_cpu / nodes_cpu:.0%} of the nodes' CPU). By thread, a node's "
        f"event loop (the protocol, the aggregation, short training) used {ms(loop_cpu, 2)} "
        f"ms per node-round and its compute thread (training and evaluation handed off) "
        f"{ms(nodes_cpu - loop_cpu, 2)} ms"
    )


def _cpu_note(p: Pair, cpu: tuple[float, float, float]) -> str:
    nodes_cpu, launcher_cpu, _ = cpu
    per_round = (nodes_cpu + launcher_cpu) * p.run.nodes / cpu_count()
    return (
        f"{p.run.nodes} nodes: the node processes used {ms(nodes_cpu, 2)} ms of CPU per "
        f"node-round ({nodes_cpu / p.floor.cpu_per_node_round:.1f}x the "
        f"{ms(p.floor.cpu_per_node_round, 2)} ms the same work takes in one process), and the "
        f"launcher {ms(launcher_cpu, 2)} ms; {p.run.nodes} nodes x that / {cpu_count()} cores "
        f"= {ms(per_round, 1)} ms of CPU per round, against a "
        f"{ms(p.run.plain_round_median, 1)} ms median round."
    )


_INTRO = (
    "Target: for 16 and 64 nodes, the median round time against the compute floor, the same "
    "local training steps, all nodes' worth, run back to back in one process divided by the "
    "cores; overhead at most 20% of the round.\n\n"
    "The floor: this benchmark builds the run's plan (`make_plan` on the same config and "
    "`--set` overrides) and every node's trainer, sharing and topology as a node does "
    "(`node_env`, then the config's `build`), then runs the run's 40 rounds in this process "
    f"with one torch thread, {FLOOR_PASSES} times over (the models carry on): each round, "
    "every node's `SGDTrainer.train_steps` (10 minibatch "
    "steps), then every node's D-PSGD aggregation on that round's vectors (`outgoing`, the "
    "topology's neighbours and Metropolis-Hastings weights, `aggregate`: weighted sum and "
    "copy back). Not in the floor: encoding, sending, receiving, decoding and checking "
    "messages, the event loop, the training hand-off, the JSONL records, and "
    "evaluations. Each piece is timed in CPU seconds of this thread (`time.thread_time`), "
    "which other processes' load inflates less than wall-clock time (though on a shared "
    "virtual machine it moves too: the passes' spread shows by how much). A pass's floor is "
    "the median over rounds 1-39 of the sum over nodes, divided by the "
    f"{cpu_count()} cores; the floor is the fastest pass's.\n\n"
    "The run's round: the median of every node's intervals between consecutive rounds' "
    "`t_wall`, leaving out round 0 and each round that follows an evaluation (so neither "
    "side has an evaluation in it). Overhead = (round - floor) / round.\n\n"
    "To tell CPU overhead from waiting, the sampler reads every node thread's CPU time "
    "(/proc/<pid>/task/<tid>/schedstat) at each tick: the CPU the nodes and the launcher "
    "used from the start barrier to the last tick with every node alive, divided by the "
    "node-rounds completed in that span, is set against the floor's CPU per node-round "
    "(here with evaluations on both sides).\n\n"
    "Two more floors place that CPU. The process-per-node floor runs the same computation "
    "with each node in a process of its own, forked from the benchmark as a launcher forks, "
    "woken once per round: what N processes cost on the cores. The message floor adds the "
    "round's messages to it: each node process runs dlactor's event loop (uvloop) and sends "
    "its vector to its neighbours of the run's topology over TCP on 127.0.0.1, behind a "
    "4-byte length, reading theirs before it aggregates, so the messages pace the rounds as "
    "in a run. What a run's nodes use beyond the message floor is dlactor's own: the codec, "
    "the checks, the mailbox, the training hand-off, the records and the launcher's "
    "progress reports. A node trains on its event loop when a round's training takes under "
    "10 ms of CPU (`Handoff`), and in its compute thread otherwise and in its first round, "
    "so the split by thread puts short training on the loop's side."
)


__all__ = ["Floor", "measure_floor", "overhead_section", "run_floors"]
