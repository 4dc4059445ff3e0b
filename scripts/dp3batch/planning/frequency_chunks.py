"""Cutting a window into frequency chunks (`frequency_chunk_hz`): contiguous channel blocks
whose summed CHAN_WIDTH is at most the width, each a whole number of the chain's averaged
channels, so that no averaged channel spans two chunks.

The cut is balanced: as few chunks as the width allows, of (nearly) equal channel counts,
so that one chunk does not run alone at the end of a batch. When no cut can hold (one
averaged channel is wider than the width, the averaging does not divide the channels), the
run is refused before anything runs, naming the MS and a width that would work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dp3batch.books.chunks import (
    PlannedChunk,
    chunk_fingerprint,
    chunk_log,
    chunk_name,
    chunk_output,
)
from dp3batch.books.forced import FORCED
from dp3batch.books.records import Expectation, RecordStore, pending_reason
from dp3batch.dp3.averaging import chunk_alignment, msin_channels, plain_integer
from dp3batch.dp3.parameters import DP3Parameters, format_value
from dp3batch.inputs.discovery import WorkItem
from dp3batch.inputs.tables import window_frequencies

# Summed channel widths are floating point: a chunk may exceed the width by this fraction.
WIDTH_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ChannelBlock:
    """One chunk of a window: its channels (from the window's first) and band edges."""

    startchan: int
    nchan: int
    width_hz: float
    low_hz: float
    high_hz: float


class CannotCut(ValueError):
    """No cut fits the width; the message says why, `working_width` what would work."""

    def __init__(self, message: str, working_width: float):
        super().__init__(message)
        self.working_width = working_width


def cut_window(
    frequencies: Sequence[float],
    widths: Sequence[float],
    limit_hz: float,
    averaging: int,
    first_channel: int = 0,
) -> list[ChannelBlock]:
    """The chunks of a window whose channels (those DP3 reads, the first of them
    `first_channel` of the window) have these CHAN_FREQ and CHAN_WIDTH; `averaging` input
    channels make one output channel of the chain."""
    channels = len(widths)
    widths = [abs(float(width)) for width in widths]
    total = sum(widths)
    if channels == 0:
        return []
    if total <= limit_hz * (1 + WIDTH_TOLERANCE):
        return [_block(frequencies, widths, 0, channels, first_channel)]
    if averaging > channels or channels % averaging:
        # DP3 averages them all into one channel (a factor above the count is capped), or
        # refuses the count: either way no chunk boundary can be placed.
        what = (
            f"the chain averages all {channels} channels into one"
            if averaging >= channels
            else f"the chain's frequency averaging ({averaging} channels into one) does not "
            f"divide its {channels} channels"
        )
        raise CannotCut(f"{what}, so it cannot be cut", total)
    groups = [sum(widths[start : start + averaging]) for start in range(0, channels, averaging)]
    widest = max(groups)
    if widest > limit_hz * (1 + WIDTH_TOLERANCE):
        raise CannotCut(
            f"one averaged channel ({averaging} channel(s)) is {_hz(widest)} wide, more than "
            f"frequency_chunk_hz {_hz(limit_hz)}",
            widest,
        )
    sizes = _balanced(groups, limit_hz) or _greedy(groups, limit_hz)
    blocks, start = [], 0
    for size in sizes:
        nchan = size * averaging
        blocks.append(_block(frequencies, widths, start, nchan, first_channel))
        start += nchan
    return blocks


def _greedy(groups: list[float], limit_hz: float) -> list[int]:
    """Groups per chunk, each chunk filled as far as the width allows."""
    sizes, width = [0], 0.0
    for group in groups:
        if sizes[-1] and width + group > limit_hz * (1 + WIDTH_TOLERANCE):
            sizes.append(0)
            width = 0.0
        sizes[-1] += 1
        width += group
    return sizes


def _balanced(groups: list[float], limit_hz: float) -> list[int] | None:
    """As many chunks as the greedy cut needs, of nearly equal group counts (the larger
    first), if each fits the width; else None."""
    count = len(_greedy(groups, limit_hz))
    base, extra = divmod(len(groups), count)
    sizes = [base + 1] * extra + [base] * (count - extra)
    start = 0
    for size in sizes:
        if sum(groups[start : start + size]) > limit_hz * (1 + WIDTH_TOLERANCE):
            return None
        start += size
    return sizes


def _block(
    frequencies: Sequence[float], widths: Sequence[float], start: int, nchan: int, first: int
) -> ChannelBlock:
    edges = [
        edge
        for index in range(start, start + nchan)
        for edge in (
            float(frequencies[index]) - widths[index] / 2,
            float(frequencies[index]) + widths[index] / 2,
        )
    ]
    return ChannelBlock(
        startchan=first + start,
        nchan=nchan,
        width_hz=sum(widths[start : start + nchan]),
        low_hz=min(edges),
        high_hz=max(edges),
    )


def _hz(value: float) -> str:
    """A width as a person and `frequency_chunk_hz` read it: `781250 Hz (0.78 MHz)`."""
    return f"{value:.6g} Hz ({value / 1e6:.3g} MHz)"


def refusal(error: CannotCut) -> str:
    """Why a window cannot be cut, and a width that works."""
    return f"{error}; a width that works: frequency_chunk_hz={math.ceil(error.working_width)}"


@dataclass(frozen=True)
class ItemChunks:
    """What planning makes of one pending item: its chunks (several: each runs, then a
    join), or the one block it fits in (no chunk, no join); `refused` says why it cannot be
    cut."""

    chunks: tuple[PlannedChunk, ...] = ()
    single: ChannelBlock | None = None
    refused: str | None = None
    # Why a window wider than the width is processed whole all the same.
    whole_because: str | None = None


# DP3 reads the chunk outputs of a join in ascending order of frequency whatever the order
# they are given in (its multi-MS reader sorts them), each chunk's channels as they are:
# chunks of a window whose frequencies descend would be joined in a scrambled order (the join
# check refuses it). Such a window is processed whole.
DESCENDING = (
    "its channels descend in frequency, and DP3 joins chunks in ascending order of "
    "frequency, which would scramble them"
)


def item_chunks(
    item: WorkItem,
    parameters: DP3Parameters,
    chain_fingerprint: str,
    limit_hz: float,
    expected: Expectation,
    store: RecordStore,
    log_dir: Path,
    reason: str,
) -> ItemChunks:
    """Cut a pending item's window (the channels its msin reads) and find why each chunk is
    pending: its own output's completion record against the chunk's fingerprint, so that a
    rerun redoes only the chunks that are missing, failed, damaged or out of date."""
    # The window DP3 reads: the item's own, else the steps' `msin.band`.
    frequencies, widths = window_frequencies(
        item.input, parameters.with_band(item.band).selected_band()
    )
    first = plain_integer(format_value(parameters.msin.get("startchan", 0)))
    count = msin_channels(parameters, len(widths))
    if first is None or count is None:
        return ItemChunks(
            refused="its msin.startchan/nchan are expressions only DP3 evaluates: give them "
            "as numbers to cut it into frequency chunks"
        )
    frequencies, widths = frequencies[first : first + count], widths[first : first + count]
    averaging = chunk_alignment(parameters, widths[0] if widths else 0.0)
    if averaging is None:
        return ItemChunks(
            refused="the chain's frequency averaging (freqstep) is an expression only DP3 "
            "evaluates: give it as a number to cut the MS into frequency chunks"
        )
    if len(frequencies) > 1 and frequencies[1] < frequencies[0]:
        whole = _block(frequencies, [abs(float(w)) for w in widths], 0, len(widths), first)
        return ItemChunks(single=whole, whole_because=DESCENDING)
    try:
        blocks = cut_window(frequencies, widths, limit_hz, averaging, first)
    except CannotCut as error:
        return ItemChunks(refused=refusal(error))
    if len(blocks) <= 1:
        return ItemChunks(single=blocks[0] if blocks else None)
    planned = []
    for index, block in enumerate(blocks, start=1):
        name = chunk_name(item.name, block.startchan, block.nchan)
        output = chunk_output(item.output, item.name, block.startchan, block.nchan)
        fingerprint = chunk_fingerprint(chain_fingerprint, block.startchan, block.nchan)
        own = replace(expected, parameters_fingerprint=fingerprint)
        # -F redoes every chunk; otherwise each chunk's own record decides.
        forced = reason.split(";", 1)[0].strip() == FORCED
        chunk_reason = FORCED if forced else pending_reason(item.input, output, own, store)
        planned.append(
            PlannedChunk(
                index=index,
                count=len(blocks),
                name=name,
                output=str(output),
                log=chunk_log(log_dir, name),
                startchan=block.startchan,
                nchan=block.nchan,
                low_hz=block.low_hz,
                high_hz=block.high_hz,
                parameters_fingerprint=fingerprint,
                reason=chunk_reason,
            )
        )
    return ItemChunks(chunks=tuple(planned))
