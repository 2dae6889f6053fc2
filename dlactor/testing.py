"""Run a whole network of nodes inside one process, on the in-memory transport.

This is how protocol tests run (and how users test their strategy plugins with
pytest-asyncio): the same Node, strategies and codec as a launched run, without
processes or sockets::

    plan = make_plan(config)
    records = await run_in_memory(plan)

For tests and benchmarks that need a Ray cluster started beforehand (as a cluster's users
have it, rather than the one `dlactor launch` starts itself): ``ray_head``, or
``start_ray`` and ``stop_ray`` for more machines, with ``ray_environment`` for its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import torch

from dlactor.context import Service
from dlactor.launch.plan import Plan, build_node, build_service
from dlactor.network.model import NetworkModel
from dlactor.node.node import Node, Record
from dlactor.security.credentials import Credentials, RunKeys
from dlactor.security.identity import LAUNCHER
from dlactor.transport.base import Address, Deliver
from dlactor.transport.emulated import EmulatedTransport
from dlactor.transport.memory import MemoryNetwork

__all__ = [
    "build_network",
    "build_services",
    "build_tcp_nodes",
    "credentials",
    "emulated_tcp",
    "open_as",
    "run_in_memory",
    "run_nodes",
]


def credentials(
    processes: int, *, run_id: str = "test-run", tls: bool = False, keys: RunKeys | None = None
) -> list[Credentials]:
    """Credentials for processes ``0..processes-1`` of one run (and the launcher's, last),
    for TCP transports built in a test process: every key is kept here, none dropped."""
    keys = keys or RunKeys.make(range(processes))
    if tls:
        keys.enable_tls(run_id)
    ids = [*range(processes), LAUNCHER]
    return [keys.credentials(p, run_id, keep_others=True) for p in ids]


def emulated_tcp(
    model: NetworkModel, process: int, creds: Credentials, deliver: Deliver
) -> EmulatedTransport:
    """Process ``process``'s TCP transport (on 127.0.0.1) behind ``model``'s emulated
    network, on a clock of its own: to measure or test the emulation over real sockets."""
    from dlactor.transport.tcp import TcpTransport

    return EmulatedTransport(
        lambda d: TcpTransport(credentials=creds, deliver=d),
        deliver,
        process=process,
        model=model,
        clock=model.clock(process),
    )


async def open_as(
    address: Address, credentials: Credentials, target: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``address`` on which ``credentials``' process has done the
    handshake with process ``target``: a test writes whatever frames it likes after it, as
    a peer that knows the run's keys could."""
    from dlactor.security.handshake import Initiator
    from dlactor.transport.tcp import read_handshake_frame
    from dlactor.wire.codec import encode

    tls = credentials.tls
    reader, writer = await asyncio.open_connection(
        *address, ssl=tls.client if tls is not None else None
    )
    initiator = Initiator(credentials.run_id, credentials.identity, credentials.ring, target)
    try:
        writer.writelines(encode(initiator.hello()))
        proof = initiator.on_challenge(await read_handshake_frame(reader))
        writer.writelines(encode(proof))
        await writer.drain()
    except BaseException:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
        raise
    return reader, writer


def build_network(
    plan: Plan,
    *,
    codec: bool = True,
    models: Sequence[torch.nn.Module] | None = None,
    on_round: Callable[[Record], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[MemoryNetwork, list[Node]]:
    """One node per id on a fresh in-memory network, then the algorithm's servers; each gets
    its own copy of the model (``models[i]`` when given, for the learning nodes). With
    ``run_dir``, they take checkpoints there (``[checkpoint]``), and a resumed plan's nodes
    start from theirs."""
    net = MemoryNetwork(codec=codec)
    nodes = [
        build_node(
            plan,
            i,
            partial(net.transport, i),
            model=copy.deepcopy(plan.model) if models is None or i in plan.servers else models[i],
            on_round=on_round,
            run_dir=run_dir,
        )
        for i in [*range(plan.config.nodes), *plan.servers]
    ]
    return net, nodes


def build_tcp_nodes(plan: Plan, **transport: Any) -> list[Node]:
    """One node per id, each on its own TCP transport on 127.0.0.1 with its own credentials
    from the plan's keys (all kept in this process), and its own copy of the model; start
    them, then ``run_nodes(nodes, addresses)`` with the addresses ``start`` returned.
    ``transport`` goes to every ``TcpTransport`` (``frame_timeout``, ``max_frame``...)."""
    from dlactor.transport.tcp import TcpTransport

    def tcp(node: int) -> Callable[[Deliver], TcpTransport]:
        creds = plan.keys.credentials(node, plan.run_id, keep_others=True)
        return lambda deliver: TcpTransport(credentials=creds, deliver=deliver, **transport)

    return [
        build_node(plan, i, tcp(i), model=copy.deepcopy(plan.model))
        for i in range(plan.config.nodes)
    ]


def build_services(plan: Plan, net: MemoryNetwork) -> list[Service]:
    """The topology's service processes (the peer sampler), on the same network."""
    return [
        build_service(plan, process, partial(net.transport, process))
        for process in range(plan.config.nodes, plan.servers.start)
    ]


async def run_in_memory(
    plan: Plan,
    *,
    codec: bool = True,
    models: Sequence[torch.nn.Module] | None = None,
    on_round: Callable[[Record], None] | None = None,
    run_dir: Path | None = None,
) -> dict[int, list[Record]]:
    """Run every round of every node concurrently; returns each node's records (and each
    server's, under its process id). ``run_dir``: as ``build_network``'s."""
    records: dict[int, list[Record]] = {i: [] for i in [*range(plan.config.nodes), *plan.servers]}

    def collect(record: Record) -> None:
        records[record["node"]].append(record)
        if on_round is not None:
            on_round(record)

    net, nodes = build_network(plan, codec=codec, models=models, on_round=collect, run_dir=run_dir)
    actors: list[Node | Service] = [*nodes, *build_services(plan, net)]
    for actor in actors:
        await actor.start()
    await run_nodes(actors)
    return records


async def run_nodes(
    nodes: Sequence[Node | Service], addresses: Mapping[int, Address] | None = None
) -> None:
    """Connect started nodes (``addresses``: the TCP address book; the memory network needs
    none), run all their rounds concurrently, and stop every one of them however it ends."""
    t0 = time.time()  # the start barrier's, for every process
    agreement = {n.node: n.agreement.public for n in nodes if isinstance(n, Node) and n.agreement}
    for node in nodes:
        node.connect(addresses or {}, t0)
        if isinstance(node, Node):
            node.learn_agreement(agreement)
    try:
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(node.run())
    finally:
        for node in nodes:
            await node.stop()


def ray_environment(tmp: str) -> dict[str, str]:
    """This process's environment, with Ray's token authentication on a fresh token of its
    own and Ray's temp files under ``tmp`` (short: Ray's unix sockets live under it): a
    cluster started with it, and a launcher given it, know the token; nothing else does."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_TMPDIR": tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def start_ray(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start ARGS --block` (its output in ``log``), once Ray says its runtime started.
    Stopping that process (``stop_ray``) stops every process it started, and only those
    (unlike `ray stop`, which stops every Ray process of the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    with log.open("w") as f:
        proc = subprocess.Popen(
            [ray, "start", *args, "--block", "--disable-usage-stats"],
            stdout=f, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    try:
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    except BaseException:
        stop_ray(proc)
        raise
    return proc


@contextlib.contextmanager
def ray_head(
    env: dict[str, str], *args: str, cpus: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A one-machine Ray cluster for as long as the block runs: ``ray start --head`` on a
    free loopback port with ``cpus`` CPUs, no dashboard and ``args`` (its log is head.log in
    ``env``'s RAY_TMPDIR, see ``ray_environment``); its address and process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head_args = ["--head", f"--port={port}", "--include-dashboard=false", f"--num-cpus={cpus}"]
    head = start_ray([*head_args, *args], Path(env["RAY_TMPDIR"]) / "head.log", env)
    try:
        yield f"127.0.0.1:{port}", head
    finally:
        stop_ray(head)


def stop_ray(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then whatever it started and did not stop is killed by pid."""
    started = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(started, timeout=10)
    for p in alive:
        p.kill()
