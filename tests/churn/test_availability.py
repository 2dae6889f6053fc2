"""Availability schedules: drawn sessions, trace files, and configs that cannot use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlactor.churn.availability import read_availability, sessions
from dlactor.cli import app
from dlactor.network.files import NetworkFileError

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "configs/quickstart.toml")
runner = CliRunner()


def _validate(*overrides: str) -> tuple[int, str]:
    args = ["validate", QUICKSTART]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_sessions_keep_the_asked_share_offline_and_are_the_seeds() -> None:
    a = sessions(200, 400, 7, offline=0.3, mean_offline=4)
    share = a.offline_share()
    assert 0.27 < share < 0.33
    counts = a.online_count()
    assert counts.min() > 200 * 0.55 and counts.max() < 200 * 0.85  # about 70% at any time
    b = sessions(200, 400, 7, offline=0.3, mean_offline=4)
    assert [a.online(n, r) for n in range(20) for r in range(50)] == [
        b.online(n, r) for n in range(20) for r in range(50)
    ]
    c = sessions(200, 400, 8, offline=0.3, mean_offline=4)
    assert a.online_nodes(10).tolist() != c.online_nodes(10).tolist()
    for r in (0, 17, 399):  # online_nodes agrees with online
        assert a.online_nodes(r).tolist() == [n for n in range(200) if a.online(n, r)]
        assert counts[r] == len(a.online_nodes(r))


def test_offline_sessions_last_mean_offline_rounds_on_average() -> None:
    a = sessions(100, 2000, 1, offline=0.2, mean_offline=5)
    lengths = []
    for node in range(100):
        state, last = bool(a.initial[node]), 0
        for t in a.toggles[node].tolist():
            if not state and last > 0:  # an offline session seen whole
                lengths.append(t - last)
            state, last = not state, t
    assert 4.5 < float(np.mean(lengths)) < 5.5


def test_no_churn_is_every_node_every_round() -> None:
    a = sessions(8, 10, 1, offline=0.0, mean_offline=5)
    assert a.offline_share() == 0.0 and len(a.online_nodes(3)) == 8


def test_a_trace_in_rounds_and_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "avail.csv"
    path.write_text(
        "node,start,end,state\n"
        "# node 1 is offline in rounds 2..4 and from 8 on\n"
        "1,2,5,offline\n1,8,100,offline\n"
        "2,3,6,online\n"
    )
    a = read_availability(str(path), 4, 10)
    assert [r for r in range(10) if not a.online(1, r)] == [2, 3, 4, 8, 9]
    assert [r for r in range(10) if a.online(2, r)] == [3, 4, 5]  # online only then
    assert all(a.online(0, r) and a.online(3, r) for r in range(10))  # on no line: always
    seconds = tmp_path / "seconds.csv"
    seconds.write_text("node,start,end\n1,1.0,2.9\n")  # rounds of 0.5 s: 1.0 .. 2.5 start in it
    b = read_availability(str(seconds), 4, 10, round_s=0.5)
    assert [r for r in range(10) if not b.online(1, r)] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("node,begin,end\n", "line 1: expected the header"),
        ("node,start,end\n9,0,3\n", "line 2: node 9 is not in the run"),
        ("node,start,end\n1,4,2\n", "line 2: end must be after start"),
        ("node,start,end\n1,x,2\n", "line 2: start: expected a round"),
        ("node,start,end,state\n1,0,2,asleep\n", "line 2: state: expected online or offline"),
        (
            "node,start,end,state\n1,0,2,online\n1,4,5,offline\n",
            "line 3: node 1 has both online and offline lines",
        ),
    ],
)
def test_a_bad_trace_names_its_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(NetworkFileError, match=where):
        read_availability(str(path), 4, 10)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["availability.offline=0.95"], "availability.offline"),
        (["availability.offline=0.6", "availability.mean_offline=1"], "availability.offline"),
        (['availability.kind="trace"'], "needs path"),
        (
            ['availability.kind="trace"', 'availability.path="/nonexistent.csv"'],
            "availability.path",
        ),
        (["availability.offline=0.1", 'availability.unit="seconds"'], "availability"),
        (["availability.offline=0.1", 'sharing.kind="choco"'], "sharing.kind"),
        (
            [
                'launcher.on_node_failure="continue"',
                'algorithm.kind="epidemic"',
                'algorithm.variant="local"',
            ],
            "algorithm.kind",
        ),
        (['launcher.on_node_failure="continue"', 'sharing.kind="secure"'], "on_node_failure"),
        (['launcher.on_node_failure="maybe"'], "launcher.on_node_failure"),
        (["faults.kill=16"], "faults.kill"),
        (["faults.kill=2", "faults.first_round=50"], "faults.first_round"),
        (["checkpoint.every=-1"], "checkpoint.every"),
    ],
)
def test_configs_that_cannot_churn_exit_2_naming_the_field(
    overrides: list[str], named: str
) -> None:
    code, output = _validate(*overrides)
    assert code == 2, output
    assert named in output


def test_a_good_churn_config_validates(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("node,start,end\n3,5,9\n")
    code, output = _validate(
        'availability.kind="trace"',
        f'availability.path="{trace}"',
        'launcher.on_node_failure="continue"',
        "faults.kill=3",
        "checkpoint.every=10",
    )
    assert code == 0, output


@pytest.mark.parametrize(
    "overrides",
    [
        ["availability.offline=0.2"],
        [
            'availability.kind="trace"',
            "availability.path=TRACE",
            'availability.unit="seconds"',
            "availability.round_s=2.5",
        ],
    ],
)
def test_a_runs_saved_config_loads_again(tmp_path: Path, overrides: list[str]) -> None:
    """What ``--resume`` reads: the run's config.toml, every default written out."""
    from dlactor.cli import config_toml
    from dlactor.config import load_config

    trace = tmp_path / "t.csv"
    trace.write_text("node,start,end\n3,5,9\n")
    sets = [o.replace("TRACE", f'"{trace}"') for o in overrides]
    config = load_config(Path(QUICKSTART), [*sets, "checkpoint.every=5"])
    saved = tmp_path / "config.toml"
    saved.write_text(config_toml(config))
    assert config_toml(load_config(saved, [])) == config_toml(config)


def test_trace_times_beyond_the_bounds_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("node,start,end\n1,0," + "9" * 5000 + "\n")
    with pytest.raises(NetworkFileError, match="line 2: end: expected a round"):
        read_availability(str(path), 4, 10)
    path.write_text("node,start,end\n1,0,1e300\n")
    with pytest.raises(NetworkFileError, match="line 2: end: expected seconds"):
        read_availability(str(path), 4, 10, round_s=0.001)
