"""Frequency chunks in the books: where a chunk's output goes, what it is called, and the
fingerprints that tie chunks and their joined output to the chain.

An MS window cut into chunks (`frequency_chunk_hz`, see planning.frequency_chunks) gives one
DP3 run per chunk (`msin.startchan`/`msin.nchan`) into a hidden directory beside the final
output, then one join into the final output:

    <output_dir>/
        NAME.ms                          the joined output, where an unchunked run puts it
        .NAME.ms.chunks/                 kept until the join is committed
            NAME_ch0000-0063.ms          one chunk's output (channels 0-63 of the window),
                                         with its own completion record and parset
            .NAME_ch0000-0063.ms.tmp-…   a chunk being written

A chunk is named by its channel range, so a chunk of another width is never taken for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dp3batch.books.codec import from_json, to_json
from dp3batch.dp3.parameters import DP3Parameters

CHUNKS_SUFFIX = ".chunks"
# The pending reason of an output made by the same chain with another chunk width.
CHUNK_WIDTH_CHANGED = "steps changed: frequency_chunk_hz"
# Keys of `msout` a chunk leaves to the join: a chunk is an intermediate product, written
# plainly, so that (e.g.) Dysco compresses the joined data once, not twice.
JOIN_ONLY_MSOUT_PREFIXES = ("storagemanager",)


def chunk_directory(output: Path) -> Path:
    """`<output_dir>/.NAME.ms.chunks`: the chunk outputs of the final output `NAME.ms`."""
    return output.parent / f".{output.name}{CHUNKS_SUFFIX}"


def channel_range(startchan: int, nchan: int) -> str:
    """`ch0016-0031`: the window's channels a chunk holds (inclusive)."""
    return f"ch{startchan:04d}-{startchan + nchan - 1:04d}"


def chunk_name(item_name: str, startchan: int, nchan: int) -> str:
    """`obs_SB001_ch0016-0031`: a chunk of the item `obs_SB001` (or `obs_spw1`)."""
    return f"{item_name}_{channel_range(startchan, nchan)}"


def chunk_output(output: Path, item_name: str, startchan: int, nchan: int) -> Path:
    return chunk_directory(output) / f"{chunk_name(item_name, startchan, nchan)}.ms"


def chunk_log(log_dir: str | Path, name: str) -> str:
    """Each chunk's DP3 log, apart from the MSs' own (`logs/chunks/NAME_ch….log`)."""
    return str(Path(log_dir) / "chunks" / f"{name}.log")


def chunked_fingerprint(fingerprint: str, frequency_chunk_hz: float | None) -> str:
    """The parameters fingerprint of an output made with this chunk width: the chain's own
    when chunking is off, so that turning it on or changing the width makes the outputs
    pending (a chain that is not channel-local gives other results per chunk)."""
    if frequency_chunk_hz is None:
        return fingerprint
    text = f"{fingerprint}\nfrequency_chunk_hz={float(frequency_chunk_hz)!r}"
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_fingerprint(fingerprint: str, startchan: int, nchan: int) -> str:
    """The parameters fingerprint of one chunk's output: the chain's (of its MS), and the
    channels it reads."""
    text = f"{fingerprint}\nchunk msin.startchan={startchan}\nchunk msin.nchan={nchan}"
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_parameters(parameters: DP3Parameters, startchan: int, nchan: int) -> DP3Parameters:
    """The chain's parameters reading one chunk of the window (`startchan` counts from the
    window's first channel), and writing it plainly (see JOIN_ONLY_MSOUT_PREFIXES)."""
    msin = {**parameters.msin, "startchan": startchan, "nchan": nchan}
    msout = {
        key: value
        for key, value in parameters.msout.items()
        if not key.startswith(JOIN_ONLY_MSOUT_PREFIXES)
    }
    # AOFlagger's quality statistics (QUALITY_* subtables) of a chunk cover its channels
    # only, and the join would carry the first chunk's alone: a chunk collects none (40 % of
    # AOFlagger's time, measured), so a joined output holds none rather than wrong ones.
    steps = tuple(
        replace(step, added={**step.added, "keepstatistics": False})
        if step.type == "aoflagger"
        else step
        for step in parameters.steps
    )
    return replace(parameters, msin=msin, msout=msout, steps=steps)


def join_msout(parameters: DP3Parameters) -> dict[str, Any]:
    """The `msout` keys the join applies (those a chunk left out)."""
    return {
        key: value
        for key, value in parameters.msout.items()
        if key.startswith(JOIN_ONLY_MSOUT_PREFIXES)
    }


@dataclass(frozen=True, kw_only=True)
class PlannedChunk:
    """One chunk of a pending MS (window): planned by the rule layer, run by the central job."""

    index: int  # 1-based, in channel order
    count: int  # chunks of the MS
    name: str
    output: str
    log: str
    # The window's channels it reads (msin.startchan counts from the window's first).
    startchan: int
    nchan: int
    # Its band's edges (lowest and highest channel edge), for people.
    low_hz: float
    high_hz: float
    parameters_fingerprint: str
    # Why it must run; None: its output is complete and up to date (only the join is owed).
    reason: str | None = None

    @property
    def label(self) -> str:
        """`chunk 3/8 (120.0–122.0 MHz)`."""
        return f"chunk {self.index}/{self.count} ({frequency_span(self.low_hz, self.high_hz)})"

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "a planned chunk") -> PlannedChunk:
        return from_json(cls, data, what)


def frequency_span(low_hz: float, high_hz: float) -> str:
    """`120.0–122.0 MHz`, with as many decimals as tell narrow chunks apart."""
    width_mhz = abs(high_hz - low_hz) / 1e6
    decimals = 1
    while decimals < 6 and width_mhz * 10**decimals < 10:
        decimals += 1
    return f"{low_hz / 1e6:.{decimals}f}–{high_hz / 1e6:.{decimals}f} MHz"
