"""The QA verdict of one output: `suspect` when it is flagged beyond the limits of the
config's `qa:` block (off by default), with the reason; else `ok`.

It is made from what the completion record keeps of the output's flagging report
(`flag_statistics`, see report.flagging) and the current limits, wherever an MS is shown
(the terminal, the summary, the report): changing a limit needs no reprocessing. A suspect
MS is still data: the batch goes on, and the run's exit code does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OK = "ok"
SUSPECT = "suspect"
# Past this many stations or channels over a limit, the reason counts the rest.
NAMED_AT_MOST = 5


@dataclass(frozen=True)
class QALimits:
    """The `qa:` block of the config: flagged fractions (0-1) above which an MS is suspect;
    None leaves that check out."""

    max_flagged_fraction: float | None = None
    max_station_flagged_fraction: float | None = None
    max_channel_flagged_fraction: float | None = None

    @classmethod
    def from_config(cls, qa: Mapping[str, Any] | None) -> QALimits:
        qa = qa or {}
        return cls(**{name: qa.get(name) for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @property
    def enabled(self) -> bool:
        return any(value is not None for value in self.to_json().values())


@dataclass(frozen=True)
class QAVerdict:
    """`ok` or `suspect` (with why), or no verdict (None: QA is off, or nothing to judge)."""

    status: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def suspect(self) -> bool:
        return self.status == SUSPECT

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _pick(statistics: Mapping[str, Any], before: str, after: str) -> tuple[Any, bool]:
    """The figure before averaging (input + every flagging step) where it is known, else
    the output's; and whether it is the output's."""
    value = statistics.get(before)
    if value is not None:
        return value, False
    return statistics.get(after), True


def _over(values: Sequence[float | None] | None, limit_pct: float) -> list[tuple[int, float]]:
    return [
        (index, value)
        for index, value in enumerate(values or ())
        if value is not None and value > limit_pct
    ]


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED_AT_MOST])
    more = len(items) - NAMED_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")


def _mhz(frequencies: Sequence[float] | None, index: int) -> str:
    if not frequencies or index >= len(frequencies):
        return ""
    return f" ({frequencies[index] / 1e6:.3f} MHz)"


def qa_verdict(statistics: Mapping[str, Any] | None, limits: QALimits) -> QAVerdict:
    """The verdict of one output from its flag statistics (a completion record's
    `flag_statistics`). The figures are those before averaging (what the input had plus
    what each flagging step flagged, DP3's counts), else the output's own."""
    if not limits.enabled:
        return QAVerdict()
    if not statistics:
        return QAVerdict()
    reasons = []
    if limits.max_flagged_fraction is not None:
        value, of_output = _pick(statistics, "total_pct", "output_pct")
        limit = 100 * limits.max_flagged_fraction
        if value is not None and value > limit:
            where = " in the output" if of_output else ""
            reasons.append(f"{value:.1f} % flagged{where} (limit {limit:g} %)")
    if limits.max_station_flagged_fraction is not None:
        values, of_output = _pick(statistics, "station_total_pct", "station_output_pct")
        limit = 100 * limits.max_station_flagged_fraction
        names = statistics.get("stations") or []
        over = _over(values, limit)
        if over:
            listed = [
                f"{names[index] if index < len(names) else index} {value:.1f} %"
                for index, value in sorted(over, key=lambda item: -item[1])
            ]
            where = " in the output" if of_output else ""
            noun = "station" if len(over) == 1 else f"{len(over)} stations"
            reasons.append(f"{noun} {_listed(listed)} flagged{where} (limit {limit:g} %)")
    if limits.max_channel_flagged_fraction is not None:
        values, of_output = _pick(statistics, "channel_total_pct", "channel_output_pct")
        frequencies = statistics.get("output_frequency_hz" if of_output else "input_frequency_hz")
        limit = 100 * limits.max_channel_flagged_fraction
        over = _over(values, limit)
        if over:
            listed = [f"{index}{_mhz(frequencies, index)} {value:.0f} %" for index, value in over]
            where = " of the output" if of_output else ""
            noun = "channel" if len(over) == 1 else f"{len(over)} channels"
            reasons.append(f"{noun}{where} {_listed(listed)} flagged (limit {limit:g} %)")
    return QAVerdict(SUSPECT, tuple(reasons)) if reasons else QAVerdict(OK)
