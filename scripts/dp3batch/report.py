"""The run report: a status row per MS (TSV and JSON) and plots for `snakemake --report`.

Rows come from the completion records of the outputs and from the results of the batch
that ran (which also carry the failures, which have no record)."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dp3batch.completion import ms_log_file, read_record

_log = logging.getLogger("dp3batch")

DONE = "done"
UP_TO_DATE = "up to date"
FAILED = "failed"
NOT_PROCESSED = "not processed"

COLUMNS = [
    "name",
    "status",
    "duration_seconds",
    "worker",
    "numthreads",
    "dp3_version",
    "rows_before",
    "rows_after",
    "channels_before",
    "channels_after",
    "time_resolution_before",
    "time_resolution_after",
    "freq_resolution_before",
    "freq_resolution_after",
    "flagged_before",
    "flagged_after",
    "output_bytes",
    "finished",
    "log",
    "error",
    "input",
    "output",
]

# A top-level line of DP3's timing table: the '%' sits in column 8, e.g.
# "   30.6% (   39 ms) AOFlaggerStep aoflagger." (sub-step lines are indented further).
_STEP_TIME = re.compile(r"^(?=.{7}%)\s*(\d+(?:\.\d+)?)% \(.*?\) (.+?)\.?\s*$")
_TOTAL_TIME = re.compile(r"^Total DP3 time\s+([\d.]+) real")


def parse_step_times(log_text: str) -> dict[str, float]:
    """Seconds per DP3 step from the timing table DP3 prints at the end of a run."""
    total = None
    steps: dict[str, float] = {}
    for line in log_text.splitlines():
        match = _TOTAL_TIME.match(line)
        if match:
            total = float(match.group(1))
            steps = {}
            continue
        if total is None:
            continue
        match = _STEP_TIME.match(line)
        if match:
            name = match.group(2).split()[-1]
            steps[name] = steps.get(name, 0.0) + float(match.group(1)) / 100 * total
    return steps


# DP3's count per flagging step, printed at the end of a run:
# "Flags set by AOFlaggerStep aoflagger." ... "Total flagged:    11.917%   (572 out of 4800 ...".
_FLAGS_SET_BY = re.compile(r"^Flags set by \S+ (\S+?)\.?\s*$")
_TOTAL_FLAGGED = re.compile(r"^Total flagged:\s+([\d.]+)%\s+\((\d+) out of (\d+) visibilities\)")


def parse_flag_counts(log_text: str) -> dict[str, dict[str, float]]:
    """What each PreFlagger and AOFlagger step flagged, as DP3 itself counted it (before any
    averaging): {step: {percent, flagged, visibilities}}."""
    counts: dict[str, dict[str, float]] = {}
    step = None
    for line in log_text.splitlines():
        match = _FLAGS_SET_BY.match(line)
        if match:
            step = match.group(1)
            continue
        match = _TOTAL_FLAGGED.match(line) if step else None
        if match:
            counts[step] = {
                "percent": float(match.group(1)),
                "flagged": int(match.group(2)),
                "visibilities": int(match.group(3)),
            }
            step = None
    return counts


def _row_from(source: dict[str, Any], status: str) -> dict[str, Any]:
    before = source.get("shape_before") or {}
    after = source.get("shape_after") or {}
    return {
        "name": source["name"],
        "status": status,
        "duration_seconds": source.get("duration_seconds"),
        "worker": source.get("worker"),
        "numthreads": source.get("numthreads"),
        "dp3_version": source.get("dp3_version"),
        "rows_before": before.get("rows"),
        "rows_after": after.get("rows"),
        "channels_before": before.get("channels"),
        "channels_after": after.get("channels"),
        "time_resolution_before": before.get("interval"),
        "time_resolution_after": after.get("interval"),
        "freq_resolution_before": before.get("channel_width"),
        "freq_resolution_after": after.get("channel_width"),
        "flagged_before": before.get("flagged_fraction"),
        "flagged_after": after.get("flagged_fraction"),
        "output_bytes": source.get("output_bytes"),
        "finished": source.get("finished"),
        "log": source.get("log"),
        "error": source.get("error") if status == FAILED else None,
        "input": source.get("input"),
        "output": source.get("output"),
        "step_seconds": source.get("step_seconds") or {},
        # Per flagging step, DP3's own percentage; `flagged_after` is read from the averaged
        # output, where a sample is flagged only if all its inputs were.
        **{
            f"flagged_{step}": count.get("percent")
            for step, count in (source.get("flags_by_step") or {}).items()
        },
    }


def collect_rows(
    measurement_sets: list[dict[str, str]],
    batch_results: list[dict[str, Any]] | None,
    log_dir: str | Path,
    batch_names: set[str] | None = None,
    batch_started: str = "",
) -> list[dict[str, Any]]:
    """One row per MS, built from the completion records on disk, so that it is true after
    any fault: an MS of this run's batch (`batch_names`) whose record was finished after
    `batch_started` is done, even if its result was lost with the scheduler or an interrupt;
    a failed result without such a record is failed.

    `measurement_sets` are {name, input, output} of every input of the workflow."""
    in_batch = {result["name"]: result for result in batch_results or []}
    batch_names = set(batch_names or ()) | set(in_batch)
    rows = []
    for ms in measurement_sets:
        name = ms["name"]
        result = in_batch.get(name)
        log = ms_log_file(log_dir, name)
        record = read_record(Path(ms["output"]))
        made_now = record is not None and str(record.get("finished", "")) >= batch_started
        if record is not None and name in batch_names and made_now:
            rows.append(_row_from({**record, "log": log}, DONE))
        elif result is not None and result.get("status") in (FAILED, NOT_PROCESSED):
            rows.append(_row_from(result, result["status"]))
        elif record is not None and name not in batch_names:
            rows.append(_row_from({**record, "log": log}, UP_TO_DATE))
        else:
            rows.append(_row_from({**ms, "log": log}, NOT_PROCESSED))
    return rows


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _tsv_cell(value: Any) -> str:
    """One line per MS: line breaks and tabs in a value (DP3's error lines) become spaces."""
    return "" if value is None else " ".join(str(value).split())


def write_summary(
    rows: list[dict[str, Any]], json_path: str | Path, tsv_path: str | Path
) -> str | None:
    """The machine-readable summary: JSON (with per-step times) and TSV (one line per MS).

    Returns a problem (e.g. a full disk) instead of raising: the run's own outcome matters
    more than its summary, and no half-written file is left behind."""
    json_path, tsv_path = Path(json_path), Path(tsv_path)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    temporaries = (json_path.with_suffix(".json.tmp"), tsv_path.with_suffix(".tsv.tmp"))
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        table = io.StringIO()
        step_columns = sorted({key for row in rows for key in row if key.startswith("flagged_")})
        columns = COLUMNS + [key for key in step_columns if key not in COLUMNS]
        writer = csv.DictWriter(
            table,
            fieldnames=columns,
            delimiter="\t",
            extrasaction="ignore",
            lineterminator="\n",
            quoting=csv.QUOTE_NONE,
            escapechar="\\",
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _tsv_cell(row.get(key)) for key in columns})
        contents = {
            json_path: json.dumps({"counts": counts, "measurement_sets": rows}, indent=2),
            tsv_path: table.getvalue(),
        }
        for (path, text), temporary in zip(contents.items(), temporaries, strict=True):
            if _read_text(path) != text:  # unchanged files are left alone (no-op reruns)
                temporary.write_text(text)
                temporary.replace(path)
    except OSError as error:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return f"could not write the summary {tsv_path}: {error.strerror or error}"
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Up to this many MSs a plot has one labelled bar per MS; beyond, one point per MS.
LABELLED_LIMIT = 60


def _per_ms_axes(plt, count: int):
    height = 1.5 + 0.25 * count if count <= LABELLED_LIMIT else 4.5
    return plt.subplots(figsize=(8, height))


def _plot_per_ms(axes, rows, values, offset=0.0, **style) -> None:
    """Bars with the MS names for a readable count; for hundreds of MSs, points (by MS
    index), which stay legible and cost no time to draw."""
    if len(rows) <= LABELLED_LIMIT:
        axes.barh([index + offset for index in range(len(rows))], values, height=0.4, **style)
        axes.set_yticks(range(len(rows)), [row["name"] for row in rows])
    else:
        colour = style.pop("color", None)
        axes.scatter(range(len(rows)), values, s=6, c=colour, **style)


def _label_per_ms(axes, count: int, value_label: str) -> None:
    if count <= LABELLED_LIMIT:
        axes.invert_yaxis()  # the first MS on top, as in the table
        axes.set_xlabel(value_label)
    else:
        axes.set_xlabel(f"MS (index in the summary table, {count} MSs)")
        axes.set_ylabel(value_label)


def _save(plt, figure, path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_flagged_fractions(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Flagged fraction per MS, before and after the chain."""
    plt = _pyplot()
    shown = [row for row in rows if row["flagged_after"] is not None]
    figure, axes = _per_ms_axes(plt, len(shown))
    before = [100 * (row["flagged_before"] or 0) for row in shown]
    after = [100 * row["flagged_after"] for row in shown]
    _plot_per_ms(axes, shown, before, offset=-0.2, label="before")
    _plot_per_ms(axes, shown, after, offset=0.2, label="after averaging (output)")
    _label_per_ms(axes, len(shown), "flagged visibilities (%)")
    axes.set_title("Flagged fraction per MS")
    axes.legend()
    _save(plt, figure, path)


def plot_durations(rows: list[dict[str, Any]], path: str | Path) -> None:
    """DP3 run time per MS (from the completion records), coloured by status."""
    plt = _pyplot()
    shown = [row for row in rows if row["duration_seconds"] is not None]
    colours = {DONE: "tab:blue", UP_TO_DATE: "tab:gray", FAILED: "tab:red"}
    figure, axes = _per_ms_axes(plt, len(shown))
    _plot_per_ms(
        axes,
        shown,
        [row["duration_seconds"] for row in shown],
        color=[colours.get(row["status"], "tab:gray") for row in shown],
    )
    _label_per_ms(axes, len(shown), "seconds")
    axes.set_title("Duration per MS (blue: this batch, grey: earlier, red: failed)")
    _save(plt, figure, path)


def plot_step_times(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Share of DP3's time per step, summed over all MSs (from DP3's timing output)."""
    plt = _pyplot()
    totals: dict[str, float] = {}
    for row in rows:
        for step, seconds in (row.get("step_seconds") or {}).items():
            totals[step] = totals.get(step, 0.0) + seconds
    figure, axes = plt.subplots(figsize=(8, 4))
    if totals:
        everything = sum(totals.values()) or 1.0
        steps = sorted(totals, key=totals.get, reverse=True)
        axes.barh(steps, [100 * totals[step] / everything for step in steps])
        axes.invert_yaxis()
    axes.set_xlabel("share of DP3 time (%)")
    axes.set_title("Time per DP3 step, all MSs")
    _save(plt, figure, path)


# --- the summary as an HTML table, for `snakemake --report` ------------------------------

STATUS_COLOURS = {
    DONE: "#d4edda",
    UP_TO_DATE: "#e9ecef",
    FAILED: "#f8d7da",
    NOT_PROCESSED: "#fff3cd",
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


def _before_after(row: dict[str, Any], field: str, scale: float = 1, digits: int = 0) -> str:
    before, after = row.get(f"{field}_before"), row.get(f"{field}_after")
    if before is None and after is None:
        return _cell("")

    def shown(value):
        return "?" if value is None else f"{value * scale:.{digits}f}"

    return _cell(f"{shown(before)} → {shown(after)}", sort=after if after is not None else "")


def parset_path(row: dict[str, Any]) -> str | None:
    """The parset of an output that exists (a failed MS has none)."""
    output = row.get("output")
    if not output or row["status"] in (FAILED, NOT_PROCESSED):
        return None
    return str(Path(output) / "dp3.parset")


def _html_row(row: dict[str, Any]) -> str:
    colour = STATUS_COLOURS.get(row["status"], "")
    duration = row.get("duration_seconds")
    size = row.get("output_bytes")
    cells = [
        _cell(html.escape(row["name"]), sort=row["name"]),
        _cell(row["status"], style=f"background:{colour}"),
        _cell("" if duration is None else f"{duration:.1f}", sort=duration or "", css="number"),
        _cell(html.escape(str(row.get("worker") or "")), css="path"),
        _cell(row.get("numthreads"), css="number"),
        _before_after(row, "rows"),
        _before_after(row, "channels"),
        _before_after(row, "flagged", scale=100, digits=1),
        _cell("" if size is None else f"{size / 1e6:.1f}", sort=size or "", css="number"),
        _cell(html.escape(str(row.get("finished") or ""))),
        _path_cell(row.get("log")),
        _path_cell(parset_path(row)),
        _cell(html.escape(str(row.get("error") or ""))),
    ]
    return f'<tr id="ms-{html.escape(row["name"])}">' + "".join(cells) + "</tr>"


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


def write_summary_html(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """The summary as one self-contained HTML page: a sortable table, one row per MS."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
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


# --- dask's own performance report of a batch --------------------------------------------


def dask_report_path(output_dir: str | Path, batch_id: str) -> Path:
    """Where the batch writes dask's performance report: beside the batch's logs, since the
    report rule's outputs (`report/<batch>/dask-report.html`, where it is moved) are
    removed by Snakemake before that rule runs."""
    return Path(output_dir) / "logs" / "batches" / f"{batch_id}.dask-report.html"


NO_DASK_REPORT = (
    "<!DOCTYPE html><html><body><p>No dask performance report for this batch: it did not "
    "finish its fan-out (interrupted, or stopped before any DP3 task was submitted), or the "
    "scheduler could not make one (it needs bokeh). See the batch log.</p></body></html>"
)


def publish_dask_report(source: str | Path, destination: str | Path) -> None:
    """The batch's dask report as a report output (a page saying why when there is none);
    moved, not copied: it holds bokeh's JavaScript and weighs 1-2 MB."""
    source = Path(source)
    if source.is_file():
        shutil.move(source, destination)
    else:
        Path(destination).write_text(NO_DASK_REPORT)


@contextlib.contextmanager
def dask_performance_report(client, path: str | Path) -> Iterator[None]:
    """dask's performance report (task stream, worker profiles, bandwidth) of what runs
    inside, through `client`.

    Written only when the body ends normally: an interrupted batch must stop at once, not
    wait for the scheduler. A report that cannot be made (e.g. a scheduler without bokeh)
    is a warning in the batch log, never a failed batch."""
    from distributed import performance_report

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "inline": bokeh's JavaScript inside the file, so that it shows without network access.
    report = performance_report(filename=str(path), mode="inline")
    with client.as_current():  # performance_report finds its client as the current one
        try:
            report.__enter__()
        except Exception as error:  # any failure only costs the report
            _log.warning("no dask performance report: %s", error)
            report = None
    yield
    if report is not None:
        with client.as_current():
            try:
                report.__exit__(None, None, None)
            except Exception as error:
                _log.warning("no dask performance report: %s", error)
