"""A table of results as ``trainer report`` and ``trainer eval --suite`` write them: Markdown for
the page, CSV for tools. Its own module so that the suites (which compute) and the report (which
lays out) both use it without importing each other."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Table:
    """A table for the page (Markdown) and for a CSV; float cells are percentages."""

    key: str  # the CSV's file name stem
    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.columns)} |", "|" + " --- |" * len(self.columns)]
        lines += [f"| {' | '.join(_cell(v, 2) for v in row)} |" for row in self.rows]
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows([[_cell(v, 4) for v in row] for row in self.rows])


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
