"""Fixtures the Ray backend's tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from dlactor.testing import ray_environment


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """Token authentication on a token of our own; Ray's temp files in a directory of our own
    (short: Ray's unix sockets live under it)."""
    tmp = tempfile.mkdtemp(prefix="dlr-", dir="/tmp")
    yield ray_environment(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
