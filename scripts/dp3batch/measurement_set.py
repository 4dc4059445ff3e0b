"""Reading the shape of a MeasurementSet and what the chain should make of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dp3batch.config import Chain


@dataclass(frozen=True)
class Shape:
    rows: int
    times: int
    channels: int
    interval: float
    channel_width: float
    flagged_fraction: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def read_shape(path: str, with_flags: bool = False) -> Shape:
    """Rows, time slots, channels and resolutions of an MS (and, if asked, its flagged fraction)."""
    import numpy as np
    from casacore import tables

    with tables.table(str(path), ack=False, readonly=True) as table:
        rows = table.nrows()
        times = len(np.unique(table.getcol("TIME"))) if rows else 0
        interval = float(table.getcell("INTERVAL", 0)) if rows else 0.0
        flagged = None
        if with_flags and rows:
            flagged_count = 0
            total = 0
            step = 10_000
            for start in range(0, rows, step):
                flags = table.getcol("FLAG", startrow=start, nrow=min(step, rows - start))
                flagged_count += int(np.count_nonzero(flags))
                total += flags.size
            flagged = flagged_count / total if total else 0.0
    with tables.table(f"{path}::SPECTRAL_WINDOW", ack=False, readonly=True) as spw:
        channels = int(spw.getcell("NUM_CHAN", 0))
        channel_width = float(np.abs(spw.getcell("CHAN_WIDTH", 0)).mean())
    return Shape(rows, times, channels, interval, channel_width, flagged)


def averaging_factors(chain: Chain) -> tuple[int | None, int | None]:
    """Total time and frequency averaging of the chain; None where it cannot be known from
    the config alone (averaging given as a resolution)."""
    time_factor: int | None = 1
    freq_factor: int | None = 1
    for step in chain.steps:
        if step.type not in ("averager", "demixer"):
            continue
        params = step.params
        if "timeresolution" in params:
            time_factor = None
        elif time_factor is not None:
            time_factor *= int(params.get("timestep", 1))
        if "freqresolution" in params:
            freq_factor = None
        elif freq_factor is not None:
            freq_factor *= int(params.get("freqstep", 1))
    return time_factor, freq_factor


def read_telescope_name(path: str | Path) -> str:
    """OBSERVATION::TELESCOPE_NAME of the MS's first observation, as DP3 and AOFlagger read
    it ("" when the MS has none)."""
    from casacore import tables

    try:
        with tables.table(f"{path}::OBSERVATION", ack=False, readonly=True) as observation:
            if observation.nrows() == 0 or "TELESCOPE_NAME" not in observation.colnames():
                return ""
            return str(observation.getcell("TELESCOPE_NAME", 0)).strip()
    except RuntimeError:  # no OBSERVATION table: AOFlagger then knows no telescope either
        return ""
