"""Synthetic LOFAR-like MeasurementSets (MSv2) for tests and benchmarks.

The MS holds Gaussian noise plus strong, easy-to-find RFI in chosen channels and time slots,
so that a flagger's result can be checked. Antenna positions, UVW and subtables are realistic
enough for DP3 to read, flag, average and write the data.

CLI: ``python -m dp3batch.testing.synthetic_ms OUTDIR --count N [--prefix demo] [--size-mb X] ...``
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from casacore import tables

N_CORRELATIONS = 4
# Linear feeds XX, XY, YX, YY (casacore Stokes enum).
CORR_TYPES = (9, 10, 11, 12)
CORR_PRODUCTS = ((0, 0), (0, 1), (1, 0), (1, 1))

START_TIME = 4.9e9  # MJD seconds (UTC), 2014-02-24
PHASE_CENTRE = (2.0, 0.9)  # J2000 RA, Dec in rad; circumpolar for LOFAR, so always up
LOFAR_CORE_LON = math.radians(6.869837)
LOFAR_CORE_LAT = math.radians(52.915122)
LOFAR_CORE_HEIGHT = 50.0  # m above the WGS84 ellipsoid
STATION_DIAMETER = 31.25  # m, LOFAR HBA core station
# Fixed, so that all MSs of a batch share one array layout (only the noise seed differs).
LAYOUT_SEED = 20140226
# Keep each DATA putcol near this size: large enough to be fast, small enough for memory.
CHUNK_BYTES = 64 * 2**20
TILE_BYTES = 256 * 2**10
# Per-row bytes of all main-table columns except DATA/FLAG, and the fixed cost of the
# table files and subtables; measured on disk with casacore 3.8, used for size targets.
ROW_OVERHEAD_BYTES = 140
FIXED_OVERHEAD_BYTES = 300_000


@dataclass(frozen=True)
class SyntheticMSSpec:
    """Shape and content of a synthetic MS (noise sigma 1 per real/imag part by default)."""

    n_antennas: int = 6
    n_times: int = 20
    n_channels: int = 16
    interval: float = 2.0  # seconds
    start_frequency: float = 120e6  # Hz, centre of first channel
    channel_width: float = 195312.5
    rfi_channels: tuple[int, ...] = (5,)  # channels fully hit by RFI (all times, all baselines)
    rfi_times: tuple[int, ...] = (7,)  # time slots fully hit by RFI (all channels)
    rfi_amplitude: float = 1000.0  # relative to noise sigma
    noise_sigma: float = 1.0
    seed: int = 0
    include_autocorrelations: bool = False
    # OBSERVATION::TELESCOPE_NAME: AOFlagger picks its default strategy by it.
    telescope_name: str = "LOFAR"
    # Time slots whose rows are left out (a gap in the time grid; DP3 fills it in).
    missing_times: tuple[int, ...] = ()
    # The visibility column's name (e.g. CORRECTED_DATA for an MS without DATA).
    data_column: str = "DATA"
    # Also a CORRECTED_DATA column, holding DATA / 2 (so that a test can tell them apart).
    corrected_data: bool = False
    # Spectral windows (each its own channels, every baseline and time), and the row order:
    # "window" (all rows of window 0, then window 1, ...) or "time" (sorted by time).
    n_windows: int = 1
    window_order: str = "window"
    # A station made bad on purpose: its baselines already flagged in the input for the
    # first `bad_station_flagged_fraction` of the time slots (a station that failed early in
    # the night), as a test of the per-station flag accounting.
    bad_station: int | None = None
    bad_station_flagged_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.n_antennas < 2 or self.n_times < 1 or self.n_channels < 1:
            raise ValueError(f"need >=2 antennas, >=1 time and >=1 channel: {self}")
        if self.interval <= 0 or self.channel_width <= 0 or self.noise_sigma <= 0:
            raise ValueError(f"interval, channel_width and noise_sigma must be > 0: {self}")
        if any(not 0 <= c < self.n_channels for c in self.rfi_channels):
            raise ValueError(f"rfi_channels {self.rfi_channels} outside 0..{self.n_channels - 1}")
        if any(not 0 <= t < self.n_times for t in self.rfi_times):
            raise ValueError(f"rfi_times {self.rfi_times} outside 0..{self.n_times - 1}")
        if self.bad_station is not None and not 0 <= self.bad_station < self.n_antennas:
            raise ValueError(f"bad_station {self.bad_station} outside 0..{self.n_antennas - 1}")
        if not 0 <= self.bad_station_flagged_fraction <= 1:
            raise ValueError(f"bad_station_flagged_fraction must be in [0, 1]: {self}")

    @property
    def bad_station_times(self) -> int:
        """How many time slots (the first ones) of the bad station are flagged in the input."""
        if self.bad_station is None:
            return 0
        return round(self.bad_station_flagged_fraction * self.n_times)

    @property
    def n_baselines(self) -> int:
        """Number of baselines (rows per time slot)."""
        n = self.n_antennas
        return n * (n - 1) // 2 + (n if self.include_autocorrelations else 0)

    @property
    def n_rows(self) -> int:
        """Number of main-table rows."""
        return self.n_times * self.n_baselines

    @property
    def channel_frequencies(self) -> np.ndarray:
        """Channel centre frequencies in Hz."""
        return self.start_frequency + self.channel_width * np.arange(self.n_channels)

    @property
    def times(self) -> np.ndarray:
        """Centres of the time slots in MJD seconds."""
        return START_TIME + self.interval * (np.arange(self.n_times) + 0.5)


def baselines(n_antennas: int, include_autocorrelations: bool = False) -> np.ndarray:
    """(n_baselines, 2) antenna pairs with antenna1 <= antenna2, in the usual MS order."""
    a1, a2 = np.triu_indices(n_antennas, k=0 if include_autocorrelations else 1)
    return np.stack([a1, a2], axis=1).astype(np.int32)


def antenna_positions(n_antennas: int) -> np.ndarray:
    """ITRF positions (n, 3) in m, scattered over a few hundred metres around the LOFAR core."""
    rng = np.random.default_rng(LAYOUT_SEED)
    # Grow the field with the antenna count so that stations never overlap.
    radius = max(300.0, 2.0 * STATION_DIAMETER * math.sqrt(n_antennas))
    enu: list[np.ndarray] = []
    while len(enu) < n_antennas:
        cand = np.array([*rng.uniform(-radius, radius, 2), rng.normal(0.0, 1.0)])
        if np.hypot(*cand[:2]) > radius:
            continue
        if all(np.hypot(*(cand[:2] - p[:2])) >= STATION_DIAMETER for p in enu):
            enu.append(cand)
    return _enu_to_itrf(np.array(enu), LOFAR_CORE_LON, LOFAR_CORE_LAT, LOFAR_CORE_HEIGHT)


def _enu_to_itrf(enu: np.ndarray, lon: float, lat: float, height: float) -> np.ndarray:
    """Convert local east/north/up offsets to ITRF (WGS84) positions."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    n = a / math.sqrt(1 - e2 * math.sin(lat) ** 2)
    ref = np.array(
        [
            (n + height) * math.cos(lat) * math.cos(lon),
            (n + height) * math.cos(lat) * math.sin(lon),
            (n * (1 - e2) + height) * math.sin(lat),
        ]
    )
    sl, cl, sb, cb = math.sin(lon), math.cos(lon), math.sin(lat), math.cos(lat)
    rot = np.array([[-sl, -sb * cl, cb * cl], [cl, -sb * sl, cb * sl], [0.0, cb, sb]])
    return ref + enu @ rot.T


def _rot_z(angle: np.ndarray | float) -> np.ndarray:
    """Frame rotation about z (IAU R3), vectorised over angle."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.moveaxis(np.array([[c, s, z], [-s, c, z], [z, z, o]]), (0, 1), (-2, -1))


def _rot_y(angle: float) -> np.ndarray:
    """Frame rotation about y (IAU R2)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def antenna_uvw(positions: np.ndarray, times: np.ndarray, ra: float, dec: float) -> np.ndarray:
    """UVW (n_times, n_antennas, 3) in m of each antenna towards J2000 (ra, dec).

    ITRF -> mean equator of date by sidereal rotation (GMST), then IAU-1976 precession back
    to J2000. Nutation, polar motion and UT1-UTC are ignored: compared with casacore's
    full conversion that is ~1e-4 of the baseline length (cm for these arrays).
    """
    jd = times / 86400.0 + 2400000.5
    t_cent = (jd - 2451545.0) / 36525.0
    era = 2 * np.pi * (0.7790572732640 + 1.00273781191135448 * (jd - 2451545.0))
    arcsec = np.pi / (180 * 3600)
    gmst = era + (0.014506 + 4612.156534 * t_cent + 1.3915817 * t_cent**2) * arcsec
    # Precession J2000 -> mean of date changes by ~1e-9 rad per hour: one matrix suffices.
    tc = float(np.mean(t_cent))
    zeta = (2306.2181 * tc + 0.30188 * tc**2 + 0.017998 * tc**3) * arcsec
    z = (2306.2181 * tc + 1.09468 * tc**2 + 0.018203 * tc**3) * arcsec
    theta = (2004.3109 * tc - 0.42665 * tc**2 - 0.041833 * tc**3) * arcsec
    precession = _rot_z(-z) @ _rot_y(theta) @ _rot_z(-zeta)
    sa, ca, sd, cd = math.sin(ra), math.cos(ra), math.sin(dec), math.cos(dec)
    uvw_basis = np.array([[-sa, ca, 0.0], [-sd * ca, -sd * sa, cd], [cd * ca, cd * sa, sd]])
    # Celestial(of date) = R3(-gmst) @ ITRF; J2000 = P^T @ of date; uvw = basis @ J2000.
    itrf_to_uvw = uvw_basis @ precession.T @ _rot_z(-gmst)
    return np.einsum("tij,aj->tai", itrf_to_uvw, positions - positions.mean(axis=0))


def _main_table_desc(spec: SyntheticMSSpec) -> tuple[dict, dict]:
    """Table description and data-manager info for the DATA/FLAG/WEIGHT/SIGMA columns."""
    cell = [spec.n_channels, N_CORRELATIONS]
    desc = tables.maketabdesc(
        [
            tables.makearrcoldesc(
                "DATA", 0j, shape=cell, valuetype="complex", comment="The data column"
            ),
            tables.makearrcoldesc("FLAG", False, shape=cell, valuetype="boolean"),
            # options=5 (Direct | FixedShape): stored inline, not in the indirect file.
            tables.makearrcoldesc(
                "WEIGHT", 0.0, shape=[N_CORRELATIONS], valuetype="float", options=5
            ),
            tables.makearrcoldesc(
                "SIGMA", 0.0, shape=[N_CORRELATIONS], valuetype="float", options=5
            ),
        ]
    )
    # Tiles hold whole rows (all channels and correlations), as in LOFAR MSs, so that
    # row-range putcol/getcol touch complete tiles only.
    rows_per_tile = max(1, TILE_BYTES // (8 * spec.n_channels * N_CORRELATIONS))
    tile = np.array([N_CORRELATIONS, spec.n_channels, rows_per_tile], dtype=np.int32)
    dminfo = {
        "*1": {
            "NAME": "TiledData",
            "TYPE": "TiledColumnStMan",
            "SPEC": {"DEFAULTTILESHAPE": tile},
            "COLUMNS": ["DATA"],
        },
        "*2": {
            "NAME": "TiledFlag",
            "TYPE": "TiledColumnStMan",
            "SPEC": {"DEFAULTTILESHAPE": tile},
            "COLUMNS": ["FLAG"],
        },
    }
    return desc, dminfo


def _fill_subtables(ms_path: pathlib.Path, spec: SyntheticMSSpec) -> None:
    """Fill ANTENNA, SPECTRAL_WINDOW, POLARIZATION, FIELD, etc. with one consistent setup."""
    start, end = START_TIME, START_TIME + spec.n_times * spec.interval
    positions = antenna_positions(spec.n_antennas)
    n_ant = spec.n_antennas

    def sub(name: str) -> tables.table:
        return tables.table(str(ms_path / name), readonly=False, ack=False)

    with sub("ANTENNA") as t:
        t.addrows(n_ant)
        t.putcol("NAME", [f"CS{i + 1:03d}HBA0" for i in range(n_ant)])
        t.putcol("STATION", ["LOFAR"] * n_ant)
        t.putcol("TYPE", ["GROUND-BASED"] * n_ant)
        t.putcol("MOUNT", ["X-Y"] * n_ant)
        t.putcol("POSITION", positions)
        t.putcol("OFFSET", np.zeros((n_ant, 3)))
        t.putcol("DISH_DIAMETER", np.full(n_ant, STATION_DIAMETER))
        t.putcol("FLAG_ROW", np.zeros(n_ant, dtype=bool))

    freqs = spec.channel_frequencies
    widths = np.full(spec.n_channels, spec.channel_width)
    with sub("SPECTRAL_WINDOW") as t:
        t.addrows(1)
        t.putcell("NAME", 0, "SB-000")
        t.putcell("NUM_CHAN", 0, spec.n_channels)
        t.putcell("CHAN_FREQ", 0, freqs)
        t.putcell("CHAN_WIDTH", 0, widths)
        t.putcell("EFFECTIVE_BW", 0, widths)
        t.putcell("RESOLUTION", 0, widths)
        t.putcell("REF_FREQUENCY", 0, float(freqs.mean()))
        t.putcell("TOTAL_BANDWIDTH", 0, float(widths.sum()))
        t.putcell("MEAS_FREQ_REF", 0, 5)  # TOPO, as LOFAR writes it
        t.putcell("NET_SIDEBAND", 0, 1)
        t.putcell("IF_CONV_CHAIN", 0, 0)
        t.putcell("FREQ_GROUP", 0, 0)
        t.putcell("FREQ_GROUP_NAME", 0, "")
        t.putcell("FLAG_ROW", 0, False)

    with sub("POLARIZATION") as t:
        t.addrows(1)
        t.putcell("NUM_CORR", 0, N_CORRELATIONS)
        t.putcell("CORR_TYPE", 0, np.array(CORR_TYPES, dtype=np.int32))
        t.putcell("CORR_PRODUCT", 0, np.array(CORR_PRODUCTS, dtype=np.int32))
        t.putcell("FLAG_ROW", 0, False)

    with sub("DATA_DESCRIPTION") as t:
        t.addrows(1)
        t.putcell("SPECTRAL_WINDOW_ID", 0, 0)
        t.putcell("POLARIZATION_ID", 0, 0)
        t.putcell("FLAG_ROW", 0, False)

    direction = np.array([PHASE_CENTRE])
    with sub("FIELD") as t:
        t.addrows(1)
        t.putcell("NAME", 0, "SYNTHETIC")
        t.putcell("CODE", 0, "")
        t.putcell("TIME", 0, start)
        t.putcell("NUM_POLY", 0, 0)
        for col in ("DELAY_DIR", "PHASE_DIR", "REFERENCE_DIR"):
            t.putcell(col, 0, direction)
        t.putcell("SOURCE_ID", 0, -1)
        t.putcell("FLAG_ROW", 0, False)

    with sub("OBSERVATION") as t:
        t.addrows(1)
        t.putcell("TELESCOPE_NAME", 0, spec.telescope_name)
        t.putcell("TIME_RANGE", 0, np.array([start, end]))
        t.putcell("OBSERVER", 0, "dp3batch")
        t.putcell("PROJECT", 0, "synthetic")
        t.putcell("SCHEDULE_TYPE", 0, "LOFAR")
        t.putcell("RELEASE_DATE", 0, end)
        t.putcell("LOG", 0, np.array([""]))
        t.putcell("SCHEDULE", 0, np.array([""]))
        t.putcell("FLAG_ROW", 0, False)

    with sub("FEED") as t:
        t.addrows(n_ant)
        t.putcol("ANTENNA_ID", np.arange(n_ant, dtype=np.int32))
        t.putcol("FEED_ID", np.zeros(n_ant, dtype=np.int32))
        t.putcol("SPECTRAL_WINDOW_ID", np.full(n_ant, -1, dtype=np.int32))
        t.putcol("TIME", np.full(n_ant, (start + end) / 2))
        t.putcol("INTERVAL", np.full(n_ant, end - start))
        t.putcol("NUM_RECEPTORS", np.full(n_ant, 2, dtype=np.int32))
        t.putcol("BEAM_ID", np.full(n_ant, -1, dtype=np.int32))
        t.putcol("BEAM_OFFSET", np.zeros((n_ant, 2, 2)))
        t.putcol("POLARIZATION_TYPE", np.array([["X", "Y"]] * n_ant))
        t.putcol("POL_RESPONSE", np.tile(np.eye(2, dtype=np.complex64), (n_ant, 1, 1)))
        t.putcol("POSITION", np.zeros((n_ant, 3)))
        t.putcol("RECEPTOR_ANGLE", np.tile([0.0, math.pi / 2], (n_ant, 1)))

    with sub("STATE") as t:
        t.addrows(1)
        t.putcell("SIG", 0, True)
        t.putcell("REF", 0, False)
        t.putcell("CAL", 0, 0.0)
        t.putcell("LOAD", 0, 0.0)
        t.putcell("SUB_SCAN", 0, 0)
        t.putcell("OBS_MODE", 0, "OBSERVE_TARGET.ON_SOURCE")
        t.putcell("FLAG_ROW", 0, False)

    with sub("PROCESSOR") as t:
        t.addrows(1)
        t.putcell("TYPE", 0, "CORRELATOR")
        t.putcell("SUB_TYPE", 0, "LOFAR-COBALT")
        t.putcell("TYPE_ID", 0, -1)
        t.putcell("MODE_ID", 0, -1)
        t.putcell("FLAG_ROW", 0, False)

    with sub("POINTING") as t:
        t.addrows(n_ant)
        t.putcol("ANTENNA_ID", np.arange(n_ant, dtype=np.int32))
        t.putcol("TIME", np.full(n_ant, (start + end) / 2))
        t.putcol("INTERVAL", np.full(n_ant, end - start))
        t.putcol("NAME", ["SYNTHETIC"] * n_ant)
        t.putcol("NUM_POLY", np.zeros(n_ant, dtype=np.int32))
        t.putcol("TIME_ORIGIN", np.full(n_ant, start))
        t.putcol("DIRECTION", np.tile(direction, (n_ant, 1, 1)))
        t.putcol("TARGET", np.tile(direction, (n_ant, 1, 1)))
        t.putcol("TRACKING", np.ones(n_ant, dtype=bool))

    with sub("HISTORY") as t:
        t.addrows(1)
        t.putcell("TIME", 0, start)
        t.putcell("OBSERVATION_ID", 0, 0)
        t.putcell("MESSAGE", 0, f"Synthetic MS: {spec}")
        t.putcell("PRIORITY", 0, "NORMAL")
        t.putcell("ORIGIN", 0, "dp3batch.synthetic_ms")
        t.putcell("OBJECT_ID", 0, 0)
        t.putcell("APPLICATION", 0, "dp3batch.synthetic_ms")
        t.putcell("CLI_COMMAND", 0, np.array([""]))
        t.putcell("APP_PARAMS", 0, np.array([""]))


def _fill_main_table(ms: tables.table, spec: SyntheticMSSpec) -> None:
    """Write the metadata columns at once and DATA/FLAG in large time-slot chunks."""
    n_bl, n_rows = spec.n_baselines, spec.n_rows
    pairs = baselines(spec.n_antennas, spec.include_autocorrelations)
    ms.addrows(n_rows)

    times = spec.times
    ant_uvw = antenna_uvw(antenna_positions(spec.n_antennas), times, *PHASE_CENTRE)
    # MS convention: UVW of a baseline is uvw(antenna2) - uvw(antenna1).
    uvw = ant_uvw[:, pairs[:, 1]] - ant_uvw[:, pairs[:, 0]]
    ms.putcol("UVW", uvw.reshape(n_rows, 3))
    row_time = np.repeat(times, n_bl)
    for col in ("TIME", "TIME_CENTROID"):
        ms.putcol(col, row_time)
    for col in ("INTERVAL", "EXPOSURE"):
        ms.putcol(col, np.full(n_rows, spec.interval))
    ms.putcol("ANTENNA1", np.tile(pairs[:, 0], spec.n_times))
    ms.putcol("ANTENNA2", np.tile(pairs[:, 1], spec.n_times))
    zeros = np.zeros(n_rows, dtype=np.int32)
    for col in ("FEED1", "FEED2", "DATA_DESC_ID", "PROCESSOR_ID", "FIELD_ID", "ARRAY_ID"):
        ms.putcol(col, zeros)
    for col in ("OBSERVATION_ID", "STATE_ID"):
        ms.putcol(col, zeros)
    ms.putcol("SCAN_NUMBER", zeros + 1)
    ms.putcol("FLAG_ROW", np.zeros(n_rows, dtype=bool))
    sigma = np.full((n_rows, N_CORRELATIONS), spec.noise_sigma, dtype=np.float32)
    ms.putcol("SIGMA", sigma)
    ms.putcol("WEIGHT", 1.0 / sigma**2)

    rng = np.random.default_rng(spec.seed)
    rfi_amp = np.float32(spec.rfi_amplitude * spec.noise_sigma)
    rfi_channels = np.array(sorted(set(spec.rfi_channels)), dtype=np.intp)
    other_channels = np.setdiff1d(np.arange(spec.n_channels), rfi_channels)
    rfi_times = set(spec.rfi_times)
    row_bytes = 8 * spec.n_channels * N_CORRELATIONS
    times_per_chunk = max(1, CHUNK_BYTES // (row_bytes * n_bl))
    cell = (spec.n_channels, N_CORRELATIONS)
    flags = np.zeros((times_per_chunk * n_bl, *cell), dtype=bool)
    bad_baselines = np.flatnonzero((pairs == spec.bad_station).any(axis=1))
    for t0 in range(0, spec.n_times, times_per_chunk):
        nt = min(times_per_chunk, spec.n_times - t0)
        nr = nt * n_bl
        # Real and imaginary parts are independent N(0, sigma): draw float32 pairs and view
        # them as complex64 to avoid a complex temporary.
        data = rng.standard_normal((nr, *cell, 2), dtype=np.float32)
        data *= np.float32(spec.noise_sigma)
        data = data.view(np.complex64)[..., 0]
        # RFI: large amplitude with random phase on every correlation, so that any
        # polarisation the flagger looks at (incl. Stokes conversions) sees it.
        if rfi_channels.size:
            data[:, rfi_channels] += _rfi(rng, (nr, rfi_channels.size, N_CORRELATIONS), rfi_amp)
        # Skip the RFI channels here: two random phases could cancel where both RFIs meet.
        for t in sorted(rfi_times.intersection(range(t0, t0 + nt))):
            rows = slice((t - t0) * n_bl, (t - t0 + 1) * n_bl)
            shape = (n_bl, other_channels.size, N_CORRELATIONS)
            data[rows, other_channels] += _rfi(rng, shape, rfi_amp)
        ms.putcol("DATA", data, startrow=t0 * n_bl, nrow=nr)
        flags[:nr] = False
        for t in range(t0, min(t0 + nt, spec.bad_station_times)):
            flags[(t - t0) * n_bl + bad_baselines] = True
        ms.putcol("FLAG", flags[:nr], startrow=t0 * n_bl, nrow=nr)


def _rfi(rng: np.random.Generator, shape: tuple[int, ...], amplitude: np.float32) -> np.ndarray:
    """Complex RFI of fixed amplitude and uniformly random phase."""
    phase = rng.uniform(0.0, 2 * np.pi, shape).astype(np.float32)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def generate_measurement_set(
    path: str | pathlib.Path,
    spec: SyntheticMSSpec = SyntheticMSSpec(),  # frozen dataclass: a safe shared default
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a synthetic MSv2 at ``path`` and return its path.

    Refuses to replace an existing path unless ``overwrite``.
    """
    path = pathlib.Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True or --overwrite)")
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    desc, dminfo = _main_table_desc(spec)
    ms = tables.default_ms(str(path), desc, dminfo)
    try:
        # The default description says ITRF, but MS UVW is in the phase-centre frame.
        ms.putcolkeyword("UVW", "MEASINFO", {"type": "uvw", "Ref": "J2000"})
        _fill_main_table(ms, spec)
    finally:
        ms.close()
    _fill_subtables(path, spec)
    if spec.corrected_data:
        _add_corrected_data(path)
    if spec.missing_times:
        _remove_time_slots(path, spec)
    if spec.n_windows > 1:
        _add_windows(path, spec)
    if spec.data_column != "DATA":
        with tables.table(str(path), readonly=False, ack=False) as ms:
            ms.renamecol("DATA", spec.data_column)
    _write_row_counts(path)
    return path


def _write_row_counts(path: pathlib.Path) -> None:
    """Each table's row count into its `table.dat`, as DP3's outputs and other MSs written in
    one go hold it. casacore keeps the rows added to a table reopened for writing (the
    subtables `default_ms` made, filled above) in its `table.lock` until something rewrites
    `table.dat`, as a keyword change does: copied without its lock files (to an archive, to
    read-only storage) such an MS has empty subtables (20 ms for the 13 tables)."""
    for name in ["", *sorted(entry.name for entry in os.scandir(path) if entry.is_dir())]:
        with tables.table(str(path / name), readonly=False, ack=False) as table:
            table.putkeyword("dp3batch_row_count", True)
            table.removekeyword("dp3batch_row_count")


def _add_corrected_data(path: pathlib.Path) -> None:
    with tables.table(str(path), readonly=False, ack=False) as ms:
        description = ms.getcoldesc("DATA")
        ms.addcols(tables.maketabdesc(tables.makecoldesc("CORRECTED_DATA", description)))
        ms.putcol("CORRECTED_DATA", ms.getcol("DATA") / 2)


def _remove_time_slots(path: pathlib.Path, spec: SyntheticMSSpec) -> None:
    """Leave the rows of `spec.missing_times` out (the tiled storage managers cannot remove
    rows: copy the others into a new MS, subtables included)."""
    missing = set(spec.missing_times)
    keep = [
        t * spec.n_baselines + b
        for t in range(spec.n_times)
        if t not in missing
        for b in range(spec.n_baselines)
    ]
    full = path.with_name(path.name + ".full")
    path.rename(full)
    with tables.table(str(full), ack=False) as ms, ms.selectrows(keep) as selection:
        selection.copy(str(path), deep=True).close()
    shutil.rmtree(full)


def _add_windows(path: pathlib.Path, spec: SyntheticMSSpec) -> None:
    """Copy every row once per further window (its own DATA_DESC_ID, the visibilities times
    1 + window so that a test can tell the windows apart), in the chosen row order, and
    describe each window in SPECTRAL_WINDOW and DATA_DESCRIPTION."""
    count = spec.n_windows
    with tables.table(str(path / "SPECTRAL_WINDOW"), readonly=False, ack=False) as spw:
        for window in range(1, count):
            spw.copyrows(spw, startrowin=0, startrowout=-1, nrow=1)
            shift = window * spec.n_channels * spec.channel_width
            spw.putcell("CHAN_FREQ", window, spec.channel_frequencies + shift)
            spw.putcell("REF_FREQUENCY", window, float(spec.channel_frequencies.mean() + shift))
            spw.putcell("NAME", window, f"SB-{window:03d}")
    with tables.table(str(path / "DATA_DESCRIPTION"), readonly=False, ack=False) as description:
        for window in range(1, count):
            description.copyrows(description, startrowin=0, startrowout=-1, nrow=1)
            description.putcell("SPECTRAL_WINDOW_ID", window, window)
    with tables.table(str(path), readonly=False, ack=False) as ms:
        n_rows = ms.nrows()
        columns = {
            name: ms.getcol(name) for name in ms.colnames() if n_rows and ms.iscelldefined(name, 0)
        }
        columns["DATA_DESC_ID"] = np.zeros(n_rows, dtype=np.int32)
        ms.addrows(n_rows * (count - 1))
        for name, values in columns.items():
            copies = [values] * count
            if name in ("DATA", "CORRECTED_DATA"):
                copies = [values * (1 + window) for window in range(count)]
            if name == "DATA_DESC_ID":
                copies = [np.full(n_rows, window, dtype=np.int32) for window in range(count)]
            if spec.window_order == "time":
                per_time = [copy.reshape(-1, spec.n_baselines, *copy.shape[1:]) for copy in copies]
                combined = np.stack(per_time, axis=1).reshape(-1, *values.shape[1:])
            else:
                combined = np.concatenate(copies)
            ms.putcol(name, combined)


def spec_with_default_rfi(**fields) -> SyntheticMSSpec:
    """Spec from ``fields``; default RFI slots/channels outside a small MS are dropped."""
    defaults = SyntheticMSSpec()
    n_times = fields.get("n_times", defaults.n_times)
    n_channels = fields.get("n_channels", defaults.n_channels)
    fields.setdefault("rfi_times", tuple(t for t in defaults.rfi_times if t < n_times))
    fields.setdefault("rfi_channels", tuple(c for c in defaults.rfi_channels if c < n_channels))
    return SyntheticMSSpec(**fields)


def measurement_set_size_spec(
    target_bytes: int, n_antennas: int = 20, n_channels: int = 64, **fields
) -> SyntheticMSSpec:
    """Spec whose MS is roughly ``target_bytes`` on disk; only n_times is chosen.

    ``fields`` are further SyntheticMSSpec fields (seed, include_autocorrelations, ...).
    """
    n_baselines = n_antennas * (n_antennas - 1) // 2
    if fields.get("include_autocorrelations"):
        n_baselines += n_antennas
    cell_bytes = 8 * n_channels * N_CORRELATIONS + (n_channels * N_CORRELATIONS + 7) // 8
    bytes_per_time = (cell_bytes + ROW_OVERHEAD_BYTES) * n_baselines
    n_times = max(1, round((target_bytes - FIXED_OVERHEAD_BYTES) / bytes_per_time))
    return spec_with_default_rfi(
        n_antennas=n_antennas, n_channels=n_channels, n_times=n_times, **fields
    )


def disk_size(path: str | pathlib.Path) -> int:
    """Total size in bytes of the files below ``path``."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write ``--count`` MSs ``OUTDIR/<prefix>_<i>.ms`` with seeds seed+i."""
    parser = argparse.ArgumentParser(
        prog="python -m dp3batch.testing.synthetic_ms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("outdir", type=pathlib.Path)
    parser.add_argument("--count", type=int, default=1, help="number of MSs (default 1)")
    parser.add_argument("--prefix", default="demo", help="file name prefix (default demo)")
    parser.add_argument("--antennas", type=int, help="number of antennas")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--times", type=int, help="number of time slots")
    size.add_argument("--size-mb", type=float, help="target size per MS in MB (1e6 bytes)")
    parser.add_argument("--channels", type=int, help="number of channels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first MS (default 0)")
    parser.add_argument("--autocorrelations", action="store_true", help="add auto-correlations")
    parser.add_argument(
        "--telescope", default="LOFAR", help="OBSERVATION::TELESCOPE_NAME (default LOFAR)"
    )
    parser.add_argument(
        "--rfi-channels",
        type=lambda text: tuple(int(channel) for channel in text.split(",") if channel),
        help="channels hit by strong narrow-band RFI, comma-separated (default 5)",
    )
    parser.add_argument(
        "--bad-station",
        type=int,
        help="index of a station whose first 80%% of time slots are flagged in the input",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing MSs")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")

    fields = {
        key: value
        for key, value in (
            ("n_antennas", args.antennas),
            ("n_channels", args.channels),
            ("n_times", args.times),
        )
        if value is not None
    }
    fields["include_autocorrelations"] = args.autocorrelations
    if args.rfi_channels is not None:
        fields["rfi_channels"] = args.rfi_channels
    if args.bad_station is not None:
        fields["bad_station"] = args.bad_station
    fields["telescope_name"] = args.telescope
    try:
        if args.size_mb is not None:
            spec = measurement_set_size_spec(int(args.size_mb * 1e6), **fields)
        else:
            spec = spec_with_default_rfi(**fields)
    except ValueError as err:
        parser.error(str(err))

    for i in range(args.count):
        path = args.outdir / f"{args.prefix}_{i}.ms"
        try:
            generate_measurement_set(
                path, replace(spec, seed=args.seed + i), overwrite=args.overwrite
            )
        except FileExistsError as err:
            parser.error(str(err))
        print(f"{path}\t{disk_size(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
