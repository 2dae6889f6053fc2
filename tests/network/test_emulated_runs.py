"""Whole runs on the in-memory transport behind the emulated network, on the virtual clock:
what the records say about time, and that the network changes time and nothing else."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from dlactor.launch.plan import make_plan
from dlactor.network.model import MBPS
from dlactor.testing import run_in_memory
from tests.algorithms.servers import server_config
from tests.conftest import small_plan

ROOT = Path(__file__).parents[2]
WAN = ("network.uplink_mbps=50", "network.downlink_mbps=50", "network.latency_ms=40")
PROFILE = ('network.compute="profile"', "network.step_ms=10")

Records = dict[int, list[dict[str, Any]]]


def _learning(records: Records) -> dict[int, list[tuple[Any, ...]]]:
    """What the nodes learned and whom they talked to, without times."""
    keys = ("round", "train_loss", "test_acc", "test_loss", "msgs_sent", "peers", "weights")
    return {i: [tuple(r.get(k) for k in keys) for r in rs] for i, rs in records.items()}


def _timeline(records: Records) -> dict[int, list[tuple[float, float, float]]]:
    return {
        i: [(r["t_virtual"], r["t_compute"], r["t_wait"]) for r in rs] for i, rs in records.items()
    }


async def test_the_network_changes_time_and_nothing_else() -> None:
    plain = await run_in_memory(small_plan())
    emulated = await run_in_memory(small_plan(*WAN, *PROFILE))
    assert _learning(emulated) == _learning(plain)
    for i, records in plain.items():  # each message carries its two times: 24 bytes
        for r, stamped in zip(records, emulated[i], strict=True):
            assert stamped["bytes_sent"] == r["bytes_sent"] + 24 * r["msgs_sent"]
    assert all("t_virtual" not in r for rs in plain.values() for r in rs)
    for records in emulated.values():
        times = [r["t_virtual"] for r in records]
        assert times == sorted(times) and times[0] > 0


async def test_a_device_profile_gives_the_same_timeline_every_time() -> None:
    first = await run_in_memory(small_plan(*WAN, *PROFILE, "network.jitter_ms=10"))
    again = await run_in_memory(small_plan(*WAN, *PROFILE, "network.jitter_ms=10"))
    assert _timeline(first) == _timeline(again)
    # each round: 2 local steps of 10 ms, then at least one latency and one model's transfer
    for records in first.values():
        assert all(r["t_compute"] == pytest.approx(0.02) for r in records)
        assert records[0]["t_virtual"] > 0.02 + 0.03


async def test_a_fully_connected_round_costs_an_uplink_per_neighbour() -> None:
    """With bandwidth the bottleneck (no latency), a round's network time grows with the
    degree: 7 models through each uplink against 2 on a ring."""
    slow = ("network.uplink_mbps=2", *PROFILE, "rounds=2")
    ring = await run_in_memory(small_plan(*slow, 'topology.kind="ring"'))
    full = await run_in_memory(small_plan(*slow, 'topology.kind="complete"'))
    waits = {
        name: [rs[0]["t_virtual"] - rs[0]["t_compute"] for rs in runs.values()]
        for name, runs in (("ring", ring), ("complete", full))
    }
    model_bytes = ring[0][0]["bytes_sent"] / 2  # a ring node sends two shares
    one = model_bytes / (2 * MBPS)
    assert waits["ring"] == pytest.approx([2 * one] * 8)
    assert waits["complete"] == pytest.approx([7 * one] * 8)


async def test_a_slow_device_makes_its_neighbours_wait() -> None:
    plan = small_plan(
        *WAN,
        *PROFILE,
        'topology.kind="ring"',
        'network.classes=[{name = "slow", nodes = [0], speed = 0.25}]',
    )
    records = await run_in_memory(plan)
    assert records[0][0]["t_compute"] == pytest.approx(0.08)  # 2 steps of 10 ms, 4x slower
    assert records[1][0]["t_compute"] == pytest.approx(0.02)
    waited = {i: sum(r["t_wait"] for r in rs) for i, rs in records.items()}
    assert waited[1] > waited[0] + 0.05 and waited[7] > waited[0] + 0.05  # its neighbours


async def test_the_peer_samplers_messages_cross_the_network_too() -> None:
    plan = small_plan(*PROFILE, "network.latency_ms=100", 'topology.kind="peer_sampler"')
    records = await run_in_memory(plan)
    # round 0: ask the sampler (100 ms), its answer (100 ms), then the shares (100 ms)
    assert min(rs[0]["t_virtual"] for rs in records.values()) >= 0.3
    # later rounds ask one round ahead: only the shares' latency is on the critical path
    later = [b["t_virtual"] - a["t_virtual"] for rs in records.values() for a, b in pairwise(rs)]
    assert min(later) == pytest.approx(0.02 + 0.1, abs=1e-6)


async def test_a_fedavg_server_and_its_clients_share_the_virtual_clock() -> None:
    config = server_config("fedavg", *WAN, *PROFILE, "algorithm.fraction=0.5")
    records = await run_in_memory(make_plan(config))
    server = records[8]
    assert [r["t_virtual"] for r in server] == sorted(r["t_virtual"] for r in server)
    # a round of the server: send the model (40 ms + transfer), train 20 ms, upload (40 ms +)
    assert all(b["t_virtual"] - a["t_virtual"] > 0.1 for a, b in pairwise(server))


async def test_on_the_wall_clock_a_round_really_takes_the_networks_time() -> None:
    """The same run, in memory, with 60 ms of latency on the wall clock: round r ends at
    least (r + 1) x 60 ms after the start (each waits for a share its neighbour sent once its
    own round r - 1 was over, held 60 ms), and the learning is the plain run's. (A single
    round can take less than 60 ms: a neighbour that finished round r - 1 first sent its
    share of round r before this node's round r began.)"""
    plain = await run_in_memory(small_plan("rounds=3"))
    wall = await run_in_memory(
        small_plan("rounds=3", 'network.clock="wall"', "network.latency_ms=60")
    )
    assert _learning(wall) == _learning(plain)
    for records in wall.values():
        assert all("t_virtual" not in r for r in records)
        assert all(r["t_wall"] >= 0.06 * (r["round"] + 1) for r in records)
        assert max(r["t_wait"] for r in records) >= 0.02  # the held shares were waited for


async def test_the_shipped_wan_config_runs_with_its_trace_and_its_mobile_class() -> None:
    """configs/wan.toml end to end in memory: its trace slows node 3 from 4 s to 7 s and
    its mobile nodes (5, 11) compute at half speed on slower links."""
    from dlactor.config import load_config

    config = load_config(ROOT / "configs" / "wan.toml", ["nodes=12", "rounds=30"])
    records = await run_in_memory(make_plan(config))
    compute = {i: rs[0]["t_compute"] for i, rs in records.items()}
    assert compute[5] == pytest.approx(2 * compute[0]) and compute[11] == compute[5]
    assert records[0][-1]["t_virtual"] > 7.0  # the run outlasts the trace's changes
    # node 3's rounds while its links ran at 2 Mbit/s were the slowest of its own
    slow = [b["t_virtual"] - a["t_virtual"] for a, b in pairwise(records[3])
            if 4.0 <= a["t_virtual"] < 7.0]  # fmt: skip
    fast = [b["t_virtual"] - a["t_virtual"] for a, b in pairwise(records[3])
            if a["t_virtual"] >= 7.5]  # fmt: skip
    assert slow and fast and min(slow) > max(fast)
