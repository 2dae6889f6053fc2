"""Markdown rendering for BENCHMARKS.md: tables, sections, number formatting, verdicts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
#: (figure, how to read it off one column's item, target, reference figure)
Row = tuple[str, Callable[[T], str], str, str]

MIB = 1 << 20


@dataclass
class Table:
    """A markdown table: a header row and rows of already formatted cells."""

    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.headers)} columns")
        self.rows.append(cells)

    def render(self) -> str:
        lines = [_row(self.headers), _row(["---"] * len(self.headers))]
        lines += [_row(cells) for cells in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's part of the file: a title, prose before the tables, tables, notes."""

    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        parts = [f"## {self.title}", self.intro.strip()]
        parts += [table.render() for table in self.tables]
        if self.notes:
            parts.append("\n".join(f"- {note}" for note in self.notes))
        return "\n\n".join(part for part in parts if part)


@dataclass(frozen=True)
class Verdict:
    """One project target and whether this run met it."""

    target: str
    measured: str
    met: bool | None  # None: could not be measured
    limit: str = ""  # on a miss: what limits it, in one line

    @property
    def word(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]

    @property
    def markdown(self) -> str:
        """The verdict for the file: a miss stands out."""
        return self.word if self.met else f"**{self.word}**"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def ms(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.{digits}f}"


def mib(nbytes: float | None, digits: int = 1) -> str:
    return "-" if nbytes is None else f"{nbytes / MIB:,.{digits}f}"


def num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def verdict_table(verdicts: Sequence[Verdict]) -> Table:
    table = Table(["target", "measured", "verdict", "on a miss: what limits it"])
    for v in verdicts:
        table.add(v.target, v.measured, v.markdown, v.limit)
    return table


def figure_table(
    items: Sequence[T], nodes: Callable[[T], int], rows: Iterable[Row[T]], reference: str
) -> Table:
    """One figure per row, one column per run (headed by its node count), then the target
    and the reference figure: the shape of every scaling table in BENCHMARKS.md."""
    table = Table(["figure", *(f"{nodes(item)} nodes" for item in items), "target", reference])
    for label, value, target, ref in rows:
        table.add(label, *(value(item) for item in items), target, ref)
    return table
