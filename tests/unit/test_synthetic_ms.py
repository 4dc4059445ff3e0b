"""Tests of the synthetic MeasurementSet generator, including DP3 reading and flagging it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from casacore import tables
from dp3batch.dp3.install import dp3_environment, find_dp3_executable, wheel_aoflagger_strategy
from dp3batch.testing.synthetic_ms import (
    CORR_TYPES,
    SyntheticMSSpec,
    disk_size,
    generate_measurement_set,
    main,
    measurement_set_size_spec,
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


def test_structure(default_ms):
    spec = SyntheticMSSpec()
    with tables.table(str(default_ms), ack=False) as ms:
        assert ms.nrows() == spec.n_times * 15 == spec.n_rows
        assert ms.getcell("DATA", 0).shape == (spec.n_channels, 4)
        assert ms.getcol("DATA").dtype == np.complex64
        subtables = {pathlib.Path(s).name for s in ms.getsubtables()}
        assert set(SUBTABLES) <= subtables
        np.testing.assert_allclose(ms.getcol("INTERVAL"), spec.interval)
        np.testing.assert_allclose(ms.getcol("EXPOSURE"), spec.interval)
        time = ms.getcol("TIME")
        a1, a2 = ms.getcol("ANTENNA1"), ms.getcol("ANTENNA2")
        assert ms.getcolkeyword("UVW", "MEASINFO")["Ref"] == "J2000"
    # Time-major, then baselines a1 < a2 in the same order for every time slot.
    assert np.all(np.diff(time) >= 0)
    assert len(np.unique(time)) == spec.n_times
    np.testing.assert_allclose(np.diff(np.unique(time)), spec.interval)
    assert 4.8e9 < time[0] < 5.0e9  # MJD seconds
    assert np.all(a1 < a2)
    pairs = np.stack([a1, a2], axis=1).reshape(spec.n_times, 15, 2)
    assert np.all(pairs == pairs[0])
    assert len({tuple(p) for p in pairs[0]}) == 15

    assert list(getcol(default_ms, "CORR_TYPE", "POLARIZATION")[0]) == list(CORR_TYPES)
    assert getcol(default_ms, "NUM_CHAN", "SPECTRAL_WINDOW")[0] == spec.n_channels
    freqs = getcol(default_ms, "CHAN_FREQ", "SPECTRAL_WINDOW")[0]
    np.testing.assert_allclose(np.diff(freqs), spec.channel_width)
    assert freqs[0] == spec.start_frequency
    assert getcol(default_ms, "TELESCOPE_NAME", "OBSERVATION") == ["LOFAR"]
    np.testing.assert_allclose(getcol(default_ms, "PHASE_DIR", "FIELD")[0, 0], [2.0, 0.9])
    positions = getcol(default_ms, "POSITION", "ANTENNA")
    assert positions.shape == (spec.n_antennas, 3)
    # Within a few hundred metres of the LOFAR core, on the Earth's surface.
    lon = np.degrees(np.arctan2(positions[:, 1], positions[:, 0]))
    np.testing.assert_allclose(lon, 6.87, atol=0.02)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 6.3648e6, rtol=1e-3)
    spread = np.linalg.norm(positions - positions.mean(axis=0), axis=1)
    assert 50 < spread.max() < 1000


def test_data_noise_and_rfi(default_ms):
    spec = SyntheticMSSpec()
    data = getcol(default_ms, "DATA").reshape(spec.n_times, 15, spec.n_channels, 4)
    assert not getcol(default_ms, "FLAG").any()
    clean = np.delete(np.delete(data, spec.rfi_times, axis=0), spec.rfi_channels, axis=2)
    assert np.std(clean.real) == pytest.approx(spec.noise_sigma, rel=0.05)
    assert np.std(clean.imag) == pytest.approx(spec.noise_sigma, rel=0.05)
    assert abs(np.mean(clean)) < 0.05
    for rfi in (data[:, :, spec.rfi_channels], data[spec.rfi_times]):
        assert np.abs(rfi).min() > 0.9 * spec.rfi_amplitude * spec.noise_sigma


def test_uvw_is_physical(default_ms):
    """|UVW| equals the baseline length and matches casacore's own UVW conversion."""
    from casacore.measures import measures
    from casacore.quanta import quantity

    positions = getcol(default_ms, "POSITION", "ANTENNA")
    uvw, time = getcol(default_ms, "UVW"), getcol(default_ms, "TIME")
    a1, a2 = getcol(default_ms, "ANTENNA1"), getcol(default_ms, "ANTENNA2")
    lengths = np.linalg.norm(positions[a2] - positions[a1], axis=1)
    np.testing.assert_allclose(np.linalg.norm(uvw, axis=1), lengths, rtol=1e-9)

    dm = measures()
    dm.do_frame(dm.position("ITRF", *[quantity(x, "m") for x in positions[0]]))
    dm.do_frame(dm.direction("J2000", quantity(2.0, "rad"), quantity(0.9, "rad")))
    for row in (0, len(time) - 1):
        dm.do_frame(dm.epoch("UTC", quantity(time[row], "s")))
        baseline = positions[a2[row]] - positions[a1[row]]  # MS convention: ant2 - ant1
        expected = dm.to_uvw(dm.baseline("ITRF", *[quantity(x, "m") for x in baseline]))
        expected = np.array(expected["xyz"].get_value("m"))
        # Nutation and UT1-UTC are not modelled: allow 1e-3 of the baseline length.
        np.testing.assert_allclose(uvw[row], expected, atol=1e-3 * lengths[row])


def test_every_table_holds_its_rows_without_its_lock_file(tmp_path, default_ms):
    """Copied without its `table.lock` files (as to an archive), the MS reads as before: the
    row counts are in each table's own `table.dat`, as in an MS DP3 writes."""
    copy = tmp_path / "copy.ms"
    shutil.copytree(default_ms, copy, ignore=shutil.ignore_patterns("table.lock"))
    for subtable in ("", *SUBTABLES):
        with tables.table(str(default_ms / subtable), ack=False) as original:
            with tables.table(str(copy / subtable), ack=False) as copied:
                assert copied.nrows() == original.nrows(), subtable
                assert "dp3batch_row_count" not in copied.getkeywords()
    assert getcol(copy, "NAME", "ANTENNA") == getcol(default_ms, "NAME", "ANTENNA")


def test_deterministic_per_seed(tmp_path):
    spec = SyntheticMSSpec(n_antennas=3, n_times=8, n_channels=8, seed=1)
    first = generate_measurement_set(tmp_path / "a.ms", spec)
    again = generate_measurement_set(tmp_path / "b.ms", spec)
    other = generate_measurement_set(tmp_path / "c.ms", replace(spec, seed=2))
    assert np.array_equal(getcol(first, "DATA"), getcol(again, "DATA"))
    assert not np.array_equal(getcol(first, "DATA"), getcol(other, "DATA"))
    # Only the noise depends on the seed, not the array or the sampling.
    for column in ("UVW", "TIME", "ANTENNA1", "ANTENNA2"):
        assert np.array_equal(getcol(first, column), getcol(other, column))


def test_autocorrelations(tmp_path):
    spec = SyntheticMSSpec(n_antennas=4, n_times=8, n_channels=8, include_autocorrelations=True)
    ms = generate_measurement_set(tmp_path / "auto.ms", spec)
    a1, a2 = getcol(ms, "ANTENNA1"), getcol(ms, "ANTENNA2")
    assert len(a1) == 8 * 10 == spec.n_rows
    assert np.all(a1 <= a2) and np.sum(a1 == a2) == 8 * 4


def test_invalid_spec_and_existing_path(tmp_path):
    with pytest.raises(ValueError, match="rfi_channels"):
        SyntheticMSSpec(n_channels=4)  # default RFI channel 5 does not exist
    with pytest.raises(ValueError, match="rfi_times"):
        SyntheticMSSpec(n_times=5)
    spec = SyntheticMSSpec(n_antennas=2, n_times=1, n_channels=1, rfi_channels=(), rfi_times=())
    path = generate_measurement_set(tmp_path / "x.ms", spec)
    with pytest.raises(FileExistsError):
        generate_measurement_set(path, spec)
    assert generate_measurement_set(path, spec, overwrite=True) == path


def test_size_spec(tmp_path):
    target = 20_000_000
    spec = measurement_set_size_spec(target, seed=3)
    assert spec.seed == 3 and spec.rfi_times == SyntheticMSSpec().rfi_times
    ms = generate_measurement_set(tmp_path / "sized.ms", spec)
    assert 0.7 * target < disk_size(ms) < 1.3 * target
    # Too small for the default RFI slot: it is dropped rather than failing.
    assert measurement_set_size_spec(100_000, n_antennas=3, n_channels=4).rfi_times == ()


def test_cli_writes_count_ms(tmp_path, capsys):
    outdir = tmp_path / "out"
    args = [str(outdir), "--count", "3", "--prefix", "demo", "--antennas", "3"]
    assert main([*args, "--times", "10", "--channels", "8"]) == 0
    written = sorted(p.name for p in outdir.iterdir())
    assert written == ["demo_0.ms", "demo_1.ms", "demo_2.ms"]
    assert len(capsys.readouterr().out.splitlines()) == 3
    data = [getcol(outdir / name, "DATA") for name in written]
    assert data[0].shape == (10 * 3, 8, 4)
    assert not np.array_equal(data[0], data[1])  # seeds differ per MS
    with pytest.raises(SystemExit):  # refuses to overwrite without --overwrite
        main(args)
    assert main([*args, "--size-mb", "1", "--overwrite"]) == 0
    assert 0.7e6 < disk_size(outdir / "demo_0.ms") < 1.3e6


# --- DP3 ----------------------------------------------------------------------------------


def test_a_bad_station_is_flagged_in_the_input_for_most_of_the_night(tmp_path):
    spec = SyntheticMSSpec(n_antennas=7, n_times=10, n_channels=8, rfi_times=(), bad_station=5)
    path = generate_measurement_set(tmp_path / "bad.ms", spec)
    with tables.table(str(path), ack=False) as ms:
        flags = ms.getcol("FLAG")
        antenna1, antenna2 = ms.getcol("ANTENNA1"), ms.getcol("ANTENNA2")
        time = ms.getcol("TIME")
    on_bad = (antenna1 == 5) | (antenna2 == 5)
    assert flags[on_bad].mean() == pytest.approx(0.8)
    assert not flags[~on_bad].any()
    # The first 8 of 10 time slots, whole: every channel and correlation.
    flagged_times = np.unique(time[on_bad][flags[on_bad].all(axis=(1, 2))])
    assert np.array_equal(flagged_times, spec.times[:8])
    with pytest.raises(ValueError, match="bad_station 7 outside"):
        SyntheticMSSpec(n_antennas=7, bad_station=7)


def test_cli_makes_a_bad_station_and_rfi_channels(tmp_path):
    assert (
        main(
            [
                str(tmp_path),
                "--antennas",
                "4",
                "--times",
                "5",
                "--channels",
                "12",
                "--bad-station",
                "2",
                "--rfi-channels",
                "3,9",
            ]
        )
        == 0
    )
    with tables.table(str(tmp_path / "demo_0.ms"), ack=False) as ms:
        flags = ms.getcol("FLAG")
        amplitude = np.abs(ms.getcol("DATA")).mean(axis=(0, 2))
    assert flags.mean() == pytest.approx(0.8 * 3 / 6)  # 3 of 6 baselines, 4 of 5 times
    assert set(np.flatnonzero(amplitude > 100)) == {3, 9}
