"""The benchmark's readings of a run (benchmarks/benchmark.py): DP3's own timer, whether
dask's performance report was rendered, and the memory sampler's own cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark.py"
)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

DP3_TAIL = """Processing 60 time slots ...
Total DP3 time       5.53 real        5.02 user        0.42 system
"""


def test_the_dp3_timer_is_read_from_its_closing_line():
    assert benchmark.dp3_timer_seconds(DP3_TAIL) == 5.53


def test_output_without_the_timer_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="no 'Total DP3 time'"):
        benchmark.dp3_timer_seconds("std exception detected: No such MS\n")


def test_the_mean_over_a_runs_ms_logs(tmp_path):
    (tmp_path / "obs_00.log").write_text(DP3_TAIL)
    (tmp_path / "obs_01.log").write_text(DP3_TAIL.replace("5.53 real", "5.73 real"))
    (tmp_path / "failed.txt").write_text("not a log of an MS")
    assert benchmark.mean_dp3_timer_seconds(tmp_path) == 5.63


def test_a_dask_report_counts_as_rendered_unless_it_is_the_page_standing_for_none(tmp_path):
    from dp3batch.dask_stage.dask_report import write_no_report

    assert not benchmark.dask_report_rendered(tmp_path)  # no batch yet
    report = tmp_path / "report" / "20261205T000000-abc" / "dask-report.html"
    write_no_report(report, "its DP3 tasks took 35 s, less than dask_report_min_seconds")
    assert not benchmark.dask_report_rendered(tmp_path)
    report.write_text("<!DOCTYPE html>\n<html><head><title>Dask Performance Report</title>")
    assert benchmark.dask_report_rendered(tmp_path)


def test_the_memory_sampler_scans_the_process_table_only_until_it_knows_both(tmp_path, monkeypatch):
    """Its scans cost the workflow it watches 5-6 ms of CPU each: once both processes are
    known their memory is read alone; one that ended is looked for again."""
    import subprocess
    import sys

    marker = str(tmp_path / "workflow")
    sleeper = "import time; time.sleep(60)"
    started = [
        subprocess.Popen([sys.executable, "-c", sleeper, "process_batch.py", marker]),
        subprocess.Popen([sys.executable, "-c", sleeper, "/venv/bin/snakemake", marker]),
    ]
    try:
        sampler = benchmark.MemorySampler(marker)
        sampler.sample()
        assert {kind: process.pid for kind, process in sampler.known.items()} == {
            "central_job": started[0].pid,
            "snakemake": started[1].pid,
        }
        assert all(peak > 0 for peak in sampler.peaks.values())
        scans = []
        real_iter = benchmark.psutil.process_iter
        monkeypatch.setattr(
            benchmark.psutil, "process_iter", lambda *a, **k: scans.append(1) or real_iter(*a, **k)
        )
        sampler.sample()
        assert scans == []
        started[0].kill()
        started[0].wait()
        sampler.sample()  # the central job is gone: its kind is looked for again
        assert "central_job" not in sampler.known and scans == [1]
    finally:
        for process in started:
            process.kill()
            process.wait()
