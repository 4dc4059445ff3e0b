"""The flagging figures of an output joined from frequency chunks, from its chunks' records.

Every chunk has the same rows (time slots and baselines), so a figure over the whole band is
its chunks' figures weighted by their channels; per-channel figures are the chunks' side by
side, in channel order; per-station figures are weighted like the whole. What any chunk
lacks, the join lacks too (None): nothing is made up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Figures over the whole band, per station, and per channel (see report.flagging).
SCALARS = ("output_pct", "input_pct", "total_pct")
PER_STATION = ("station_output_pct", "station_input_pct", "station_total_pct")
PER_CHANNEL = (
    "output_frequency_hz",
    "channel_output_pct",
    "input_frequency_hz",
    "channel_input_pct",
    "channel_total_pct",
)


def _weighted(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    if any(value is None for value in values) or not sum(weights):
        return None
    total = sum(value * weight for value, weight in zip(values, weights, strict=True))  # type: ignore[operator]
    return round(total / sum(weights), 3)


def _weighted_lists(lists: Sequence[Any], weights: Sequence[int]) -> list[float | None] | None:
    if any(not isinstance(values, list) for values in lists):
        return None
    if len({len(values) for values in lists}) != 1:
        return None
    return [_weighted(column, weights) for column in zip(*lists, strict=True)]


def merged_flag_statistics(
    statistics: Sequence[Mapping[str, Any] | None], channels: Sequence[int]
) -> dict[str, Any] | None:
    """The joined output's `flag_statistics` from its chunks' (each read `channels[i]`
    channels); None when a chunk has none. No report files: the join made none."""
    if not statistics or any(not entry for entry in statistics):
        return None
    entries = [dict(entry or {}) for entry in statistics]
    merged: dict[str, Any] = {"stations": entries[0].get("stations")}
    for key in SCALARS:
        merged[key] = _weighted([entry.get(key) for entry in entries], channels)
    for key in PER_STATION:
        merged[key] = _weighted_lists([entry.get(key) for entry in entries], channels)
    for key in PER_CHANNEL:
        parts = [entry.get(key) for entry in entries]
        merged[key] = (
            [value for part in parts for value in part]  # type: ignore[union-attr]
            if all(isinstance(part, list) for part in parts)
            else None
        )
    return merged


def merged_flag_counts(counts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """What each flagging step flagged in the whole band (DP3's counts of each chunk, see
    dp3.log.parse_flag_counts): counts summed, channels side by side, stations weighted by
    the visibilities each chunk's step saw."""
    if not counts or any(entry is None for entry in counts):
        return None
    entries = [dict(entry or {}) for entry in counts]
    merged: dict[str, Any] = {}
    for step in entries[0]:
        parts = [entry.get(step) for entry in entries]
        if any(part is None for part in parts):
            continue
        flagged = sum(int(part["flagged"]) for part in parts)  # type: ignore[index]
        visibilities = sum(int(part["visibilities"]) for part in parts)  # type: ignore[index]
        weights = [int(part["visibilities"]) for part in parts]  # type: ignore[index]
        antennas = _weighted_lists([part.get("per_antenna") for part in parts], weights)  # type: ignore[union-attr]
        merged[step] = {
            "percent": round(100.0 * flagged / visibilities, 3) if visibilities else 0.0,
            "flagged": flagged,
            "visibilities": visibilities,
            "per_channel": [
                value
                for part in parts
                for value in (part.get("per_channel") or [])  # type: ignore[union-attr]
            ],
            "per_antenna": None
            if antennas is None
            else [None if value is None else round(value) for value in antennas],
        }
    return merged
