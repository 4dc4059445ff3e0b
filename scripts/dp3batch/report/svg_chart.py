"""Horizontal bar charts as plain SVG, for the run report.

Written by hand rather than with a plotting library: the central job draws them at the end of
every batch, and importing matplotlib alone would cost a second of every run. Snakemake's
HTML report embeds SVG as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from dp3batch.report.text_files import write_lines

WIDTH = 760
LABEL_WIDTH = 190
ROW_HEIGHT = 18
TOP = 46
BOTTOM = 44
FONT = 'font-family="sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """One set of bars: a value per row (None: no bar), and its colour(s)."""

    name: str
    values: Sequence[float | None]
    colour: str | Sequence[str] = "#4477aa"


# The width of a character of FONT, on average, for laying out text side by side.
CHARACTER_WIDTH = 6.5


def _legend(entries: Sequence[tuple[str, str]]) -> Iterator[str]:
    """A swatch and a name per (name, colour), side by side below the title, each after the
    one before it (a fixed spacing let a long name run under the next)."""
    x = 20.0
    for name, colour in entries:
        yield f'<rect x="{x:.1f}" y="26" width="10" height="10" fill="{colour}"/>'
        yield f'<text x="{x + 14:.1f}" y="35" {FONT}>{escape(name)}</text>'
        x += 14 + len(name) * CHARACTER_WIDTH + 16


def _nice_maximum(value: float) -> float:
    """A round upper end for the axis (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    while power > value:
        power /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _axis_maximum(series: Sequence[Series]) -> float:
    values = [value for one in series for value in one.values if value is not None]
    return _nice_maximum(max(values, default=0.0))


def _opening(height: int, title: str) -> list[str]:
    """The start of a chart: the canvas, a white background and the title."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-family="sans-serif" '
        f'font-size="14">{escape(title)}</text>',
    ]


def bar_chart(
    path: str | Path,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    value_label: str,
    maximum: float | None = None,
) -> None:
    """Write one chart: a row per label, one bar per series in each row."""
    write_lines(path, _bar_chart_lines(title, labels, series, value_label, maximum))


def _bar_chart_lines(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    value_label: str,
    maximum: float | None,
) -> Iterator[str]:
    rows = max(1, len(labels))
    per_row = max(1, len(series))
    bar_height = (ROW_HEIGHT - 4) / per_row
    height = TOP + rows * ROW_HEIGHT + BOTTOM
    plot_width = WIDTH - LABEL_WIDTH - 20
    top = maximum or _axis_maximum(series)
    yield from _opening(height, title)
    for tick in range(5):
        value = top * tick / 4
        x = LABEL_WIDTH + plot_width * tick / 4
        yield (
            f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{TOP + rows * ROW_HEIGHT}" '
            'stroke="#dddddd"/>'
        )
        yield (
            f'<text x="{x:.1f}" y="{TOP + rows * ROW_HEIGHT + 14}" text-anchor="middle" '
            f"{FONT}>{value:g}</text>"
        )
    yield (
        f'<text x="{LABEL_WIDTH + plot_width / 2}" y="{height - 8}" text-anchor="middle" '
        f"{FONT}>{escape(value_label)}</text>"
    )
    for row, label in enumerate(labels):
        y = TOP + row * ROW_HEIGHT
        yield (
            f'<text x="{LABEL_WIDTH - 6}" y="{y + ROW_HEIGHT / 2 + 4:.1f}" text-anchor="end" '
            f"{FONT}>{escape(label)}</text>"
        )
        for index, one in enumerate(series):
            value = one.values[row] if row < len(one.values) else None
            if value is None:
                continue
            colour = one.colour if isinstance(one.colour, str) else one.colour[row]
            width = plot_width * min(max(value, 0.0), top) / top
            yield (
                f'<rect x="{LABEL_WIDTH}" y="{y + 2 + index * bar_height:.1f}" '
                f'width="{width:.1f}" height="{bar_height:.1f}" fill="{colour}">'
                f"<title>{escape(label)} {escape(one.name)}: {value:g}</title></rect>"
            )
    if len(series) > 1:
        yield from _legend(
            [(one.name, one.colour) for one in series if isinstance(one.colour, str)]
        )
    yield "</svg>"


def line_chart(
    path: str | Path,
    title: str,
    series: Sequence[Series],
    x_label: str,
    value_label: str,
    maximum: float | None = None,
) -> None:
    """Write one chart of lines: point i of each series at x = i (e.g. a spectrum by channel)."""
    height = 300
    left, right, top_margin, bottom = 60, 20, TOP, BOTTOM
    plot_width = WIDTH - left - right
    plot_height = height - top_margin - bottom
    points = max((len(one.values) for one in series), default=0)
    top = maximum or _axis_maximum(series)
    parts = _opening(height, title)

    def x_of(index: float) -> float:
        return left + plot_width * (index / max(points - 1, 1))

    def y_of(value: float) -> float:
        return top_margin + plot_height * (1 - min(max(value, 0.0), top) / top)

    for tick in range(5):
        value = top * tick / 4
        parts.append(
            f'<line x1="{left}" y1="{y_of(value):.1f}" x2="{WIDTH - right}" '
            f'y2="{y_of(value):.1f}" stroke="#dddddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y_of(value) + 4:.1f}" text-anchor="end" {FONT}>'
            f"{value:g}</text>"
        )
    for tick in range(5):
        index = round((points - 1) * tick / 4) if points > 1 else 0
        parts.append(
            f'<text x="{x_of(index):.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" '
            f"{FONT}>{index}</text>"
        )
    parts.append(
        f'<text x="{left + plot_width / 2}" y="{height - 8}" text-anchor="middle" {FONT}>'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="14" y="{top_margin + plot_height / 2}" text-anchor="middle" {FONT} '
        f'transform="rotate(-90 14 {top_margin + plot_height / 2})">{escape(value_label)}</text>'
    )
    for one in series:
        colour = one.colour if isinstance(one.colour, str) else "#4477aa"
        coordinates = " ".join(
            f"{x_of(i):.1f},{y_of(value):.1f}"
            for i, value in enumerate(one.values)
            if value is not None
        )
        parts.append(
            f'<polyline points="{coordinates}" fill="none" stroke="{colour}" '
            f'stroke-width="1.5"><title>{escape(one.name)}</title></polyline>'
        )
    legend = [
        (one.name, one.colour if isinstance(one.colour, str) else "#4477aa") for one in series
    ]
    parts += _legend(legend)
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")
