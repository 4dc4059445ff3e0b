"""Unit tests of the batch report's files: SVG charts that hold every MS, and the dask
report page of a short batch."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from dp3batch.dask_report import DaskPerformanceReport
from dp3batch.report import ReportFiles, write_batch_report
from dp3batch.summary import DONE, FAILED, UP_TO_DATE


def _row(name: str, status: str, **fields) -> dict:
    return {
        "name": name,
        "status": status,
        "duration_seconds": fields.get("duration", 1.0),
        "flagged_before": 0.01,
        "flagged_after": fields.get("flagged_after", 0.02),
        "step_seconds": {"AOFlaggerStep": 3.0, "MSReader": 1.0},
        "log": f"/logs/{name}.log",
        "output": f"/results/{name}.ms",
    }


def _bars(svg_path) -> dict[str, float]:
    """The <title> of each bar: `<label> <series>: <value>`."""
    root = ElementTree.parse(svg_path).getroot()
    titles = [element.text for element in root.iter("{http://www.w3.org/2000/svg}title")]
    return {title.rsplit(":", 1)[0]: float(title.rsplit(":", 1)[1]) for title in titles}


def test_batch_report_writes_every_file_with_every_ms(tmp_path):
    rows = [_row("a", DONE, duration=2.5), _row("b", FAILED), _row("c", UP_TO_DATE)]
    rows[1]["flagged_after"] = None
    files = ReportFiles(tmp_path / "report" / "B1")
    write_batch_report(rows, files, "Batch B1")
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
    report = DaskPerformanceReport(client=None, path=tmp_path / "dask.html", min_seconds=60)
    report.last_count = 0  # as if started
    report.finish()
    text = (tmp_path / "dask.html").read_text()
    assert "less than dask_report_min_seconds (60 s)" in text
