"""A rich progress bar of rounds completed across all nodes."""

from __future__ import annotations

import sys
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

    def __init__(self, nodes: int, rounds: int, *, enabled: bool = True) -> None:
        self._rounds = rounds
        self._at = [0] * nodes
        self._progress = Progress(
            TextColumn("[bold]rounds[/] {task.fields[slowest]}/{task.fields[rounds]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("node-rounds"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            disable=not enabled,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            "run", total=nodes * rounds, slowest=0, rounds=rounds
        )

    def advance(self, node: int, round: int) -> None:
        self._at[node] = round + 1
        self._progress.update(self._task, advance=1, slowest=min(self._at))

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()
