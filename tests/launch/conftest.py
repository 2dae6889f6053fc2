"""Fixtures the Ray backend's tests share."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """Token authentication on a token of our own; Ray's temp files in a directory of our own
    (short: Ray's unix sockets live under it)."""
    tmp = tempfile.mkdtemp(prefix="dlr-", dir="/tmp")
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        RAY_TMPDIR=tmp,
        RAY_USAGE_STATS_ENABLED="0",
    )
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def start_blocking_ray(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start ARGS --block` (its output in ``log``), once Ray says its runtime started.
    Stopping that process (``stop_blocking_ray``) stops every process it started, and only
    those (unlike `ray stop`, which stops every Ray process of the machine)."""
    with log.open("w") as f:
        proc = subprocess.Popen(
            [RAY, "start", *args, "--block", "--disable-usage-stats"],
            stdout=f, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    try:
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    except BaseException:
        stop_blocking_ray(proc)
        raise
    return proc


def stop_blocking_ray(proc: subprocess.Popen[bytes]) -> None:
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
