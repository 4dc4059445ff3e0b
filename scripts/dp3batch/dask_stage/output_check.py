"""What DP3 must have written: the output shape, derived from the input as DP3 reads it.

Two independent derivations meet here. One is ours, from the input MS and the parameters:
the selected window (`msin.band`), its channels (`msin.startchan`, `msin.nchan`), the
baselines in its rows, the regular time grid DP3 reads (it inserts missing time slots), and
the averaging of each Averager and Demixer step. The other is DP3's own plan, the output
shape its MSWriter prints before processing. Where both exist they must agree; where only
one can say (DP3 alone knows what `timeresolution`, `freqresolution` or a baseline
selection amount to), that one counts; where neither can, the check fails and says so.
The output must then have exactly that shape: a short or partial output never passes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

from dp3batch.dp3.averaging import (
    AVERAGING_STEPS,
    averaged_channels,
    averaged_times,
    effective_step,
    msin_channels,
    plain_integer,
)
from dp3batch.dp3.parameters import DP3Parameters, DP3Step, format_value
from dp3batch.inputs.tables import Shape, open_subtable, read_table

# Time and channel selections of msin whose effect only DP3 can compute.
_MSIN_TIME_SELECTION = ("starttime", "endtime", "starttimeslot", "ntimes")


@dataclass(frozen=True)
class ExpectedShape:
    """The output's shape; None where a derivation cannot tell."""

    times: int | None = None
    baselines: int | None = None
    channels: int | None = None
    interval: float | None = None

    def as_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(frozen=True)
class InputGrid:
    """The input as DP3 reads it (one window, a regular time grid); None where unknown."""

    times: int | None
    baselines: int | None
    channels: int | None
    interval: float | None
    windows_in_rows: int = 1


class CannotDerive(RuntimeError):
    """The expected output shape cannot be known: the output cannot be checked."""


class RowsOutOfTimeOrder(RuntimeError):
    """The input's rows (of the window read) are not in time order: DP3 skips the rows whose
    time is earlier than the row before ("Time at rownr N of MS ... is less than previous
    time slot") and exits 0 with a wrong output."""


def time_order_problem(path: str, time, rows) -> str | None:
    """Why DP3 cannot read rows of these TIMEs (at these row numbers) in order, or None."""
    import numpy as np

    backwards = np.flatnonzero(np.diff(time) < 0)
    if len(backwards) == 0:
        return None
    row = int(rows[backwards[0] + 1])
    return (
        f"the rows of {path} are not in time order (row {row} is earlier than the row before "
        f"it; {len(backwards)} such step(s) back): DP3 skips such rows and would write a wrong "
        'output. Sort the MS by time first, e.g. python -c "from casacore import tables; '
        "tables.taql('select from IN.ms orderby TIME, ANTENNA1, ANTENNA2 giving OUT.ms as "
        "plain')\""
    )


def read_input_grid(path: str, parameters: DP3Parameters) -> InputGrid:
    """Open the input MS and describe what DP3 reads of it with these parameters."""
    import numpy as np

    msin = {key: format_value(value) for key, value in parameters.msin.items()}
    band = parameters.selected_band()
    with read_table(str(path)) as table:
        ddid = table.getcol("DATA_DESC_ID")
        selected = np.ones(len(ddid), dtype=bool) if band is None else ddid == band
        windows_in_rows = len(np.unique(ddid))
        time = table.getcol("TIME")[selected]
        # Rows of several windows read as one are refused below, naming that cause.
        if band is not None or windows_in_rows <= 1:
            problem = time_order_problem(path, time, np.flatnonzero(selected))
            if problem:
                raise RowsOutOfTimeOrder(problem)
        # One row's INTERVAL: the whole column of an MS of 10 million rows is 80 MB.
        first = int(np.argmax(selected))  # the first selected row (if any is)
        interval = float(table.getcell("INTERVAL", first)) if selected.any() else 0.0
        antenna1 = table.getcol("ANTENNA1")[selected]
        antenna2 = table.getcol("ANTENNA2")[selected]
    with open_subtable(path, "DATA_DESCRIPTION") as description:
        window = int(description.getcell("SPECTRAL_WINDOW_ID", band or 0))
    with open_subtable(path, "SPECTRAL_WINDOW") as spw:
        window_channels = int(spw.getcell("NUM_CHAN", window))
    if len(time) == 0:
        return InputGrid(0, 0, None, None, windows_in_rows)
    times = round((float(time.max()) - float(time.min())) / interval) + 1
    if any(key in msin for key in _MSIN_TIME_SELECTION):
        times = None
    baselines = count_baselines(antenna1, antenna2)
    if "baseline" in msin:
        baselines = None
    channels = msin_channels(parameters, window_channels)
    if band is not None:
        windows_in_rows = 1
    return InputGrid(times, baselines, channels, interval, windows_in_rows)


def count_baselines(antenna1, antenna2) -> int:
    """The distinct (ANTENNA1, ANTENNA2) pairs of the rows, as numpy counts them: a set of
    Python tuples took 4 s and a Python object per antenna index of an MS of 10 million rows
    (numpy: 0.6 s), on the worker while its DP3 runs."""
    import numpy as np

    if len(antenna1) == 0:
        return 0
    first = antenna1.astype(np.int64) - int(antenna1.min())
    second = antenna2.astype(np.int64) - int(antenna2.min())
    return len(np.unique(first * (int(second.max()) + 1) + second))


def derive_expected_shape(grid: InputGrid, parameters: DP3Parameters) -> ExpectedShape:
    """The input grid after the chain's averaging steps, as far as the parameters say."""
    if grid.windows_in_rows > 1:
        raise CannotDerive(
            f"the input has rows of {grid.windows_in_rows} spectral windows and DP3 reads one "
            "per run: run again (each window then becomes an output of its own, "
            "NAME_spw<k>.ms), or select one with `MsIn: {band: N}`"
        )
    shape = ExpectedShape(grid.times, grid.baselines, grid.channels, grid.interval)
    for step in parameters.steps:  # in their order
        if step.type in AVERAGING_STEPS:
            shape = _averaged(shape, step)
    return shape


def _averaged(shape: ExpectedShape, step: DP3Step) -> ExpectedShape:
    """One averaging step: a `timestep`/`freqstep` divides the grid (a partial last slot is
    kept; a factor larger than the slots or channels there are is capped at them, as DP3
    does); a `timeresolution`/`freqresolution` leaves it to DP3's plan."""
    times, interval, channels = shape.times, shape.interval, shape.channels
    if step.value("timeresolution") is not None:
        times = interval = None
    else:
        timestep = plain_integer(step.value("timestep") or "1")
        if timestep is None or times is None:
            times = interval = None
        else:
            factor = effective_step(timestep, times)
            times = averaged_times(times, timestep)
            interval = None if interval is None else interval * factor
    if step.value("freqresolution") is not None:
        channels = None
    else:
        freqstep = plain_integer(step.value("freqstep") or "1")
        known = channels is not None and freqstep is not None
        channels = averaged_channels(channels, freqstep) if known else None
    return replace(shape, times=times, interval=interval, channels=channels)


# The output DP3 announces before processing, e.g. "MSWriter msout." then
# "  nchan:          8", "  nbaselines:     15", "  ntimes:         7", "  time interval:  6".
_WRITER_FIELDS = {
    "nchan": "channels",
    "nbaselines": "baselines",
    "ntimes": "times",
    "time interval": "interval",
}
_WRITER_LINE = re.compile(r"^\s+(nchan|nbaselines|ntimes|time interval):\s+([0-9.eE+-]+)\s*$")


def dp3_planned_shape(log_text: str) -> ExpectedShape | None:
    """The output shape DP3's MSWriter printed before processing, or None if it printed none."""
    found: dict[str, float] = {}
    in_writer = False
    for line in log_text.splitlines():
        if line.startswith("MSWriter"):
            in_writer, found = True, {}
            continue
        if in_writer and line and not line.startswith(" "):
            in_writer = False
        match = _WRITER_LINE.match(line) if in_writer else None
        if match:
            found[_WRITER_FIELDS[match.group(1)]] = float(match.group(2))
    if len(found) < len(_WRITER_FIELDS):
        return None
    return ExpectedShape(
        times=int(found["times"]),
        baselines=int(found["baselines"]),
        channels=int(found["channels"]),
        interval=found["interval"],
    )


def _same(field: str, first: float, second: float) -> bool:
    # DP3 prints the interval with 6 significant digits.
    return math.isclose(first, second, rel_tol=1e-5) if field == "interval" else first == second


def expected_output_shape(
    derived: ExpectedShape, planned: ExpectedShape | None
) -> tuple[ExpectedShape, list[str]]:
    """Merge our derivation and DP3's plan: (the expectation, disagreements and unknowns)."""
    problems = []
    merged = {}
    for item in fields(ExpectedShape):
        ours = getattr(derived, item.name)
        dp3s = getattr(planned, item.name) if planned is not None else None
        if ours is not None and dp3s is not None and not _same(item.name, ours, dp3s):
            problems.append(f"DP3 planned {dp3s} {item.name} but the input and steps give {ours}")
        value = ours if ours is not None else dp3s
        if value is None:
            problems.append(
                f"cannot derive the expected {item.name} of the output (the steps leave it to "
                "DP3, and DP3's log has no MSWriter summary)"
            )
        merged[item.name] = value
    return ExpectedShape(**merged), problems


def output_problems(after: Shape, expected: ExpectedShape) -> list[str]:
    """How the output differs from the expected shape (a complete regular grid)."""
    if after.rows == 0:
        return ["the output has no rows"]
    problems = []
    if after.times != expected.times:
        problems.append(f"{after.times} time slots, expected {expected.times}")
    if expected.times is not None and expected.baselines is not None:
        rows = expected.times * expected.baselines
        if after.rows != rows:
            problems.append(f"{after.rows} rows, expected {rows}")
    if after.channels != expected.channels:
        problems.append(f"{after.channels} channels, expected {expected.channels}")
    if expected.interval is not None and not math.isclose(
        after.interval, expected.interval, rel_tol=1e-5
    ):
        problems.append(f"time interval {after.interval} s, expected {expected.interval} s")
    return problems


def check_output(
    grid: InputGrid, parameters: DP3Parameters, log_text: str, after: Shape
) -> tuple[ExpectedShape | None, list[str]]:
    """Everything wrong with an output: (the expected shape, problems); no problems = good.
    `grid`: `read_input_grid` of the input with these parameters."""
    try:
        derived = derive_expected_shape(grid, parameters)
    except CannotDerive as error:
        return None, [f"cannot derive the expected output shape: {error}"]
    expected, problems = expected_output_shape(derived, dp3_planned_shape(log_text))
    return expected, problems + output_problems(after, expected)
