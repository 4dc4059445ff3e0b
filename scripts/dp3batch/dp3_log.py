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


def parse_flag_counts(log_text: str) -> dict[str, dict[str, float]]:
    """What each PreFlagger and AOFlagger step flagged, as DP3 itself counted it (before any
    averaging): {step: {percent, flagged, visibilities}}."""
    counts: dict[str, dict[str, float]] = {}
    step = None
    for line in log_text.splitlines():
        match = _FLAGS_SET_BY.match(line)
        if match:
            step = match.group(1)
            continue
        match = _TOTAL_FLAGGED.match(line) if step else None
        if match:
            counts[step] = {
                "percent": float(match.group(1)),
                "flagged": int(match.group(2)),
                "visibilities": int(match.group(3)),
            }
            step = None
    return counts
