"""Calibration inputs for the tests: sky models near the synthetic MSs' phase centre, H5Parms
written for an MS's antennas, and a real DP3 run that adds a sky model to an MS."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
from casacore import tables
from dp3batch.dp3.install import dp3_environment, find_dp3_executable
from dp3batch.testing.synthetic_ms import PHASE_CENTRE
from h5parm_writer import identity_soltabs, write_h5parm

RA_DEG, DEC_DEG = (math.degrees(angle) for angle in PHASE_CENTRE)
# Two point sources, one patch each, within a degree of the phase centre (RA 2.0, Dec 0.9 rad).
SOURCES = {
    "bright_a": (RA_DEG + 0.5, DEC_DEG + 0.3, 10.0),
    "bright_b": (RA_DEG - 0.8, DEC_DEG - 0.5, 5.0),
}


def sky_model_text(fluxes: dict[str, float] | None = None) -> str:
    """A sky model in the makesourcedb text format, with one patch per source."""
    lines = [
        "FORMAT = Name, Type, Patch, Ra, Dec, I, SpectralIndex, LogarithmicSI, "
        "ReferenceFrequency, MajorAxis, MinorAxis, Orientation",
        "",
    ]
    for patch, (ra, dec, _) in SOURCES.items():
        lines.append(f", , {patch}, {ra:.6f}deg, {dec:.6f}deg")
    lines.append("")
    for patch, (ra, dec, flux) in SOURCES.items():
        flux = (fluxes or {}).get(patch, flux)
        lines.append(
            f"point_{patch}, POINT, {patch}, {ra:.6f}deg, {dec:.6f}deg, {flux}, [0.0], true, "
            "120000000.0, 0.0, 0.0, 0.0"
        )
    return "\n".join(lines) + "\n"


def write_sky_model(path: Path, fluxes: dict[str, float] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sky_model_text(fluxes))
    return path


def antenna_names(ms: Path) -> list[str]:
    with tables.table(f"{ms}::ANTENNA", ack=False) as antennas:
        return list(antennas.getcol("NAME"))


def write_identity_h5parm(path: Path, kind: str, ms: Path) -> Path:
    """An H5Parm for `ms`'s antennas that leaves its data unchanged (see identity_soltabs)."""
    names = antenna_names(ms)
    return write_h5parm(path, identity_soltabs(kind, names), names)


def add_sky_to_measurement_set(ms: Path, sky_model: Path) -> None:
    """Add the sky model's visibilities to the MS's DATA in place, with DP3's predict."""
    completed = subprocess.run(
        [
            find_dp3_executable(),
            f"msin={ms}",
            "msout=.",
            "steps=[predict]",
            f"predict.sourcedb={sky_model}",
            "predict.operation=add",
        ],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]


def data_column(ms: Path) -> np.ndarray:
    with tables.table(str(ms), ack=False) as table:
        return table.getcol("DATA")


def unflagged_rms(ms: Path) -> float:
    """RMS amplitude of the unflagged visibilities."""
    with tables.table(str(ms), ack=False) as table:
        data = table.getcol("DATA")
        flags = table.getcol("FLAG")
    return float(np.sqrt(np.mean(np.abs(data[~flags]) ** 2)))
