"""The launcher raises its open-files limit for big runs, or says why it cannot."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlactor.config import ConfigError
from dlactor.launch.local import FILES_PER_NODE, FILES_SPARE, ensure_open_files


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_a_big_run_raises_the_soft_limit_to_what_it_needs(limits: tuple[int, int]) -> None:
    _soft, hard = limits
    need = FILES_PER_NODE * 1024 + FILES_SPARE
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.fail(f"this machine's hard limit {hard} cannot hold the test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    assert ensure_open_files(1024) == need
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (need, hard)


def test_a_small_run_leaves_the_limit_alone(limits: tuple[int, int]) -> None:
    _soft, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    assert ensure_open_files(16) == 1024
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1024, hard)


def test_a_hard_limit_too_low_is_invalid_input_naming_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A lowered hard limit cannot be raised again without privileges, so it is pretended.
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: pytest.fail("must not set"))
    with pytest.raises(ConfigError, match=r"nodes: 1024 nodes need about 3,328 open files"):
        ensure_open_files(1024)


def test_a_launcher_that_forks_nothing_asks_for_a_file_per_node(
    limits: tuple[int, int],
) -> None:
    """Ray's launcher holds one control connection per node, and forks none."""
    _soft, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    assert ensure_open_files(2000, per_node=1) == 2000 + FILES_SPARE


def test_the_ray_launcher_raises_its_limit_before_it_connects(
    limits: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlactor.launch import ray as ray_backend
    from dlactor.launch.run import open_backend
    from tests.conftest import small_config

    def connect(*_: object) -> None:
        raise RuntimeError("not connecting in this test")

    monkeypatch.setattr(ray_backend.RayBackend, "connect", connect)
    _soft, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    config = small_config("launcher.kind=ray", "nodes=2000", "topology.degree=4")
    with pytest.raises(RuntimeError, match="not connecting"), open_backend(config):
        pass
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2000 + FILES_SPARE


def test_a_ray_agent_raises_its_limit_for_the_nodes_it_forks(
    limits: tuple[int, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An agent forks its machine's nodes, as the local launcher does: FILES_PER_NODE each,
    raised in its own process (a Ray worker's limit is not the launcher's)."""
    from dlactor.launch import ray as ray_backend
    from dlactor.launch.agents import RayAgent

    class Packed:
        def unpack(self) -> SimpleNamespace:
            return SimpleNamespace(run_id="r")

    def results_dir(*_: object) -> None:
        raise RuntimeError("not forking in this test")

    monkeypatch.setattr(ray_backend, "results_dir", results_dir)
    _soft, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    agent = RayAgent()
    agent.identities(list(range(400)))  # 1,456 open files: above the 512 set below
    with pytest.raises(RuntimeError, match="not forking"):
        agent.start(Packed(), ("127.0.0.1", 1), tmp_path, {})
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == FILES_PER_NODE * 400 + FILES_SPARE
