"""Bad ``[network]`` tables and files exit 2 naming the field, and the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlactor.cli import app

ROOT = Path(__file__).parents[2]
QUICKSTART = str(ROOT / "configs/quickstart.toml")
runner = CliRunner()


def _validate(*overrides: str) -> tuple[int, str]:
    args = ["validate", QUICKSTART]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_good_network_validates(tmp_path: Path) -> None:
    matrix = "\n".join(",".join("20" for _ in range(16)) for _ in range(16))
    trace = (
        "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n0,*,50,50,\n2.5,3,5,,\n4,1-2,,,80\n"
    )
    code, output = _validate(
        f'network.latency_matrix="{_write(tmp_path, "m.csv", matrix)}"',
        f'network.trace="{_write(tmp_path, "t.csv", trace)}"',
        'network.classes=[{name = "mobile", fraction = 0.1, uplink_mbps = 5, latency_ms = 30}]',
    )
    assert code == 0, output


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["network.uplink_mbps=-5"], "network.uplink_mbps"),
        (["network.downlink_mbps=0"], "network.downlink_mbps"),
        (["network.latency_ms=-1"], "network.latency_ms"),
        (["network.loss=1.5"], "network.loss"),
        (['network.clock="sundial"'], "network.clock"),
        (['network.compute="profile"'], "step_ms"),
        (['network.compute="profile"', "network.step_ms=5", 'network.clock="wall"'], "virtual"),
        (['network.classes=[{name = "x", fraction = 0.5, nodes = [1]}]'], "network.classes"),
        (['network.classes=[{name = "x", nodes = [99]}]'], "network.classes.0.nodes"),
        (
            [
                'network.classes=[{name = "a", fraction = 0.7}, {name = "b", fraction = 0.6}]',
            ],
            "network.classes",
        ),
        (["evaluation.targets=[0.5, 1.5]"], "evaluation.targets"),
        (["network.step_ms=5"], "profile"),
        (['network.classes=[{name = "x", nodes = [1, 1]}]'], "listed twice"),
    ],
)
def test_a_bad_network_table_exits_2_naming_the_field(overrides: list[str], named: str) -> None:
    code, output = _validate(*overrides)
    assert code == 2, output
    assert named in output


@pytest.mark.parametrize(
    ("field", "name", "text", "line", "says"),
    [
        ("latency_matrix", "m.csv", "1,2\n3,4\n", 2, "expected 16"),
        (
            "latency_matrix",
            "m.csv",
            "\n".join(["0," * 15 + "0"] * 15 + ["0," * 14 + "-3,0"]),
            16,
            "column 15",
        ),
        ("trace", "t.csv", "time,who\n", 1, "header"),
        (
            "trace",
            "t.csv",
            "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n1,*,5,,\n0.5,2,4,,\n",
            3,
            "sort the trace",
        ),
        (
            "trace",
            "t.csv",
            "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n0,16,5,,\n",
            2,
            "node 16",
        ),
        (
            "trace",
            "t.csv",
            "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n0,3,-5,,\n",
            2,
            "uplink_mbps",
        ),
        (
            "trace",
            "t.csv",
            "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n0,1-2,5,,\n",
            2,
            "link",
        ),
        ("speeds", "s.txt", "1\n" * 15 + "fast\n", 16, "speed"),
        (
            "trace",
            "t.csv",
            "time_s,target,uplink_mbps,downlink_mbps,latency_ms\n0,\u00b2,5,,\n",
            2,
            "target",
        ),
        ("speeds", "s.txt", "1\n" * 3, 3, "expected 16"),
    ],
)
def test_a_bad_network_file_exits_2_naming_the_field_file_and_line(
    tmp_path: Path, field: str, name: str, text: str, line: int, says: str
) -> None:
    path = _write(tmp_path, name, text)
    code, output = _validate(f'network.{field}="{path}"')
    assert code == 2, output
    flat = " ".join(output.split())
    assert f"network.{field}" in flat
    assert f"{name}, line {line}" in flat
    assert says in flat


def test_a_missing_network_file_exits_2(tmp_path: Path) -> None:
    code, output = _validate(f'network.trace="{tmp_path / "nope.csv"}"')
    assert code == 2
    assert "network.trace" in output and "nope.csv" in " ".join(output.split())
