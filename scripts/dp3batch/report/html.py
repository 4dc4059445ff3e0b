"""The summary as an HTML table for `snakemake --report`: sortable, one row per MS, status
coloured, with each MS's log and parset."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from dp3batch.books.status import Status
from dp3batch.report.summary import SummaryRow

STATUS_COLOURS = {
    Status.DONE: "#d4edda",
    Status.UP_TO_DATE: "#e9ecef",
    Status.FAILED: "#f8d7da",
    Status.NOT_PROCESSED: "#fff3cd",
}

# Clicking a header sorts by that column (numbers by value, the rest as text); a second
# click reverses. Cells carry their sort key in data-sort.
_SORT_SCRIPT = """
document.querySelectorAll("th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = header.closest("table").tBodies[0];
    var ascending = header.dataset.order !== "ascending";
    header.dataset.order = ascending ? "ascending" : "descending";
    var key = function (row) { return row.cells[column].dataset.sort; };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

_STYLE = """
body { font-family: sans-serif; font-size: 13px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; }
td.number { text-align: right; }
td.path { font-family: monospace; font-size: 11px; }
"""


def _cell(text: Any, sort: Any = None, css: str = "", style: str = "") -> str:
    shown = "" if text is None else str(text)
    key = shown if sort is None else sort
    attributes = f' class="{css}"' if css else ""
    attributes += f' style="{style}"' if style else ""
    return f'<td data-sort="{html.escape(str(key))}"{attributes}>{shown}</td>'


def _path_cell(path: str | None) -> str:
    if not path:
        return _cell("")
    link = f'<a href="file://{html.escape(path)}">{html.escape(path)}</a>'
    return _cell(link, sort=path, css="path")


def _before_after(row: SummaryRow, field: str, scale: float = 1, digits: int = 0) -> str:
    before, after = getattr(row, f"{field}_before"), getattr(row, f"{field}_after")
    if before is None and after is None:
        return _cell("")

    def shown(value):
        return "?" if value is None else f"{value * scale:.{digits}f}"

    return _cell(f"{shown(before)} → {shown(after)}", sort=after if after is not None else "")


def parset_path(row: SummaryRow) -> str | None:
    """The parset of an output that exists (a failed MS has none)."""
    output = row.output
    if not output or row.status in (Status.FAILED, Status.NOT_PROCESSED):
        return None
    return str(Path(output) / "dp3.parset")


def _html_row(row: SummaryRow) -> str:
    colour = STATUS_COLOURS.get(row.status, "")
    duration = row.duration_seconds
    size = row.output_bytes
    cells = [
        _cell(html.escape(row.name), sort=row.name),
        _cell(row.status, style=f"background:{colour}"),
        _cell("" if duration is None else f"{duration:.1f}", sort=duration or "", css="number"),
        _cell(html.escape(str(row.worker or "")), css="path"),
        _cell(row.numthreads, css="number"),
        _before_after(row, "rows"),
        _before_after(row, "channels"),
        _before_after(row, "flagged", scale=100, digits=1),
        _cell("" if size is None else f"{size / 1e6:.1f}", sort=size or "", css="number"),
        _cell(html.escape(str(row.finished or ""))),
        _path_cell(row.log),
        _path_cell(parset_path(row)),
        _cell(html.escape(str(row.error or ""))),
    ]
    return f'<tr id="ms-{html.escape(row.name)}">' + "".join(cells) + "</tr>"


HTML_HEADERS = [
    "MS",
    "status",
    "duration (s)",
    "worker",
    "threads",
    "rows before → after",
    "channels before → after",
    "flagged % before → after",
    "output (MB)",
    "finished",
    "DP3 log",
    "parset",
    "error",
]


def write_summary_html(rows: list[SummaryRow], path: str | Path, title: str) -> None:
    """The summary as one self-contained HTML page: a sortable table, one row per MS."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    totals = ", ".join(f"{count} {status}" for status, count in counts.items())
    page = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<p>{html.escape(title)}: {len(rows)} MS(s), {html.escape(totals)}. "
        "Click a column header to sort.</p>",
        '<table id="summary"><thead><tr>',
        *(f"<th>{html.escape(header)}</th>" for header in HTML_HEADERS),
        "</tr></thead><tbody>",
        *(_html_row(row) for row in rows),
        f"</tbody></table><script>{_SORT_SCRIPT}</script></body></html>",
    ]
    Path(path).write_text("\n".join(page))
