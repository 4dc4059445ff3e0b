"""The check of a joined output against its chunks, before it is committed.

DP3 reads the chunk outputs as one MS, concatenated in frequency (`msin=[c0.ms,c1.ms,…]`,
`steps=[]`). What it writes must be exactly the chunks side by side: the same rows, time
grid, baselines and uvw coordinates as every chunk; as many channels as all of them;
CHAN_FREQ the chunks' own, contiguous, and the grid an unchunked run makes; every chunk's
flags, visibilities and weights in its channels of the join, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from dp3batch.inputs.tables import open_subtable, read_table

# Rows read at a time: bounded memory for wide-band MSs.
ROWS_PER_BLOCK = 10_000
# Relative tolerance of a frequency against the grid computed here (DP3 computes in double).
FREQUENCY_TOLERANCE = 1e-9


# The columns compared row by row, and what each is to a reader. Those per channel are
# compared in each chunk's channels of the join; the others whole.
COMPARED = {
    "TIME": "time grid",
    "ANTENNA1": "baselines",
    "ANTENNA2": "baselines",
    "UVW": "uvw coordinates",
    "FLAG": "flags",
    "DATA": "visibilities",
    "WEIGHT_SPECTRUM": "weights",
}
PER_CHANNEL = ("FLAG", "DATA", "WEIGHT_SPECTRUM")


def _window(path: str) -> tuple[list[float], list[float]]:
    with open_subtable(path, "SPECTRAL_WINDOW") as spw:
        return list(spw.getcell("CHAN_FREQ", 0)), list(spw.getcell("CHAN_WIDTH", 0))


def averaged_grid(
    frequencies: Sequence[float], widths: Sequence[float], averaging: int
) -> list[float]:
    """The channel frequencies of a chain that averages `averaging` channels into one: the
    middle of each group's outer edges."""
    grid = []
    for first in range(0, len(frequencies), averaging):
        last = min(first + averaging, len(frequencies)) - 1
        low = frequencies[first] - abs(widths[first]) / 2
        high = frequencies[last] + abs(widths[last]) / 2
        grid.append((low + high) / 2)
    return grid


def join_problems(
    chunks: Sequence[str], joined: str, expected_grid: Sequence[float] | None = None
) -> list[str]:
    """What is wrong with the joined output (none: it is its chunks, side by side)."""
    import numpy as np

    problems: list[str] = []
    frequencies, widths = _window(joined)
    windows = [_window(chunk) for chunk in chunks]
    names = [Path(chunk).name for chunk in chunks]
    counts = [len(window[0]) for window in windows]
    if sum(counts) != len(frequencies):
        return [f"the join has {len(frequencies)} channels, its chunks {sum(counts)} together"]
    offsets = [sum(counts[:index]) for index in range(len(counts))]
    for name, (own, _), offset in zip(names, windows, offsets, strict=True):
        if not np.array_equal(frequencies[offset : offset + len(own)], own):
            problems.append(f"{name}: its CHAN_FREQ is not that of its channels in the join")
    problems += _contiguity_problems(frequencies, widths)
    if expected_grid is not None and not np.allclose(
        frequencies, expected_grid, rtol=FREQUENCY_TOLERANCE, atol=0
    ):
        problems.append("CHAN_FREQ of the join is not the grid an unchunked run makes")
    if problems:
        return problems
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(read_table(joined))
        parts = [stack.enter_context(read_table(chunk)) for chunk in chunks]
        rows = out.nrows()
        for name, part in zip(names, parts, strict=True):
            if part.nrows() != rows:
                problems.append(f"{name}: {part.nrows()} rows, the join {rows}")
        if problems:
            return problems
        mismatched: dict[str, set[str]] = {}
        present = set(out.colnames())
        compared = [column for column in COMPARED if column in present]
        for name, part in zip(names, parts, strict=True):
            missing = sorted(set(compared) - set(part.colnames()))
            if missing:
                problems.append(f"{name}: has no {', '.join(missing)} column, the join has")
        if problems:
            return problems
        for start in range(0, rows, ROWS_PER_BLOCK):
            count = min(ROWS_PER_BLOCK, rows - start)
            joined_block = {
                column: out.getcol(column, startrow=start, nrow=count) for column in compared
            }
            for name, part, offset, nchan in zip(names, parts, offsets, counts, strict=True):
                for column, values in joined_block.items():
                    own = part.getcol(column, startrow=start, nrow=count)
                    if column in PER_CHANNEL:
                        values = values[:, offset : offset + nchan]
                    if not np.array_equal(values, own, equal_nan=values.dtype.kind in "fc"):
                        mismatched.setdefault(name, set()).add(column)
    for name, columns in mismatched.items():
        differing = sorted({COMPARED[column] for column in columns})
        problems.append(f"{name}: its {', '.join(differing)} differ from its channels in the join")
    return problems


def _contiguity_problems(frequencies: Sequence[float], widths: Sequence[float]) -> list[str]:
    """Neighbouring channels must touch: no gap, no overlap, one direction."""
    for index in range(len(frequencies) - 1):
        step = frequencies[index + 1] - frequencies[index]
        touching = (abs(widths[index]) + abs(widths[index + 1])) / 2
        if abs(abs(step) - touching) > 1e-6 * touching or (
            index and (step > 0) != (frequencies[1] > frequencies[0])
        ):
            return [
                f"CHAN_FREQ of the join is not contiguous between channels {index} and "
                f"{index + 1} ({frequencies[index]:.1f} and {frequencies[index + 1]:.1f} Hz)"
            ]
    return []
