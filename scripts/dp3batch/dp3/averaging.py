"""What DP3's averaging makes of a grid: how many time slots and channels an Averager (or a
Demixer) with `timestep`/`freqstep` leaves, and when DP3 refuses a channel count.

Measured with the dp3 6.6.0 wheel:
- a `timestep` or `freqstep` larger than the time slots or channels there are is capped at
  them (2 time slots with `timestep=4` give 1 slot of twice the interval; 3 channels with
  `freqstep=4` give 1 channel);
- a partial last time slot is kept (20 slots with `timestep=3` give 7);
- a `freqstep` smaller than the channels that does not divide them stops DP3 ("When
  averaging, nr of channels must divide integrally; nr of channels = 16 averaging factor = 3").
"""

from __future__ import annotations

import math
from dataclasses import replace

from dp3batch.dp3.parameters import DP3Parameters, DP3Step, format_value

AVERAGING_STEPS = ("averager", "demixer")


def plain_integer(value: str | None) -> int | None:
    """A parameter value that is a plain integer, else None (DP3 also takes expressions)."""
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def effective_step(step: int, size: int) -> int:
    """The averaging factor DP3 applies to `size` time slots or channels: capped at them."""
    return min(step, size) if size > 0 else step


def averaged_times(times: int, timestep: int) -> int:
    return math.ceil(times / effective_step(timestep, times)) if times > 0 else 0


def averaged_channels(channels: int, freqstep: int) -> int:
    return math.ceil(channels / effective_step(freqstep, channels)) if channels > 0 else 0


def channel_problem(parameters: DP3Parameters, channels: int) -> str | None:
    """Why DP3 would refuse to average `channels` channels (those msin reads) with the
    chain's Averager steps, or None. Steps whose factor only DP3 computes (`freqresolution`,
    an expression) end the check: nothing is refused that DP3 might take."""
    for step in parameters.steps:
        if step.type != "averager":
            continue
        freqstep = _freqstep(step)
        if freqstep is None:
            return None
        factor = effective_step(freqstep, channels)
        if channels % factor:
            return (
                f"{step.name} freqstep {freqstep} does not divide its {channels} channels "
                f"(DP3 refuses it: 'When averaging, nr of channels must divide integrally')"
            )
        channels //= factor
    return None


def _freqstep(step: DP3Step) -> int | None:
    if step.value("freqresolution") is not None:
        return None
    return plain_integer(step.value("freqstep") or "1")


def msin_channels(parameters: DP3Parameters, window_channels: int) -> int | None:
    """The channels DP3 reads of a window of `window_channels` (`msin.startchan`,
    `msin.nchan`), or None when they are expressions only DP3 evaluates."""
    msin = {key: format_value(value) for key, value in parameters.msin.items()}
    start = plain_integer(msin.get("startchan", "0"))
    if start is None:
        return None
    channels = window_channels - start
    if "nchan" in msin:
        requested = plain_integer(msin["nchan"])
        if requested is None:
            return None
        if requested > 0:  # 0 means all channels from startchan on
            channels = requested
    return channels


# DP3's units of a `freqresolution` (a bare number is in Hz).
_FREQUENCY_UNITS = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}


def frequency_in_hz(value: str) -> float | None:
    """A `freqresolution` as DP3 reads it (`12207`, `48.828kHz`, `0.2 MHz`), or None when it
    is not one (an expression only DP3 evaluates)."""
    text = value.strip().lower().replace(" ", "")
    for unit in sorted(_FREQUENCY_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _FREQUENCY_UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        return float(number) * scale
    except ValueError:
        return None


def frequency_averaging(parameters: DP3Parameters, channel_width_hz: float) -> int | None:
    """How many input channels make one output channel of the whole chain: the product of
    each Averager's and Demixer's channel factor, a `freqresolution` worked out as DP3 does
    (`max(1, int(freqresolution / width + 0.5))`, the width of the channels that step
    reads; an explicit `freqstep` wins over it). None when a factor is an expression only
    DP3 evaluates."""
    total = 1
    width = abs(channel_width_hz)
    for step in parameters.steps:
        if step.type not in AVERAGING_STEPS:
            continue
        factor = plain_integer(step.value("freqstep"))
        if step.value("freqstep") is not None and factor is None:
            return None
        resolution = step.value("freqresolution")
        if factor is None or factor <= 0:
            if resolution is None:
                factor = 1
            else:
                hz = frequency_in_hz(resolution)
                if hz is None:
                    return None
                factor = max(1, int(hz / width + 0.5)) if hz > 0 and width > 0 else 1
        total *= factor
        width *= factor
    return total


def chunk_alignment(parameters: DP3Parameters, channel_width_hz: float) -> int | None:
    """How many input channels every frequency chunk must be a multiple of: the chain's
    total averaging (`frequency_averaging`), and a Demixer's `demixfreqstep` (the channels
    it solves over, in the channels that step reads), so that neither an output channel nor
    a Demixer solution spans two chunks. None when a factor is an expression."""
    averaging = frequency_averaging(parameters, channel_width_hz)
    if averaging is None:
        return None
    alignment, before = averaging, 1
    for step in parameters.steps:
        if step.type == "demixer" and step.value("demixfreqstep") is not None:
            solving = plain_integer(step.value("demixfreqstep"))
            if solving is None:
                return None
            alignment = math.lcm(alignment, before * max(1, solving))
        if step.type in AVERAGING_STEPS:
            factor = frequency_averaging(
                replace(parameters, steps=(step,)), channel_width_hz * before
            )
            if factor is None:
                return None
            before *= factor
    return alignment
