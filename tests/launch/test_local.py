"""The local backend's process handling: forking, Ctrl-C, reaping, and a node process's
first steps. Node processes are really forked from this test process."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dlactor.cli import app
from dlactor.launch import local, worker
from dlactor.messages import Done, Message, Register, Start, Stop
from dlactor.security.credentials import Credentials
from dlactor.security.identity import Identity
from dlactor.testing import credentials
from tests.conftest import small_plan

ROOT = Path(__file__).parents[2]
# Forking a test process that has threads (torch's, asyncio's executor) is what these tests
# do on purpose; Python >= 3.12 warns about it.
forks = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """launch_local sets torch's thread count for the nodes it forks: restore ours."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def forking(monkeypatch: pytest.MonkeyPatch, then: Any) -> list[BaseProcess]:
    """Wrap the launcher's per-node fork: ``then(node)`` first (it may raise, as a failing
    fork does), then fork for real and ``then(node, process)``."""
    started: list[BaseProcess] = []
    real = local._start_node

    def start(ctx: Any, plan: Any, node: int, *args: Any) -> BaseProcess:
        then(node, None)
        p = real(ctx, plan, node, *args)
        started.append(p)
        then(node, p)
        return p

    monkeypatch.setattr(local, "_start_node", start)
    return started


@forks
def test_a_fork_that_fails_halfway_reaps_the_nodes_already_forked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_at_the_third(node: int, p: BaseProcess | None) -> None:
        if node == 2 and p is None:
            raise OSError("fork failed")

    started = forking(monkeypatch, fail_at_the_third)

    with pytest.raises(OSError, match="fork failed"):
        local.launch_local(small_plan("nodes=4"), tmp_path, show_progress=False)

    assert len(started) == 2
    assert all(p.exitcode is not None for p in started), "a forked node was left running"


def ctrl_c_before_the_supervisor(main: Any) -> None:
    """Stands in for ``run_event_loop``: Ctrl-C arrives before the supervisor's handler."""
    main.close()
    raise KeyboardInterrupt


@forks
def test_ctrl_c_while_starting_neither_kills_a_node_early_nor_leaves_one_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's Ctrl-C reaches every process of the group, the nodes just forked too:
    they must not die of it before they ignore SIGINT. Before the supervisor handles SIGINT,
    the launcher ends the run as interrupted, exit 130, and reaps every node."""
    seen: list[int | None] = []
    real_child = local._child

    def slow_child(*args: Any) -> None:  # widens the window before the node ignores SIGINT
        time.sleep(0.5)
        real_child(*args)

    def ctrl_c(node: int, p: BaseProcess | None) -> None:
        if p is None:
            return
        assert p.pid is not None
        time.sleep(0.1)  # after CPython's own after-fork reset of pending signals
        os.kill(p.pid, signal.SIGINT)
        if node == 3:
            time.sleep(1.0)
            seen.extend(q.exitcode for q in started)

    monkeypatch.setattr(local, "_child", slow_child)
    monkeypatch.setattr(local, "run_event_loop", ctrl_c_before_the_supervisor)
    started = forking(monkeypatch, ctrl_c)
    result = CliRunner().invoke(
        app,
        ["launch", str(ROOT / "configs/quickstart.toml"), "--out", str(tmp_path), "--no-progress",
         "--set", "nodes=4", "--set", "topology.degree=3"],
    )  # fmt: skip

    assert seen == [None] * 4, "a node died of the Ctrl-C meant for the launcher"
    assert result.exit_code == 130, result.output
    assert len(started) == 4 and all(p.exitcode is not None for p in started)
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)


@forks
def test_reaping_lets_nodes_finish_within_the_grace_period_then_kills_the_rest() -> None:
    ctx = mp.get_context("fork")
    finishing = ctx.Process(target=_exit_after, args=(0.3,))
    stuck = ctx.Process(target=_exit_after, args=(60,))
    finishing.start()
    stuck.start()
    t0 = time.monotonic()

    local.reap([finishing, stuck], grace_s=2.0)

    assert finishing.exitcode == 0
    assert stuck.exitcode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


@forks
def test_a_node_whose_launcher_died_before_it_asked_to_die_with_it_does_not_run() -> None:
    """PR_SET_PDEATHSIG only covers a parent alive when it is set: a node whose launcher is
    already gone (it belongs to another parent now) must notice and not run."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # pragma: no cover - the stand-in launcher, then its node
        try:
            launcher = os.getpid()
            if os.fork() == 0:
                while os.getppid() == launcher:  # until the launcher has exited
                    time.sleep(0.01)
                runs = worker._die_with_parent(launcher)
                os.write(write_end, b"runs" if runs else b"stops")
        finally:
            os._exit(0)
    os.close(write_end)
    os.wait()
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"stops"


def test_a_node_process_uses_one_thread_for_torch_and_openmp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    torch.set_num_threads(2)

    worker._limit_threads(1)

    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 1


class StandInNode:
    """What the node lifecycle drives: start, connect, run."""

    node = 0

    def __init__(self, run: Any) -> None:
        self._run = run

    async def start(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def connect(self, addresses: Any, t0: float) -> None:
        pass

    async def run(self) -> None:
        await self._run()


class StandInControl:
    """A launcher that sends ``incoming``, then (unless ``linger``) ends the run once the
    node says Done, as the supervisor does when every process is done."""

    def __init__(self, *incoming: Message, linger: bool = False) -> None:
        self.sent: list[Message] = []
        self.incoming: asyncio.Queue[Message | None] = asyncio.Queue()
        self.linger = linger
        for msg in incoming:
            self.incoming.put_nowait(msg)

    async def send(self, msg: Message) -> None:
        self.sent.append(msg)
        if isinstance(msg, Done) and not self.linger:
            self.end()

    def end(self) -> None:
        self.incoming.put_nowait(None)  # the control connection closes: EOF

    async def receive(self) -> Message | None:
        return await self.incoming.get()


def leftover_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


START = Start(addresses={}, t0=0.0)


def node_credentials() -> Credentials:
    """Node 0's credentials, in a run of one node."""
    return credentials(1)[0]


def lifecycle(
    ctl: StandInControl,
    rounds: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0),
    credentials: Credentials | None = None,
) -> Coroutine[Any, Any, int]:
    """A node's lifecycle with a stand-in node running ``rounds`` and a stand-in launcher."""
    return worker._lifecycle(
        StandInNode(rounds),  # type: ignore[arg-type]
        ctl,  # type: ignore[arg-type]
        credentials or node_credentials(),
    )


async def test_a_finished_node_reports_done_and_leaves_no_task_behind() -> None:
    ctl = StandInControl(START)

    code = await lifecycle(ctl)

    assert code == worker.EXIT_DONE
    assert [type(m) for m in ctl.sent] == [Register, Done]
    assert leftover_tasks() == set()


async def test_a_done_node_stays_until_the_launcher_ends_the_run() -> None:
    """Peers still in their last round may talk to it (a gossip pick): a node that left at
    once would lose their messages, and they would wait a round timeout for the answer."""
    ctl = StandInControl(START, linger=True)
    life = asyncio.ensure_future(lifecycle(ctl))
    while Done not in map(type, ctl.sent):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not life.done()

    ctl.end()

    assert await life == worker.EXIT_DONE
    assert leftover_tasks() == set()


async def test_a_control_channel_that_breaks_after_done_still_ends_as_done() -> None:
    class Breaks(StandInControl):
        async def receive(self) -> Message | None:
            msg = await super().receive()
            if msg is None:
                raise ConnectionResetError("the launcher's connection was reset")
            return msg

    ctl = Breaks(START)
    code = await lifecycle(ctl)

    assert code == worker.EXIT_DONE
    assert leftover_tasks() == set()


async def test_a_node_learns_the_public_keys_of_the_address_book_at_the_start_barrier() -> None:
    """A process that made its own key (Ray) is in no ring but the launcher's: its key comes
    with the address book, over the control channel the launcher proved itself on."""
    joiner = Identity.generate(5)
    start = Start(addresses={5: ("127.0.0.1", 1)}, t0=0.0, keys={5: joiner.public})
    creds = node_credentials()
    assert 5 not in creds.ring

    code = await lifecycle(StandInControl(start), credentials=creds)

    assert code == worker.EXIT_DONE
    assert creds.ring[5] == joiner.public
    assert creds.ring.verify(5, joiner.sign(b"x"), b"x")


async def test_a_stop_cancels_the_rounds_and_leaves_no_task_behind() -> None:
    ctl = StandInControl(START, Stop("ctrl-c"))

    code = await lifecycle(ctl, lambda: asyncio.sleep(60))

    assert code == worker.EXIT_STOPPED
    assert leftover_tasks() == set()


async def test_a_failing_round_raises_its_own_exception_not_a_group() -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as info:
        await lifecycle(StandInControl(START), boom)

    assert traceback.format_exception(info.value)[-1] == "RuntimeError: boom\n"
    assert leftover_tasks() == set()


@pytest.mark.parametrize("tls", ["on", "off"])
def test_the_template_warms_openssl_up_only_for_a_run_with_tls(
    tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its nodes then share OpenSSL's set-up instead of each making its own."""
    from tests.conftest import small_plan

    plan = small_plan(f"security.tls={tls}")
    if tls == "on":
        plan.keys.enable_tls(plan.run_id)
    warmed: list[bool] = []
    monkeypatch.setattr(local, "warm_up_tls", lambda: warmed.append(True))
    with local.forking_template(plan):
        pass
    assert warmed == ([True] if tls == "on" else [])
