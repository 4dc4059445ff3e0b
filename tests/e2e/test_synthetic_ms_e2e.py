"""Tests of the synthetic MeasurementSet generator, including DP3 reading and flagging it."""

from __future__ import annotations

import pathlib
import subprocess

import numpy as np
import pytest
from casacore import tables
from dp3batch.dp3.install import dp3_environment, find_dp3_executable, wheel_aoflagger_strategy
from dp3batch.testing.synthetic_ms import (
    SyntheticMSSpec,
    generate_measurement_set,
)

SUBTABLES = (
    "ANTENNA",
    "DATA_DESCRIPTION",
    "FEED",
    "FIELD",
    "HISTORY",
    "OBSERVATION",
    "POINTING",
    "POLARIZATION",
    "PROCESSOR",
    "SPECTRAL_WINDOW",
    "STATE",
)

# --- DP3, found and set up as the workflow does it -------------------------------------------

DP3 = find_dp3_executable()
AOFLAGGER_STRATEGY = wheel_aoflagger_strategy(DP3)


def run_dp3(*args: str) -> subprocess.CompletedProcess:
    """Run DP3 single-threaded; DP3 reports errors on stdout, so show that on failure."""
    cmd = [DP3, "checkparset=1", "numthreads=1", *args]
    proc = subprocess.run(cmd, env=dp3_environment(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="session")
def default_ms(tmp_path_factory) -> pathlib.Path:
    """The default-spec MS, written once and only read by the tests."""
    return generate_measurement_set(tmp_path_factory.mktemp("ms") / "default.ms")


def getcol(ms: pathlib.Path, column: str, subtable: str = "") -> np.ndarray:
    with tables.table(str(ms / subtable) if subtable else str(ms), ack=False) as t:
        return t.getcol(column)


def flags_cube(ms: pathlib.Path, spec: SyntheticMSSpec) -> np.ndarray:
    """FLAG as (time, baseline, channel, correlation)."""
    flags = getcol(ms, "FLAG")
    return flags.reshape(spec.n_times, spec.n_baselines, spec.n_channels, -1)


# --- structure and content ----------------------------------------------------------------


# --- DP3 ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_dp3_copies_ms(default_ms, tmp_path):
    out = tmp_path / "copy.ms"
    run_dp3(f"msin={default_ms}", f"msout={out}", "steps=[]")
    for column in ("DATA", "UVW", "TIME", "ANTENNA1", "ANTENNA2", "FLAG"):
        assert np.array_equal(getcol(out, column), getcol(default_ms, column)), column


@pytest.mark.e2e
def test_dp3_aoflagger_flags_injected_rfi(default_ms, tmp_path):
    spec = SyntheticMSSpec()
    out = tmp_path / "flagged.ms"
    strategy = f"aoflagger.strategy={AOFLAGGER_STRATEGY}"
    run_dp3(f"msin={default_ms}", f"msout={out}", "steps=[aoflagger]", strategy)
    flags = flags_cube(out, spec)
    assert flags[:, :, spec.rfi_channels].mean() > 0.9
    assert flags[spec.rfi_times].mean() > 0.9
    clean = np.delete(np.delete(flags, spec.rfi_times, axis=0), spec.rfi_channels, axis=2)
    assert clean.mean() < 0.2


@pytest.mark.e2e
def test_dp3_flag_and_average_pipeline(default_ms, tmp_path):
    """The workflow's step chain runs on the synthetic MS and averages it 2x2."""
    spec = SyntheticMSSpec()
    out = tmp_path / "averaged.ms"
    run_dp3(
        f"msin={default_ms}",
        f"msout={out}",
        "steps=[preflagger,aoflagger,averager]",
        "preflagger.type=preflagger",
        "aoflagger.type=aoflagger",
        f"aoflagger.strategy={AOFLAGGER_STRATEGY}",
        "averager.type=averager",
        "averager.timestep=2",
        "averager.freqstep=2",
    )
    with tables.table(str(out), ack=False) as ms:
        assert ms.nrows() == spec.n_times // 2 * spec.n_baselines
        assert ms.getcell("DATA", 0).shape == (spec.n_channels // 2, 4)
        np.testing.assert_allclose(ms.getcol("INTERVAL"), 2 * spec.interval)
