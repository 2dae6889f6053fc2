"""The server algorithms refuse, before any process starts, what they cannot run with."""

from __future__ import annotations

import re

import pytest

from dlactor.config import ConfigError
from tests.algorithms.servers import server_config
from tests.conftest import SMALL


@pytest.mark.parametrize(
    ("kind", "overrides", "field"),
    [
        ("fedavg", ["algorithm.fraction=0"], "algorithm.fraction"),
        ("fedavg", ["algorithm.fraction=1.5"], "algorithm.fraction"),
        ("fedavg", ["algorithm.min_clients=9"], "algorithm.min_clients"),
        ("fedavg", ["sharing.kind=choco"], "sharing.kind"),
        ("parameter_server", ["sharing.kind=topk"], "sharing.kind"),
        (
            "parameter_server",
            ["sharing.kind=full", "sharing.compression=lz4"],
            "sharing.compression",
        ),
    ],
)
def test_bad_combinations_exit_naming_the_field(
    kind: str, overrides: list[str], field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\n  {re.escape(field)}: "):
        server_config(kind, *overrides)


@pytest.mark.parametrize("kind", ["fedavg", "parameter_server"])
def test_a_topology_table_is_refused(kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"topology: algorithm '{kind}' has no topology"):
        server_config(kind, base=SMALL)
