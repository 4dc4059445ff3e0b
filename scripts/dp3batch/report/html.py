"""The summary as an HTML table for `snakemake --report`: sortable, one row per MS, status
coloured, with each MS's log and parset."""

from __future__ import annotations

import html
import itertools
from pathlib import Path
from typing import Any

from dp3batch.books.qa import OK, SUSPECT
from dp3batch.books.status import Status
from dp3batch.report.summary import SummaryRow, step_flag_column
from dp3batch.report.text_files import write_lines

STATUS_COLOURS = {
    Status.DONE: "#d4edda",
    Status.UP_TO_DATE: "#e9ecef",
    Status.FAILED: "#f8d7da",
    Status.NOT_PROCESSED: "#fff3cd",
}

# Clicking a header sorts by that column (numbers by value, the rest as text); a second
# click reverses. Cells carry their sort key in data-sort.
_SORT_SCRIPT = """
document.querySelectorAll("th").forEach(function (header) {
  var column = header.cellIndex;  // within its own table (the chunks have one too)
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

# Sized to fit a 1400 px window with a few flagging steps: paths are links named by what
# they open (the full path in their tooltip), long texts wrap within their column.
_STYLE = """
body { font-family: sans-serif; font-size: 12px; margin: 4px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 4px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; font-size: 12px;
     max-width: 70px; }
td.number { text-align: right; white-space: nowrap; }
td.path { font-family: monospace; font-size: 11px; }
td.text { min-width: 150px; max-width: 220px; font-size: 11px; overflow-wrap: anywhere; }
td.name { min-width: 60px; max-width: 160px; overflow-wrap: anywhere; }
td.worker { max-width: 100px; font-family: monospace; font-size: 11px; overflow-wrap: anywhere; }
"""

QA_COLOURS = {SUSPECT: "#ffd8a8", OK: "#d4edda"}


def _cell(text: Any, sort: Any = None, css: str = "", style: str = "") -> str:
    shown = "" if text is None else str(text)
    key = shown if sort is None else sort
    attributes = f' class="{css}"' if css else ""
    attributes += f' style="{style}"' if style else ""
    return f'<td data-sort="{html.escape(str(key))}"{attributes}>{shown}</td>'


def _path_cell(path: str | None, label: str) -> str:
    """A link named `label` to a file, its full path in the tooltip (and its sort key)."""
    if not path:
        return _cell("")
    escaped = html.escape(path)
    link = f'<a href="file://{escaped}" title="{escaped}">{html.escape(label)}</a>'
    return _cell(link, sort=path, css="path")


def _before_after(row: SummaryRow, field: str) -> str:
    before, after = getattr(row, f"{field}_before"), getattr(row, f"{field}_after")
    if before is None and after is None:
        return _cell("")

    def shown(value):
        return "?" if value is None else f"{value}"

    return _cell(f"{shown(before)} → {shown(after)}", sort=after if after is not None else "")


def _percent_cell(value: float | None) -> str:
    if value is None:
        return _cell("", css="number")
    return _cell(f"{value:.1f}", sort=value, css="number")


def parset_path(row: SummaryRow) -> str | None:
    """The parset of an output that exists (a failed MS has none)."""
    output = row.output
    if not output or row.status in (Status.FAILED, Status.NOT_PROCESSED):
        return None
    return str(Path(output) / "dp3.parset")


def _worker(worker: str | None) -> str:
    """`tcp://10.0.0.7:40125` as `10.0.0.7:40125` (the whole in the tooltip)."""
    if not worker:
        return _cell("")
    shown = html.escape(worker.removeprefix("tcp://"))
    return _cell(f'<span title="{html.escape(worker)}">{shown}</span>', sort=worker, css="worker")


def _finished(finished: str | None) -> str:
    """An ISO time as `2026-11-28 01:00:00` (UTC), the whole in the sort key."""
    if not finished:
        return _cell("")
    return _cell(html.escape(finished[:19].replace("T", " ")), sort=finished)


def _qa_or_error_cell(row: SummaryRow) -> str:
    """A done MS's QA verdict (and why), a failed MS's error: one column, since an MS has
    one or the other, so that the table fits a 1400 px window."""
    if row.error:
        return _cell(html.escape(str(row.error)), sort=f"error {row.error}", css="text")
    if row.qa is None:
        return _cell("")
    reason = f"<br>{html.escape(row.qa_reason)}" if row.qa_reason else ""
    colour = QA_COLOURS.get(row.qa, "")
    return _cell(
        f"<b>{html.escape(row.qa)}</b>{reason}",
        sort=row.qa,
        css="text",
        style=f"background:{colour}",
    )


def _html_row(row: SummaryRow, steps: list[str]) -> str:
    colour = STATUS_COLOURS.get(row.status, "")
    duration = row.duration_seconds
    size = row.output_bytes
    step_flags = row.step_flags
    cells = [
        _cell(html.escape(row.name), sort=row.name, css="name"),
        _cell(row.status, style=f"background:{colour}"),
        _qa_or_error_cell(row),
        _percent_cell(row.flagged_input_pct),
        *(_percent_cell(step_flags.get(step_flag_column(step))) for step in steps),
        _percent_cell(row.flagged_total_pct),
        _percent_cell(row.flagged_output_pct),
        _cell("" if duration is None else f"{duration:.1f}", sort=duration or "", css="number"),
        _worker(row.worker),
        _cell(row.numthreads, css="number"),
        _before_after(row, "rows"),
        _before_after(row, "channels"),
        _cell("" if size is None else f"{size / 1e6:.1f}", sort=size or "", css="number"),
        _finished(row.finished),
        _path_cell(row.log, "log"),
        _path_cell(parset_path(row), "parset"),
        _path_cell(row.flagging_report, "PNG"),
    ]
    return f'<tr id="ms-{html.escape(row.name)}">' + "".join(cells) + "</tr>"


def html_headers(steps: list[str]) -> list[str]:
    """The table's headers: every flag column is a percentage, in the order of the chain."""
    return [
        "MS",
        "status",
        "QA verdict / error",
        "flagged % input",
        *(f"flagged % by {step}" for step in steps),
        "flagged % before averaging",
        "flagged % output",
        "duration (s)",
        "worker",
        "threads",
        "rows in → out",
        "channels in → out",
        "output (MB)",
        "finished (UTC)",
        "DP3 log",
        "parset",
        "flagging report",
    ]


CHUNK_HEADERS = [
    "MS",
    "chunk",
    "channels",
    "band (MHz)",
    "worker",
    "duration (s)",
    "flagged % before averaging",
    "flagged % output",
]


def chunk_table(rows: list[SummaryRow]) -> list[str]:
    """The chunks of each MS joined from frequency chunks: one line each (none without)."""
    lines = []
    for row in rows:
        chunks = list((row.frequency_chunks or {}).get("chunks") or [])
        for chunk in chunks:
            duration = chunk.get("duration_seconds")
            start, nchan = chunk.get("startchan", 0), chunk.get("nchan", 0)
            low, high = chunk.get("low_hz") or 0.0, chunk.get("high_hz") or 0.0
            cells = [
                _cell(html.escape(row.name), sort=row.name, css="name"),
                _cell(f"{chunk.get('index')}/{len(chunks)}", sort=chunk.get("index") or 0),
                _cell(f"{start}–{start + nchan - 1}", sort=start, css="number"),
                _cell(f"{low / 1e6:.3f}–{high / 1e6:.3f}", sort=low, css="number"),
                _worker(chunk.get("worker")),
                _cell(
                    "" if duration is None else f"{duration:.1f}", sort=duration or "", css="number"
                ),
                _percent_cell(chunk.get("flagged_total_pct")),
                _percent_cell(chunk.get("flagged_output_pct")),
            ]
            lines.append("<tr>" + "".join(cells) + "</tr>")
    if not lines:
        return []
    return [
        "<p>Frequency chunks (each MS above joined from them):</p>",
        '<table id="chunks"><thead><tr>',
        *(f"<th>{html.escape(header)}</th>" for header in CHUNK_HEADERS),
        "</tr></thead><tbody>",
        *lines,
        "</tbody></table>",
    ]


def write_summary_html(rows: list[SummaryRow], path: str | Path, title: str) -> None:
    """The summary as one self-contained HTML page: a sortable table, one row per MS."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    totals = ", ".join(f"{count} {status}" for status, count in counts.items())
    steps = list(dict.fromkeys(step for row in rows for step in row.flags_by_step))
    suspect = [row.name for row in rows if row.qa == SUSPECT]
    if suspect:
        totals += f"; QA: {len(suspect)} suspect ({', '.join(suspect[:10])}"
        totals += f" and {len(suspect) - 10} more)" if len(suspect) > 10 else ")"
    head = (
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<p>{html.escape(title)}: {len(rows)} MS(s), {html.escape(totals)}. "
        "Click a column header to sort.</p>",
        '<table id="summary"><thead><tr>',
        *(f"<th>{html.escape(header)}</th>" for header in html_headers(steps)),
        "</tr></thead><tbody>",
    )
    script = f"<script>{_SORT_SCRIPT}</script></body></html>"
    tail = ("</tbody></table>", *chunk_table(rows), script)
    # One table row at a time (see text_files).
    table = (_html_row(row, steps) for row in rows)
    write_lines(path, itertools.chain(head, table, tail), end="")
