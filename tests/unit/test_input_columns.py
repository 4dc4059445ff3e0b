"""DP3 as astronomers know it: the workflow's output is what DP3 itself writes for the data
(real snakemake, real DP3, tiny generated MSs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from conftest import make_ms
from dp3batch.dp3.install import dp3_environment, find_dp3_executable, wheel_strategies_directory

DP3 = find_dp3_executable()
STRATEGIES = wheel_strategies_directory(DP3)


def _flags(path: Path) -> np.ndarray:
    with tables.table(str(path), ack=False) as table:
        return table.getcol("FLAG")


def _dp3_by_hand(source: Path, output: Path, *arguments: str) -> np.ndarray:
    """DP3 run by hand, the way an astronomer checks a result; returns the output's flags."""
    completed = subprocess.run(
        [DP3, f"msin={source}", f"msout={output}", *arguments],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    return _flags(output)


def _column(path: Path, column: str, subtable: str = "") -> np.ndarray:
    with tables.table(f"{path}::{subtable}" if subtable else str(path), ack=False) as table:
        return table.getcol(column)


def test_an_ms_without_the_data_column_dp3_needs_is_refused_up_front(tmp_path):
    from dp3batch.config.errors import ConfigError
    from dp3batch.inputs.discovery import check_readable

    corrected_only = make_ms(tmp_path / "c.ms", data_column="CORRECTED_DATA")
    with pytest.raises(ConfigError, match="has CORRECTED_DATA but no DATA column"):
        check_readable(corrected_only, "CORRECTED_DATA")
    check_readable(make_ms(tmp_path / "both.ms", corrected_data=True), "CORRECTED_DATA")


def use_logging_dp3_wrapper(workflow) -> Path:
    """Make the workflow run DP3 through a wrapper that logs each command line; the log."""
    calls = workflow.directory / "dp3-calls.txt"
    wrapper = workflow.directory / "dp3-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {find_dp3_executable()} "$@"\n')
    wrapper.chmod(0o755)
    workflow.config["dp3_executable"] = str(wrapper)
    return calls
