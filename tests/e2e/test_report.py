"""The run report: summary of every MS after each run, and `snakemake --report`."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from conftest import damage_ms, make_inputs
from dp3batch.report.html import STATUS_COLOURS


def _flagged_fraction(path) -> float:
    with tables.table(str(path), ack=False) as table:
        return float(np.mean(table.getcol("FLAG")))


@pytest.fixture
def run_with_one_failure(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 3)
    # Pre-flag part of one input, so that "before" is not trivially zero.
    with tables.table(str(inputs[0]), readonly=False, ack=False) as table:
        flags = table.getcol("FLAG")
        flags[: len(flags) // 4] = True
        table.putcol("FLAG", flags)
    damage_ms(inputs[2])
    workflow.config["dask_report_min_seconds"] = 0  # a short batch: have the dask report
    result = workflow.run()
    assert result.returncode != 0
    return workflow, inputs, result


def test_summary_lists_every_ms_with_its_status(run_with_one_failure):
    workflow, inputs, _ = run_with_one_failure
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
        assert row["flagged_before"] == pytest.approx(_flagged_fraction(inputs[index]))
        assert row["flagged_after"] == pytest.approx(
            _flagged_fraction(workflow.output(f"obs_{index}"))
        )
    assert by_name["obs_0"]["flagged_before"] == pytest.approx(0.25)


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
    assert "addEventListener" in table  # sortable

    # dask's own performance report of the batch, beside the plots.
    dask_report = results["dask-report.html"]["data"].decode()
    assert "Dask Performance Report" in dask_report
    assert (report_dir / "dask-report.html").is_file()


def test_progress_lines_show_count_and_eta(run_with_one_failure):
    _, _, result = run_with_one_failure
    progress = re.findall(r"\[(\d)/3, (ETA \d+:\d\d:\d\d|last)\] obs_\d", result.output)
    assert sorted(count for count, _ in progress) == ["1", "2", "3"]
    assert "|" not in result.output.split("largest first")[1].split("\n")[1]  # no bar: not a tty
