"""Unit tests of the batch report's files: SVG charts that hold every MS, and the dask
report page of a short batch."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree

import pytest
from contract_examples import make_record
from dp3batch.books.batch_spec import MSPaths
from dp3batch.books.records import RecordStore, write_record
from dp3batch.books.status import Status
from dp3batch.dask_stage.dask_report import (
    DaskPerformanceReport,
    start_task_stream,
    task_stream_counter,
    task_stream_note,
)
from dp3batch.dp3.log import parse_step_times
from dp3batch.report.batch_report import ReportFiles, write_batch_report
from dp3batch.report.summary import (
    SummaryFiles,
    SummaryRow,
    _write_tsv,
    complete_rows_in,
    write_summary,
)
from dp3batch.report.text_files import write_lines

DONE, FAILED, UP_TO_DATE = Status.DONE, Status.FAILED, Status.UP_TO_DATE


def _row(name: str, status: Status, **fields) -> SummaryRow:
    defaults = {
        "duration_seconds": 1.0,
        "flagged_input_pct": 1.0,
        "flagged_output_pct": 2.0,
        "step_seconds": {"AOFlaggerStep": 3.0, "MSReader": 1.0},
        "flags_by_step": {
            "aoflagger": {"percent": 5.0, "per_channel": [2, 100, 4], "per_antenna": [5, 7]}
        },
        "stations": ("CS001", "CS002"),
        "log": f"/logs/{name}.log",
        "output": f"/results/{name}.ms",
    }
    return SummaryRow(name=name, status=status, **{**defaults, **fields})


def _report(rows: list[SummaryRow], files: ReportFiles, title: str) -> None:
    """As the central job writes it: the summary first (the batch's rows kept whole, the
    others slim), then the report from the rows it kept and a copy of it."""
    summary = SummaryFiles(files.directory / "out.json", files.directory / "out.tsv")
    files.directory.mkdir(parents=True, exist_ok=True)
    kept, problem = write_summary(rows, summary.json, summary.tsv, "B1")
    assert problem is None
    write_batch_report(kept, files, title, summary)


def _bars(svg_path) -> dict[str, float]:
    """The <title> of each bar: `<label> <series>: <value>`."""
    root = ElementTree.parse(svg_path).getroot()
    titles = [element.text for element in root.iter("{http://www.w3.org/2000/svg}title")]
    return {title.rsplit(":", 1)[0]: float(title.rsplit(":", 1)[1]) for title in titles}


def test_batch_report_writes_every_file_with_every_ms(tmp_path):
    rows = [
        _row("a", DONE, duration_seconds=2.5),
        _row("b", FAILED, flagged_output_pct=None),
        _row("c", UP_TO_DATE),
    ]
    files = ReportFiles(tmp_path / "report" / "B1")
    _report(rows, files, "Batch B1")
    durations = _bars(files.durations)
    assert durations == {"a duration": 2.5, "b duration": 1.0, "c duration": 1.0}
    flagged = _bars(files.flagged)
    assert flagged["a output (after averaging)"] == 2.0
    assert "b input" not in flagged  # no output: no flagged fraction to show
    steps = _bars(files.step_times)
    assert steps == {"AOFlaggerStep share": 75.0, "MSReader share": 25.0}
    assert files.table.read_text().count("\n") == 4
    assert "<table" in files.html.read_text()


def test_a_short_batch_gets_a_page_instead_of_a_dask_report(tmp_path):
    report = DaskPerformanceReport(
        client=None, path=tmp_path / "dask.html", min_seconds=60, task_stream_length=2000
    )
    report.last_count = 0  # as if started
    report.finish()
    text = (tmp_path / "dask.html").read_text()
    assert "less than dask_report_min_seconds (60 s)" in text


def test_rfi_spectrum_and_stations_average_dps_counts_over_the_batch(tmp_path):
    other = {"aoflagger": {"percent": 7.0, "per_channel": [4, 100, 6], "per_antenna": [9, 5]}}
    rows = [
        _row("a", DONE),
        # Another antenna order: matched by name.
        _row("b", DONE, flags_by_step=other, stations=("CS002", "CS001")),
        _row("c", UP_TO_DATE),
    ]
    files = ReportFiles(tmp_path)
    _report(rows, files, "Batch")
    stations = _bars(files.stations)
    assert stations == {"CS001 by aoflagger (DP3)": 5.0, "CS002 by aoflagger (DP3)": 8.0}
    root = ElementTree.parse(files.spectrum).getroot()
    (line,) = root.iter("{http://www.w3.org/2000/svg}polyline")
    heights = [float(point.split(",")[1]) for point in line.get("points").split()]
    assert len(heights) == 3  # one point per channel
    # Means of the two MSs of this batch (the up-to-date one is not in it): 3, 100, 5 %.
    ratio = (heights[0] - heights[1]) / (heights[2] - heights[1])
    assert abs(ratio - (100 - 3) / (100 - 5)) < 0.01


def test_the_rows_are_kept_slim_and_the_summary_holds_every_row_whole(tmp_path):
    rows = [_row("a", DONE), _row("b", UP_TO_DATE, flag_statistics={"channel_total_pct": [1]})]
    kept, problem = write_summary(rows, tmp_path / "s.json", tmp_path / "s.tsv")
    assert problem is None
    # What their TSV lines and the report's table show, and no more.
    assert [row.stations for row in kept] == [(), ()]
    assert [row.flag_statistics for row in kept] == [{}, {}]
    assert kept[1].flags_by_step == {"aoflagger": {"percent": 5.0}}
    assert [row.step_flags for row in kept] == [row.step_flags for row in rows]
    entries = json.loads((tmp_path / "s.json").read_text())["measurement_sets"]
    assert [SummaryRow.from_json(entry) for entry in entries] == rows
    assert list(complete_rows_in(tmp_path / "s.json")) == rows
    assert list(complete_rows_in(tmp_path / "s.json", DONE)) == rows[:1]
    # The TSV from slim rows is the TSV of whole rows.
    whole = io.StringIO()
    _write_tsv(rows, whole)
    assert whole.getvalue() == (tmp_path / "s.tsv").read_text()


def test_a_batch_with_nothing_done_reports_the_statistics_of_the_complete_mss(tmp_path):
    # Every MS of the batch failed: the plots describe the up-to-date ones, whole, read
    # again from the summary (the rows kept of them are slim).
    other = {"aoflagger": {"percent": 7.0, "per_channel": [4, 100, 6], "per_antenna": [9, 5]}}
    rows = [
        _row("a", FAILED),
        _row("b", UP_TO_DATE),
        _row("c", UP_TO_DATE, flags_by_step=other, stations=("CS002", "CS001")),
    ]
    files = ReportFiles(tmp_path / "report" / "B1")
    _report(rows, files, "Batch B1")
    stations = _bars(files.stations)
    assert stations == {"CS001 by aoflagger (DP3)": 5.0, "CS002 by aoflagger (DP3)": 8.0}
    assert files.table.read_text() == (files.directory / "out.tsv").read_text()


def test_dp3_per_channel_and_per_antenna_tables_are_parsed():
    from dp3batch.dp3.log import parse_flag_counts

    log = """Flags set by AOFlaggerStep aoflagger.
=======================

Percentage of visibilities flagged per baseline (antenna pair):
 ant    0    1    2
   0         6%   7%
   1    6%        6%
   2    7%   6%
TOTAL   6%   6%   7%

Percentage of visibilities flagged per channel:
 channels    0    1    2    3    4    5    6    7    8    9
   0-   9:       3%   4%   3%   3%   6% 100%   5%   3%   3%   3%
  10-  11:       3%   2%
Total flagged:     6.323%   (1214 out of 19200 visibilities)
"""
    counts = parse_flag_counts(log)["aoflagger"]
    assert counts["per_channel"] == [3, 4, 3, 3, 6, 100, 5, 3, 3, 3, 3, 2]
    assert counts["per_antenna"] == [6, 6, 7]
    assert counts["percent"] == 6.323 and counts["flagged"] == 1214


def dp3_baseline_table(percent: list[list[int]]) -> str:
    """DP3's per-baseline table as DP3 prints it: blocks of 15 antennas (columns), each with
    its header and its own TOTAL row (the mean of the column)."""
    n = len(percent)
    lines = ["Percentage of visibilities flagged per baseline (antenna pair):"]
    for first in range(0, n, 15):
        block = range(first, min(first + 15, n))
        lines.append(" ant" + "".join(f"{column:5d}" for column in block))
        for row in range(n):
            cells = (
                "     " if row == column else f"{percent[row][column]:4d}%" for column in block
            )
            lines.append(f"{row:4d} " + "".join(cells))
        totals = (round(sum(percent[r][c] for r in range(n) if r != c) / (n - 1)) for c in block)
        lines.append("TOTAL" + "".join(f"{total:4d}%" for total in totals))
        lines.append("")
    return "\n".join(lines)


@pytest.mark.parametrize("stations", [3, 15, 16, 40, 64])
def test_every_block_of_dp3s_per_antenna_table_is_read(stations):
    """DP3 prints 15 antennas per block, each block with its own TOTAL row: a station in any
    block has its own percentage (issue 27: only the last block was read)."""
    from dp3batch.dp3.log import parse_flag_counts

    bad = stations - 2  # in the last block, and not the last antenna
    percent = [
        [80 if bad in (row, column) else 5 for column in range(stations)] for row in range(stations)
    ]
    log = (
        "Flags set by AOFlaggerStep aoflagger.\n===\n\n"
        + dp3_baseline_table(percent)
        + "\nTotal flagged:     9.000%   (90 out of 1000 visibilities)\n"
    )
    per_antenna = parse_flag_counts(log)["aoflagger"]["per_antenna"]
    assert len(per_antenna) == stations
    expected = [
        round(sum(percent[r][c] for r in range(stations) if r != c) / (stations - 1))
        for c in range(stations)
    ]
    assert per_antenna == expected
    assert max(range(stations), key=per_antenna.__getitem__) == bad


def test_a_no_op_summary_is_rebuilt_only_when_a_record_changed(tmp_path):
    from dp3batch.report.summary import refresh_summary

    output = tmp_path / "results" / "a.ms"
    output.mkdir(parents=True)
    write_record(output, make_record(name="a", output=str(output)))
    sets = [MSPaths("a", "/in/a.ms", str(output))]
    paths = (tmp_path / "results" / "summary.json", tmp_path / "results" / "summary.tsv")
    assert refresh_summary(sets, tmp_path / "logs", *paths) is None
    assert "up to date" in paths[1].read_text()
    paths[1].write_text("stale")  # not rebuilt while nothing changed...
    refresh_summary(sets, tmp_path / "logs", *paths)
    assert paths[1].read_text() == "stale"
    (output / "dp3_completion.json").unlink()  # ...and rebuilt when a record changed
    refresh_summary(sets, tmp_path / "logs", *paths)
    assert "not processed" in paths[1].read_text()


def _batch_outputs(tmp_path, names, batch_id="b1"):
    sets = []
    for name in names:
        output = tmp_path / "results" / f"{name}.ms"
        output.mkdir(parents=True)
        write_record(output, make_record(name=name, output=str(output), batch_id=batch_id))
        sets.append(MSPaths(name, f"/in/{name}.ms", str(output)))
    return sets


class _NoRecordReads(RecordStore):
    def record(self, output):
        raise AssertionError(f"record of {output} read")


@pytest.mark.parametrize(
    "names",
    [
        ["a", "b"],
        # Only the name is read of each line: one that looks like a status, escapes, UTF-8.
        ['obs "a", "status": "done", "qa', "ob\\s\tb", "Møller — 観測"],
    ],
    ids=["plain", "hostile"],
)
def test_the_no_op_after_a_batch_keeps_its_rows_and_makes_them_up_to_date(tmp_path, names):
    """The records are unchanged since the batch wrote the summary: none is read again, and
    the summary is the one a rebuild from the records gives."""
    from dp3batch.books.layout import OutputLayout
    from dp3batch.report.summary import Summary, refresh_summary

    sets = _batch_outputs(tmp_path, names)
    layout = OutputLayout(tmp_path / "results")
    rows, problem = Summary(layout, sets).write((), set(names), "b1")
    assert problem is None and {row.status for row in rows} == {Status.DONE}
    paths = (layout.summary_json, layout.summary_tsv)
    assert refresh_summary(sets, layout.log_dir, *paths, store=_NoRecordReads()) is None
    kept = [path.read_text() for path in paths]
    assert kept[1].count("\tdone\t") == 0 and kept[1].count("up to date") == len(names)
    (tmp_path / "results" / ".summary.digest").unlink()  # rebuilt from the records
    assert refresh_summary(sets, layout.log_dir, *paths) is None
    assert [path.read_text() for path in paths] == kept


def test_a_batch_summary_with_an_ms_not_complete_is_rebuilt_from_the_records(tmp_path):
    from dp3batch.books.layout import OutputLayout
    from dp3batch.report.summary import Summary, refresh_summary

    sets = _batch_outputs(tmp_path, ["a"])
    sets.append(MSPaths("b", "/in/b.ms", str(tmp_path / "results" / "b.ms")))  # no output
    layout = OutputLayout(tmp_path / "results")
    Summary(layout, sets).write((), {"a", "b"}, "b1")
    paths = (layout.summary_json, layout.summary_tsv)
    with pytest.raises(AssertionError, match="record of"):
        refresh_summary(sets, layout.log_dir, *paths, store=_NoRecordReads())


def test_a_batch_summary_laid_out_otherwise_is_rebuilt_from_the_records(tmp_path):
    """An earlier version wrote it indented: not read line by line, rebuilt as now."""
    import json

    from dp3batch.books.layout import OutputLayout
    from dp3batch.report.summary import Summary, refresh_summary

    sets = _batch_outputs(tmp_path, ["a", "b"])
    layout = OutputLayout(tmp_path / "results")
    Summary(layout, sets).write((), {"a", "b"}, "b1")
    data = json.loads(layout.summary_json.read_text())
    layout.summary_json.write_text(json.dumps(data, indent=2))
    paths = (layout.summary_json, layout.summary_tsv)
    with pytest.raises(AssertionError, match="record of"):
        refresh_summary(sets, layout.log_dir, *paths, store=_NoRecordReads())
    assert refresh_summary(sets, layout.log_dir, *paths) is None
    rebuilt = json.loads(layout.summary_json.read_text())
    assert [entry["status"] for entry in rebuilt["measurement_sets"]] == ["up to date"] * 2
    assert not list(layout.output_dir.glob("*.tmp"))


def test_a_record_changed_after_the_batch_summary_rebuilds_it(tmp_path):
    from dp3batch.books.layout import OutputLayout
    from dp3batch.report.summary import Summary, refresh_summary

    sets = _batch_outputs(tmp_path, ["a"])
    layout = OutputLayout(tmp_path / "results")
    Summary(layout, sets).write((), {"a"}, "b1")
    output = tmp_path / "results" / "a.ms"
    write_record(output, make_record(name="a", output=str(output), batch_id="b2"))
    paths = (layout.summary_json, layout.summary_tsv)
    with pytest.raises(AssertionError, match="record of"):
        refresh_summary(sets, layout.log_dir, *paths, store=_NoRecordReads())


def test_flag_counts_per_step_are_read_from_dp3s_tables():
    from dp3batch.dp3.log import parse_flag_counts

    log = (
        "Flags set by PreFlagger preflagger.\n=====\n"
        "Total flagged:     0.000%   (0 out of 4800 visibilities)\n\n"
        "Flags set by AOFlaggerStep aoflagger.\n===========================\n"
        " ant    0    1\n"
        "Total flagged:    11.917%   (572 out of 4800 visibilities)\n"
    )
    assert parse_flag_counts(log) == {
        "preflagger": {
            "percent": 0.0,
            "flagged": 0,
            "visibilities": 4800,
            "per_channel": [],
            "per_antenna": [],
        },
        "aoflagger": {
            "percent": 11.917,
            "flagged": 572,
            "visibilities": 4800,
            "per_channel": [],
            "per_antenna": [],
        },
    }


def test_step_times_are_parsed_from_dp3_timing_table():
    log = """
Total DP3 time       2.00 real        0.05 user        0.04 system
    7.2% (    8 ms) MsReader
    0.0% (    0 ms) PreFlagger preflagger.
   30.0% (   36 ms) AOFlaggerStep aoflagger.
            1.7% (    0 ms) of it spent in shuffling data
   62.8% (   79 ms) MSWriter msout.
     16.3% (   12 ms) Creating task
"""
    times = parse_step_times(log)
    assert times == pytest.approx(
        {"MsReader": 0.144, "preflagger": 0.0, "aoflagger": 0.6, "msout": 1.256}
    )


@pytest.mark.parametrize("lines", [[], ["one"], ["one", "", "three"]])
@pytest.mark.parametrize("end", ["", "\n"])
def test_a_page_written_line_by_line_is_the_page_joined(tmp_path, lines, end):
    write_lines(tmp_path / "page", iter(lines), end)
    assert (tmp_path / "page").read_text() == "\n".join(lines) + end


class _Scheduler:
    """What the task stream's start and count use of a dask scheduler."""

    def __init__(self):
        self.plugins = {}
        self.monitor = type("Monitor", (), {"count": 7})()

    def add_plugin(self, plugin):
        self.plugins[plugin.name] = plugin


def _run_tasks(scheduler, count):
    plugin = scheduler.plugins["task-stream"]
    for index in range(count):
        startstops = [{"action": "compute", "start": index, "stop": index + 1}]
        plugin.transition(f"dp3-{index}", "processing", "memory", startstops=startstops)


def test_the_task_stream_keeps_the_batch_s_last_tasks_and_says_how_many_ran():
    scheduler = _Scheduler()
    assert start_task_stream(3)(scheduler) == (7, 0)
    _run_tasks(scheduler, 5)
    ran, kept = task_stream_counter()(scheduler)
    assert (ran, kept) == (5, 3)
    assert "the last 3 of the 5 tasks of this batch" in task_stream_note(ran, kept)
    # A second batch on the same scheduler: counted from its own start, stream kept.
    plugin = scheduler.plugins["task-stream"]
    assert start_task_stream(1000)(scheduler) == (7, 5)
    assert scheduler.plugins["task-stream"] is plugin
    _run_tasks(scheduler, 2)
    ran, kept = task_stream_counter()(scheduler)
    assert task_stream_note(ran - 5, kept) == ""


def test_a_task_stream_kept_by_the_scheduler_already_is_left_as_it_is():
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    scheduler = _Scheduler()
    dashboards = TaskStreamPlugin(scheduler, maxlen=100)
    scheduler.add_plugin(dashboards)
    start_task_stream(3)(scheduler)
    assert scheduler.plugins["task-stream"] is dashboards
    _run_tasks(scheduler, 5)
    assert task_stream_counter()(scheduler) == (5, 5)
