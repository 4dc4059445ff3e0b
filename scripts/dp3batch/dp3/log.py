"""Reading DP3's own output (the per-MS log): its timing table and its flag counts.

Runs on the workers, after each DP3 run: it imports nothing but the standard library.
"""

from __future__ import annotations

import re

# A top-level line of DP3's timing table: the '%' sits in column 8, e.g.
# "   30.6% (   39 ms) AOFlaggerStep aoflagger." (sub-step lines are indented further).
_STEP_TIME = re.compile(r"^(?=.{7}%)\s*(\d+(?:\.\d+)?)% \(.*?\) (.+?)\.?\s*$")
_TOTAL_TIME = re.compile(r"^Total DP3 time\s+([\d.]+) real")


def parse_step_times(log_text: str) -> dict[str, float]:
    """Seconds per DP3 step from the timing table DP3 prints at the end of a run."""
    total = None
    steps: dict[str, float] = {}
    for line in log_text.splitlines():
        match = _TOTAL_TIME.match(line)
        if match:
            total = float(match.group(1))
            steps = {}
            continue
        if total is None:
            continue
        match = _STEP_TIME.match(line)
        if match:
            name = match.group(2).split()[-1]
            steps[name] = steps.get(name, 0.0) + float(match.group(1)) / 100 * total
    return steps


# DP3's count per flagging step, printed at the end of a run:
# "Flags set by AOFlaggerStep aoflagger." ... "Total flagged:    11.917%   (572 out of 4800 ...".
_FLAGS_SET_BY = re.compile(r"^Flags set by \S+ (\S+?)\.?\s*$")
_TOTAL_FLAGGED = re.compile(r"^Total flagged:\s+([\d.]+)%\s+\((\d+) out of (\d+) visibilities\)")


# Inside a step's section: its per-channel table ("   0-   9:    3%   4% ...") and its
# per-baseline table, whose TOTAL row is the percentage per antenna (DP3's own rounding, whole
# percent). DP3 prints the per-baseline table in blocks of 15 antennas (columns), each block
# with its header (" ant   15   16 ...") and its own TOTAL row: every block is read.
_CHANNEL_ROW = re.compile(r"^\s*\d+-\s*\d+:((?:\s+\d+%)+)\s*$")
_ANTENNA_HEADER = re.compile(r"^\s*ant((?:\s+\d+)+)\s*$")
_TOTAL_ROW = re.compile(r"^TOTAL((?:\s+\d+%)+)\s*$")
_PERCENT = re.compile(r"(\d+)%")


def parse_flag_counts(log_text: str) -> dict[str, dict]:
    """What each PreFlagger and AOFlagger step flagged, as DP3 itself counted it (before any
    averaging, and only the flags the step set itself: not those already set before it):
    {step: {percent, flagged, visibilities, per_channel, per_antenna}}, the last two in
    whole percent, by channel (of the data the step saw) and by antenna index (every block
    of DP3's per-baseline table; None for an antenna DP3 did not print)."""
    counts: dict[str, dict] = {}
    step = None
    channels: list[int] = []
    antennas: dict[int, int] = {}
    columns: list[int] = []
    for line in log_text.splitlines():
        match = _FLAGS_SET_BY.match(line)
        if match:
            step, channels, antennas, columns = match.group(1), [], {}, []
            continue
        if step is None:
            continue
        if row := _CHANNEL_ROW.match(line):
            channels += [int(value) for value in _PERCENT.findall(row.group(1))]
        elif header := _ANTENNA_HEADER.match(line):
            columns = [int(index) for index in header.group(1).split()]
        elif row := _TOTAL_ROW.match(line):
            values = [int(value) for value in _PERCENT.findall(row.group(1))]
            # A TOTAL row without a header before it (never seen): antennas in order.
            indices = columns or range(len(antennas), len(antennas) + len(values))
            antennas.update(zip(indices, values, strict=False))
            columns = []
        elif match := _TOTAL_FLAGGED.match(line):
            counts[step] = {
                "percent": float(match.group(1)),
                "flagged": int(match.group(2)),
                "visibilities": int(match.group(3)),
                "per_channel": channels,
                "per_antenna": [
                    antennas.get(index) for index in range(max(antennas, default=-1) + 1)
                ],
            }
            step = None
    return counts
