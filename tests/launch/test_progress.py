"""Progress without a terminal: a plain line per tenth of the run, driven by the slowest node."""

from __future__ import annotations

import random

import pytest

from dlactor.launch.progress import RunProgress


def _run(nodes: int, rounds: int, capsys: pytest.CaptureFixture[str]) -> list[str]:
    with RunProgress(nodes, rounds) as progress:
        for r in range(rounds):
            for node in range(nodes):
                progress.advance(node, r)
    return capsys.readouterr().err.splitlines()


def test_without_a_terminal_a_line_is_logged_each_tenth_of_the_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _run(3, 40, capsys)
    assert [line.split(" on ")[0] for line in lines] == [f"rounds {r}/40" for r in range(4, 41, 4)]


def test_a_fast_node_alone_does_not_advance_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    with RunProgress(2, 10) as progress:
        for r in range(10):
            progress.advance(0, r)
    assert capsys.readouterr().err == ""


def test_short_runs_log_every_round(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(_run(2, 5, capsys)) == 5


def test_disabled_progress_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with RunProgress(2, 10, enabled=False) as progress:
        for r in range(10):
            progress.advance(0, r)
            progress.advance(1, r)
    assert capsys.readouterr().err == ""


def test_the_slowest_round_is_the_lowest_of_the_nodes_still_in_the_run() -> None:
    """Counted per round rather than scanned per report: the same answer as a scan, for
    nodes reporting out of step, nodes lost on the way, and a resumed run."""
    rng = random.Random(7)
    for first in (0, 6):
        nodes, rounds = 9, 30
        at, gone = [first] * nodes, set()
        with RunProgress(nodes, rounds, enabled=False, first_round=first) as progress:
            while any(at[n] < rounds for n in range(nodes) if n not in gone):
                node = rng.randrange(nodes)
                if rng.random() < 0.02 and len(gone) < nodes - 1:
                    gone.add(node)
                    progress.lose(node)
                elif at[node] < rounds:
                    progress.advance(node, at[node])
                    at[node] += 1
                    live = [at[n] for n in range(nodes) if n not in gone]
                    assert progress.slowest == min(live)
        assert progress.slowest == rounds


def test_with_every_node_lost_the_slowest_round_is_0() -> None:
    with RunProgress(3, 10, enabled=False) as progress:
        progress.advance(0, 0)
        for node in range(3):
            progress.lose(node)
        progress.advance(1, 1)  # a lost node's late report
        assert progress.slowest == 0
