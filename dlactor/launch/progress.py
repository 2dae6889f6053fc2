"""A rich progress bar of rounds completed across all nodes.

When stderr is not a terminal (a batch job, ``nohup``, CI) rich draws nothing, so a plain
line is written instead each time the slowest node passes another tenth of the run.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["RunProgress"]


class RunProgress:
    """Counts node-rounds; shows the slowest node's round next to the bar."""

    def __init__(
        self, nodes: int, rounds: int, *, enabled: bool = True, first_round: int = 0
    ) -> None:
        self._rounds = rounds
        self._at = [first_round] * nodes
        self._gone: set[int] = set()
        #: round -> how many nodes still in the run have reached it: the slowest is found
        #: by walking up from the last one, not by a scan of every node per report (which
        #: made a round's reports O(nodes²): 4.3 s of the launcher's CPU a round at 10,000
        #: nodes).
        self._reached = {first_round: nodes}
        #: The round every node still in the run has reached (finished the one before).
        self.slowest = first_round
        self._console = Console(file=sys.stderr)
        self._plain = enabled and not self._console.is_terminal
        self._step = max(1, rounds // 10)
        self._logged = 0
        self._t0 = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]rounds[/] {task.fields[slowest]}/{task.fields[rounds]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("node-rounds"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            disable=not enabled or self._plain,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            "run",
            total=nodes * rounds,
            completed=nodes * first_round,
            slowest=first_round,
            rounds=rounds,
        )

    def lose(self, node: int) -> None:
        """``node`` is gone (the run goes on without it): the slowest of the others counts."""
        if node not in self._gone:
            self._gone.add(node)
            self._reached[self._at[node]] -= 1

    def advance(self, node: int, round: int) -> None:
        old, self._at[node] = self._at[node], round + 1
        if node not in self._gone:
            self._reached[old] -= 1
            self._reached[round + 1] = self._reached.get(round + 1, 0) + 1
        slowest = self._slowest(min(self.slowest, round + 1))
        self.slowest = slowest
        self._progress.update(self._task, advance=1, slowest=slowest)
        if self._plain and slowest >= self._logged + self._step:
            self._logged = slowest - slowest % self._step
            elapsed = time.monotonic() - self._t0
            print(
                f"rounds {slowest}/{self._rounds} on every node, {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def _slowest(self, at: int) -> int:
        """The lowest round a node still in the run has reached (0 when none is left),
        searched from ``at``, which none is below."""
        if len(self._gone) == len(self._at):
            return 0
        while not self._reached.get(at):
            self._reached.pop(at, None)
            at += 1
        return at

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()
