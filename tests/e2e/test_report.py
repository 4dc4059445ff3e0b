"""The run report: summary of every MS after each run, and `snakemake --report`."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from conftest import Workflow, damage_ms, make_inputs
from dp3batch.report.html import STATUS_COLOURS


def _flagged_fraction(path) -> float:
    with tables.table(str(path), ack=False) as table:
        return float(np.mean(table.getcol("FLAG")))


def _run_with_one_failure(workflow: Workflow):
    inputs = make_inputs(workflow.directory / "inputs", 3)
    # Pre-flag part of one input, so that "before" is not trivially zero.
    with tables.table(str(inputs[0]), readonly=False, ack=False) as table:
        flags = table.getcol("FLAG")
        flags[: len(flags) // 4] = True
        table.putcol("FLAG", flags)
    damage_ms(inputs[2])
    workflow.config["dask_report_min_seconds"] = 0  # a short batch: have the dask report
    workflow.config["dask_report_task_stream"] = 2  # ... showing the last 2 of its 3 tasks
    # obs_0's first quarter of rows is flagged: every station 25 %, so it is suspect.
    workflow.config["qa"] = {"max_station_flagged_fraction": 0.2}
    result = workflow.run()
    assert result.returncode != 0
    return workflow, inputs, result


@pytest.fixture(scope="module")
def run_with_one_failure(tmp_path_factory):
    """One run shared by the tests that only read its outputs (or add a report beside them)."""
    return _run_with_one_failure(Workflow(tmp_path_factory.mktemp("report")))


@pytest.fixture
def own_run_with_one_failure(workflow):
    """The same run, for a test that changes its inputs and runs again."""
    return _run_with_one_failure(workflow)


def test_only_the_suspect_small_ms_gets_flagging_report_files(run_with_one_failure):
    workflow, _, _ = run_with_one_failure
    qa = workflow.output_dir / "qa"
    assert sorted(path.name for path in qa.iterdir()) == [
        "obs_0_flagging_report.png",
        "obs_0_flagging_report.zarr",
    ]
    # Both keep their statistics (summary, report, QA verdict); only obs_0's name files.
    suspect, fine = (workflow.record(name)["flag_statistics"] for name in ("obs_0", "obs_1"))
    assert suspect["png"] == str(qa / "obs_0_flagging_report.png")
    assert fine["output_pct"] is not None and fine["station_output_pct"]
    assert "png" not in fine and "zarr" not in fine


def test_summary_lists_every_ms_with_its_status(own_run_with_one_failure):
    workflow, inputs, _ = own_run_with_one_failure
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["measurement_sets"]}
    assert {name: row["status"] for name, row in rows.items()} == {
        "obs_0": "done",
        "obs_1": "done",
        "obs_2": "failed",
    }
    assert summary["counts"] == {"done": 2, "failed": 1}
    assert rows["obs_2"]["error"] and rows["obs_2"]["log"].endswith("logs/obs_2.log")
    for name in ("obs_0", "obs_1"):
        row = rows[name]
        assert row["rows_after"] == row["rows_before"] // 2
        assert row["channels_after"] == row["channels_before"] // 2
        assert row["time_resolution_after"] == 2 * row["time_resolution_before"]
        assert row["freq_resolution_after"] == 2 * row["freq_resolution_before"]
        assert row["output_bytes"] > 0 and row["dp3_version"] and row["worker"]
        assert row["duration_seconds"] > 0
        # DP3's CPU: no more than every core for the whole task, which its run is within.
        assert 0 < row["dp3_cpu_seconds"] <= (os.cpu_count() or 1) * row["duration_seconds"]
        # The dispatch's estimate: the bytes of the input's main table.
        main_table = Path(row["input"])
        expected = sum(f.stat().st_size for f in main_table.iterdir() if f.is_file())
        assert row["size_estimate_bytes"] == expected
    with open(workflow.output_dir / "summary.tsv") as handle:
        tsv = list(csv.DictReader(handle, delimiter="\t"))
    assert [row["name"] for row in tsv] == ["obs_0", "obs_1", "obs_2"]
    assert [row["status"] for row in tsv] == ["done", "done", "failed"]

    # With the broken input removed, the rerun has nothing to do: the summary is written all
    # the same, and reports the earlier outputs as up to date.
    shutil.rmtree(inputs[2])
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    rows = json.loads((workflow.output_dir / "summary.json").read_text())["measurement_sets"]
    assert {row["name"]: row["status"] for row in rows} == {
        "obs_0": "up to date",
        "obs_1": "up to date",
    }


def test_flagged_fractions_are_what_casacore_reads(run_with_one_failure):
    workflow, inputs, _ = run_with_one_failure
    rows = json.loads((workflow.output_dir / "summary.json").read_text())["measurement_sets"]
    by_name = {row["name"]: row for row in rows}
    for index in (0, 1):
        row = by_name[f"obs_{index}"]
        # Percentages, rounded to 0.001.
        expected = 100 * _flagged_fraction(inputs[index])
        assert row["flagged_input_pct"] == pytest.approx(expected, abs=1e-3)
        expected = 100 * _flagged_fraction(workflow.output(f"obs_{index}"))
        assert row["flagged_output_pct"] == pytest.approx(expected, abs=1e-3)
    assert by_name["obs_0"]["flagged_input_pct"] == pytest.approx(25.0)


def embedded_results(report_html: str) -> dict[str, dict]:
    """The results a Snakemake report embeds, by file name: {caption, data (decoded)}."""
    match = re.search(r"var results = (\{.*?\});\s*</script>", report_html, re.DOTALL)
    assert match, "no results in the report"
    results = {}
    for entry in json.loads(match.group(1)).values():
        data = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        results[entry["filename"]] = {"caption": entry["caption"], "data": data}
    return results


def test_report_builds_with_table_and_plots(run_with_one_failure):
    workflow, _, _ = run_with_one_failure
    (report_dir,) = (workflow.output_dir / "report").iterdir()  # one batch so far
    for plot in ("flagged_fraction.svg", "duration.svg", "dp3_step_time.svg"):
        assert (report_dir / plot).read_text().startswith("<svg")
    result = workflow.run("--report", "report.html")
    assert result.returncode == 0, result.output
    html = (workflow.directory / "report.html").read_text()
    assert "DP3 batch pre-processing of the MeasurementSets" in html  # the workflow page
    results = embedded_results(html)
    assert set(results) == {
        "summary.tsv",
        "summary.html",
        "flagged_fraction.svg",
        "rfi_spectrum.svg",
        "flagged_per_station.svg",
        "duration.svg",
        "dp3_step_time.svg",
        # The suspect MS's flagging report; obs_1 is small and fine: under the default
        # `qa.flagging_report: auto` its files would cost more than its DP3 run.
        "obs_0_flagging_report.png",
        "dask-report.html",
    }
    assert all(result["caption"] for result in results.values())

    # The summary is a table in the report itself: one row per MS, status coloured, with
    # the paths of its log and (for an output) its parset.
    table = results["summary.html"]["data"].decode()
    rows = dict(re.findall(r'<tr id="ms-(\w+)">(.*?)</tr>', table))
    assert sorted(rows) == ["obs_0", "obs_1", "obs_2"]
    for name, status in (("obs_0", "done"), ("obs_1", "done"), ("obs_2", "failed")):
        assert f'style="background:{STATUS_COLOURS[status]}">{status}</td>' in rows[name]
        assert str(workflow.output_dir / "logs" / f"{name}.log") in rows[name]
    assert str(workflow.output("obs_0") / "dp3.parset") in rows["obs_0"]
    assert "dp3.parset" not in rows["obs_2"] and "BucketCache" in rows["obs_2"]
    assert "suspect" in rows["obs_0"] and "ok" in rows["obs_1"]
    assert "addEventListener" in table  # sortable

    # dask's own performance report of the batch, beside the plots.
    dask_report = results["dask-report.html"]["data"].decode()
    assert "Dask Performance Report" in dask_report
    assert "last 2 of the 3 tasks of this batch (dask_report_task_stream)" in dask_report
    assert (report_dir / "dask-report.html").is_file()


def test_progress_lines_show_count_and_eta(run_with_one_failure):
    _, _, result = run_with_one_failure
    progress = re.findall(r"\[(\d)/3, (ETA \d+:\d\d:\d\d|last)\] obs_\d", result.output)
    assert sorted(count for count, _ in progress) == ["1", "2", "3"]
    assert "|" not in result.output.split("largest first")[1].split("\n")[1]  # no bar: not a tty


# Run in the report after it loaded: every result, shown as its own view button shows it
# (`app.setView`, as result_view_button.js does), and what the browser drew of it.
SHOW_EVERY_RESULT = r"""
window.addEventListener("load", function () {
  var wait = function (ms) { return new Promise(function (done) { setTimeout(done, ms); }); };
  (async function () {
    var found = {};
    // React renders the app after the load event: wait for it (virtual time).
    while (typeof app === "undefined" || !app) { await wait(100); }
    for (var path of Object.keys(results)) {
      var entry = results[path];
      var image = getResultMimeType(path).startsWith("image/");
      app.setView({content: image ? "img" : "html", contentPath: entry.data_uri, resultPath: path});
      await wait(500);
      var tag = image ? "img" : "iframe";
      var shown = Array.from(document.querySelectorAll(tag)).find(function (element) {
        return element.src === entry.data_uri;
      });
      if (shown && image && !shown.complete) {
        await new Promise(function (done) { shown.onload = done; shown.onerror = done; });
      }
      var box = shown ? shown.getBoundingClientRect() : {width: 0, height: 0};
      found[entry.filename] = {
        shown: !!shown,
        drawn: !!shown && (!image || (shown.complete && shown.naturalWidth > 0)),
        width: box.width,
        height: box.height,
      };
    }
    reportToTest(found);
  })();
});
"""

# Run in the summary table as the report's frame shows it: its cells as a person reads them,
# where its links are, and whether anything lies beyond the window.
READ_THE_TABLE = r"""
window.addEventListener("load", function () {
  var table = document.getElementById("summary");
  var text = function (cell) { return cell.innerText.trim(); };
  reportToTest({
    headers: Array.from(table.tHead.rows[0].cells).map(text),
    rows: Array.from(table.tBodies[0].rows).map(function (row) {
      return {id: row.id, cells: Array.from(row.cells).map(text)};
    }),
    links: Array.from(table.querySelectorAll("a")).map(function (link) {
      var box = link.getBoundingClientRect();
      return {text: link.innerText, right: box.right, width: box.width};
    }),
    window: window.innerWidth,
    page: document.documentElement.scrollWidth,
  });
});
"""


def test_report_as_a_person_sees_it_in_chromium(run_with_one_failure):
    """The HTML report in headless Chromium, 1400 px wide: every plot is drawn, and the
    summary table (in the frame the report gives it) has a row per MS with its flags per
    step, and fits, its log and parset links in view."""
    from browser import rendered

    workflow, _, _ = run_with_one_failure
    result = workflow.run("--report", "report.html")
    assert result.returncode == 0, result.output
    report = workflow.directory / "report.html"
    shown = rendered(report, SHOW_EVERY_RESULT, width=1400, height=1000)
    assert set(shown) == set(embedded_results(report.read_text()))
    plots = [name for name in shown if name.endswith((".svg", ".png"))]
    assert len(plots) == 6  # five SVG plots and the suspect MS's flagging report
    for name, seen in shown.items():
        assert seen["shown"] and seen["drawn"], (name, seen)
        assert seen["width"] > 300 and seen["height"] > 100, (name, seen)
    frame_width = round(shown["summary.html"]["width"])

    # The table as the report's frame shows it (the same document, at the frame's width).
    table_page = workflow.directory / "summary_as_shown.html"
    table_page.write_bytes(embedded_results(report.read_text())["summary.html"]["data"])
    table = rendered(table_page, READ_THE_TABLE, width=frame_width, height=800)
    assert table["page"] <= table["window"] == frame_width, "the table is wider than its frame"
    headers = table["headers"]
    for header in (
        "flagged % input",
        "flagged % by preflagger",
        "flagged % by aoflagger",
        "flagged % before averaging",
        "flagged % output",
    ):
        assert header in headers
    rows = {row["id"]: dict(zip(headers, row["cells"], strict=True)) for row in table["rows"]}
    assert sorted(rows) == ["ms-obs_0", "ms-obs_1", "ms-obs_2"]
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    for entry in summary["measurement_sets"]:
        row = rows[f"ms-{entry['name']}"]
        assert row["status"] == entry["status"]
        if entry["status"] == "done":
            for step in ("preflagger", "aoflagger"):
                shown_value = float(row[f"flagged % by {step}"])
                assert shown_value == pytest.approx(entry[f"flagged_{step}_pct"], abs=0.05)
            assert float(row["flagged % input"]) == pytest.approx(
                entry["flagged_input_pct"], abs=0.05
            )
    assert rows["ms-obs_0"]["QA verdict / error"].startswith("suspect")
    assert "BucketCache" in rows["ms-obs_2"]["QA verdict / error"]
    links = [link for link in table["links"] if link["text"] in ("log", "parset")]
    assert len(links) == 3 + 2  # a log per MS, a parset per output
    assert all(0 < link["width"] and link["right"] <= frame_width for link in links)


LEGEND_LAYOUT = r"""
var found = [];
var swatches = Array.from(document.querySelectorAll("svg rect[y='26']"));
var names = Array.from(document.querySelectorAll("svg text[y='35']"));
names.forEach(function (name, index) {
  var box = name.getBBox();
  found.push({
    name: name.textContent,
    right: box.x + box.width,
    next: index + 1 < swatches.length ? Number(swatches[index + 1].getAttribute("x")) : null,
  });
});
reportToTest(found);
"""


@pytest.mark.parametrize("kind", ["bar", "line"])
def test_a_charts_legend_names_never_run_under_the_next_entry(tmp_path, kind):
    """As Chromium draws them: each name of a legend ends before the next swatch (the
    per-station chart's `before averaging (input + every step)` ran under `by preflagger`)."""
    from browser import rendered
    from dp3batch.report.svg_chart import Series, bar_chart, line_chart

    series = [
        Series("before averaging (input + every step)", [10.0, 20.0], "#cc3311"),
        Series("by preflagger (DP3)", [1.0, 2.0], "#332288"),
        Series("by aoflagger (DP3)", [5.0, 6.0], "#117733"),
        Series("input", [3.0, 3.0], "#88ccee"),
    ]
    svg = tmp_path / "chart.svg"
    if kind == "bar":
        bar_chart(svg, "Flagged per station", ["CS001HBA0", "CS002HBA0"], series, "flagged (%)")
    else:
        line_chart(svg, "Flagged per channel", series, "channel", "flagged (%)")
    page = tmp_path / "chart.html"
    page.write_text(f"<!DOCTYPE html><html><body>{svg.read_text()}</body></html>")
    entries = rendered(page, LEGEND_LAYOUT, width=900, height=400)
    assert [entry["name"] for entry in entries] == [one.name for one in series]
    for entry in entries:
        if entry["next"] is not None:
            assert entry["right"] + 4 <= entry["next"], entry
