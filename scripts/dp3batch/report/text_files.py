"""Writing a report's text files a line at a time.

A report of 10,000 MSs has 10,000 table rows and as many bars per chart: joined into one
string before writing, each page held its lines, the string and its encoding at once (45 MB
of a batch's peak memory at 10,000 MSs)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def write_lines(path: str | Path, lines: Iterable[str], end: str = "\n") -> None:
    """`lines` joined by line breaks, then `end`: what `"\\n".join(lines) + end` gives,
    written as the lines come."""
    with open(path, "w") as target:
        separator = ""
        for line in lines:
            target.write(separator)
            target.write(line)
            separator = "\n"
        target.write(end)
