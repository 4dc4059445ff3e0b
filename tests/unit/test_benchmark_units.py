"""The benchmark's reading of DP3's own timer (benchmarks/benchmark.py)."""

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
