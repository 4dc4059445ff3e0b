"""The report of one batch, written by the central job when its DP3 tasks are done: the
summary table (TSV and HTML), the plots, the MSs' flagging report PNGs, and dask's
performance report.

`snakemake --report` collects these files (see rules/process.smk); drawing them here, as
plain SVG, costs milliseconds, where a separate Snakemake job with matplotlib cost seconds
of every run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp3batch.books.qa import SUSPECT
from dp3batch.books.status import Status
from dp3batch.books.write_errors import write_problem
from dp3batch.report.html import write_summary_html
from dp3batch.report.summary import SummaryFiles, SummaryRow, complete_rows_in
from dp3batch.report.svg_chart import Series, bar_chart, line_chart


@dataclass(frozen=True)
class ReportFiles:
    """The files of one batch's report, in `<output_dir>/report/<batch>/`."""

    directory: Path

    @property
    def table(self) -> Path:
        return self.directory / "summary.tsv"

    @property
    def table_json(self) -> Path:
        """The summary as JSON: beside the table, not an output of the rule."""
        return self.directory / "summary.json"

    @property
    def html(self) -> Path:
        return self.directory / "summary.html"

    @property
    def flagged(self) -> Path:
        return self.directory / "flagged_fraction.svg"

    @property
    def durations(self) -> Path:
        return self.directory / "duration.svg"

    @property
    def step_times(self) -> Path:
        return self.directory / "dp3_step_time.svg"

    @property
    def spectrum(self) -> Path:
        return self.directory / "rfi_spectrum.svg"

    @property
    def stations(self) -> Path:
        return self.directory / "flagged_per_station.svg"

    @property
    def dask(self) -> Path:
        return self.directory / "dask-report.html"

    @property
    def flagging(self) -> Path:
        """The PNGs of the batch's flagging reports (see copy_flagging_plots)."""
        return self.directory / "flagging"

    def as_dict(self) -> dict[str, str]:
        names = (
            "table",
            "html",
            "flagged",
            "spectrum",
            "stations",
            "durations",
            "step_times",
            "dask",
            "flagging",
        )
        return {name: str(getattr(self, name)) for name in names}


def write_report_files(
    rows: list[SummaryRow], files: ReportFiles, title: str, summary: SummaryFiles
) -> str | None:
    """The batch's report (see write_batch_report), never raising: what could not be
    written, or None. Every file of the report exists afterwards (empty if it could not be
    written), so that a full disk costs the report and not the run."""
    problem = None
    try:
        write_batch_report(rows, files, title, summary)
    except OSError as error:
        problem = write_problem(error)
    reserve_report_files(files)
    return problem


def reserve_report_files(files: ReportFiles) -> None:
    """Make each file of the report that does not exist yet, empty. Done as the batch's tasks
    start too, while the filesystem has names left: an empty file needs no room, but it needs
    an inode, and a batch that uses up the last ones could not make them afterwards (the
    files are then written over in place)."""
    for path in [*files.as_dict().values(), str(files.table_json)]:
        if os.path.exists(path):
            continue
        with contextlib.suppress(OSError):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if Path(path) == files.flagging:  # a directory() output of the rule
                Path(path).mkdir()
            else:
                Path(path).touch()


def write_batch_report(
    rows: list[SummaryRow], files: ReportFiles, title: str, summary: SummaryFiles
) -> None:
    """Everything but the dask report (see dask_report), from the summary rows (slim, as
    `write_summary` returns them) and the summary written after the batch (`summary`):
    copied, and read again for the flag statistics."""
    files.directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(summary.json, files.table_json)
    shutil.copyfile(summary.tsv, files.table)
    write_summary_html(rows, files.html, title)
    plot_flagged_fractions(rows, files.flagged)
    # The MSs the flag statistics describe: this batch's, else every complete one, whole,
    # read again from the summary one at a time (the rows given are slim), once for both.
    described = Status.DONE if any(row.status == Status.DONE for row in rows) else None
    spectrum, stations = RfiSpectrum(), StationFlags()
    for row in complete_rows_in(summary.json, described):
        spectrum.add(row)
        stations.add(row)
    spectrum.plot(files.spectrum)
    stations.plot(files.stations)
    plot_durations(rows, files.durations)
    plot_step_times(rows, files.step_times)
    copy_flagging_plots(rows, files.flagging)


# The HTML report embeds every plot: past this many MSs it shows the suspect ones first,
# then the others by name (all of them are in <output_dir>/qa/).
FLAGGING_PLOTS_IN_REPORT = 50


def copy_flagging_plots(rows: list[SummaryRow], directory: Path) -> list[Path]:
    """The flagging report PNGs of the MSs the report describes (this batch's, else every
    complete one), copied into the batch's report: suspect MSs first, at most
    FLAGGING_PLOTS_IN_REPORT of them."""
    directory.mkdir(parents=True, exist_ok=True)
    shown = sorted(
        (row for row in _complete_rows(rows) if row.flagging_report),
        key=lambda row: (row.qa != SUSPECT, row.name),
    )[:FLAGGING_PLOTS_IN_REPORT]
    copied = []
    for row in shown:
        source = Path(str(row.flagging_report))
        target = directory / source.name
        try:
            shutil.copyfile(source, target)
        except OSError:
            continue  # removed since, or unreadable: the report goes on without it
        copied.append(target)
    return copied


def plot_flagged_fractions(rows: list[SummaryRow], path: str | Path) -> None:
    """Flagged percentage per MS: the input's, each flagging step's (DP3's count), all of it
    before averaging, and the output's (after averaging, where a sample stays unflagged
    unless all its inputs were)."""
    shown = [row for row in rows if row.flagged_output_pct is not None]
    steps = list(dict.fromkeys(step for row in shown for step in row.flags_by_step))
    step_colours = ["#cc6677", "#ddcc77", "#117733", "#aa4499"]
    bar_chart(
        path,
        "Flagged per MS",
        [row.name for row in shown],
        [
            Series("input", [row.flagged_input_pct for row in shown], "#88ccee"),
            *(
                Series(
                    f"by {step} (DP3)",
                    [(row.flags_by_step.get(step) or {}).get("percent") for row in shown],
                    step_colours[index % len(step_colours)],
                )
                for index, step in enumerate(steps)
            ),
            Series("before averaging", [row.flagged_total_pct for row in shown], "#cc3311"),
            Series(
                "output (after averaging)", [row.flagged_output_pct for row in shown], "#332288"
            ),
        ],
        "flagged visibilities (%)",
    )


STEP_COLOURS = ["#cc6677", "#332288", "#117733", "#aa4499"]


def _complete_rows(rows: list[SummaryRow]) -> list[SummaryRow]:
    """The MSs the flag statistics describe: this batch's, else every complete one."""
    done = [row for row in rows if row.status == Status.DONE]
    return done or [row for row in rows if row.status == Status.UP_TO_DATE]


class Means:
    """Means by key of values added one at a time (memory: one sum per key)."""

    def __init__(self) -> None:
        self.sums: dict[Any, list[float]] = {}  # key → [sum, count]

    def add(self, key: Any, value: float | None) -> None:
        if value is not None:
            total = self.sums.setdefault(key, [0.0, 0])
            total[0] += value
            total[1] += 1

    def add_all(self, pairs: Iterable[tuple[Any, float | None]]) -> None:
        for key, value in pairs:
            self.add(key, value)

    def means(self) -> dict[Any, float]:
        return {key: total / count for key, (total, count) in self.sums.items()}


BEFORE_AVERAGING = "before averaging (input + every step)"


class RfiSpectrum:
    """The RFI spectrum: per flagging step, the percentage of visibilities it flagged per
    channel (DP3's own count), and all flags before averaging (input + every step),
    averaged over the MSs added one at a time."""

    def __init__(self) -> None:
        self.by_step: dict[str, Means] = {}
        self.before = Means()
        self.count = 0

    def add(self, row: SummaryRow) -> None:
        self.count += 1
        for step, counts in row.flags_by_step.items():
            channels = (counts or {}).get("per_channel") or []
            self.by_step.setdefault(step, Means()).add_all(enumerate(channels))
        self.before.add_all(enumerate(row.flag_statistics.get("channel_total_pct") or []))

    def plot(self, path: str | Path) -> None:
        series = []
        labelled = [*self.by_step.items(), (BEFORE_AVERAGING, self.before)]
        for index, (label, sums) in enumerate(labelled):
            mean = sums.means()
            if not mean:
                continue
            values = [mean.get(channel) for channel in range(max(mean, default=-1) + 1)]
            colour = "#cc3311" if label == BEFORE_AVERAGING else STEP_COLOURS[index % 4]
            series.append(Series(label, values, colour))
        line_chart(
            path,
            f"RFI spectrum: flagged per channel, mean over {self.count} MS(s)",
            series,
            "channel (of the input)",
            "flagged visibilities (%)",
            maximum=100.0,
        )


class StationFlags:
    """Per station, all its flags before averaging (input + every step) and what each
    flagging step flagged (DP3's own count per antenna), averaged over the MSs added one at
    a time: a bad station stands out."""

    def __init__(self) -> None:
        self.before = Means()
        self.by_step: dict[str, Means] = {}
        self.count = 0

    def add(self, row: SummaryRow) -> None:
        self.count += 1
        names = row.stations or ()
        totals = row.flag_statistics.get("station_total_pct") or []
        self.before.add_all(zip(names, totals, strict=False))
        for step, counts in row.flags_by_step.items():
            per_antenna = (counts or {}).get("per_antenna") or []
            sums = self.by_step.setdefault(f"by {step} (DP3)", Means())
            sums.add_all(zip(names, per_antenna, strict=False))

    def plot(self, path: str | Path) -> None:
        means = {BEFORE_AVERAGING: self.before.means()}
        means.update({label: sums.means() for label, sums in self.by_step.items()})
        means = {label: mean for label, mean in means.items() if mean}
        stations = list(dict.fromkeys(name for mean in means.values() for name in mean))
        bar_chart(
            path,
            f"Flagged per station, mean over {self.count} MS(s)",
            stations,
            [
                Series(
                    label,
                    [mean.get(name) for name in stations],
                    "#cc3311" if label == BEFORE_AVERAGING else STEP_COLOURS[index % 4],
                )
                for index, (label, mean) in enumerate(means.items())
            ],
            "flagged visibilities (%)",
            maximum=100.0,
        )


STATUS_COLOURS = {Status.DONE: "#4477aa", Status.UP_TO_DATE: "#bbbbbb", Status.FAILED: "#cc3311"}


def plot_durations(rows: list[SummaryRow], path: str | Path) -> None:
    """DP3 run time per MS, coloured by status: stragglers and slow workers stand out."""
    shown = [row for row in rows if row.duration_seconds is not None]
    bar_chart(
        path,
        "Duration per MS (blue: this batch, grey: earlier, red: failed)",
        [row.name for row in shown],
        [
            Series(
                "duration",
                [row.duration_seconds for row in shown],
                [STATUS_COLOURS.get(row.status, "#bbbbbb") for row in shown],
            )
        ],
        "seconds",
    )


def plot_step_times(rows: list[SummaryRow], path: str | Path) -> None:
    """Share of DP3's time per step, summed over all MSs (from DP3's timing table)."""
    totals: dict[str, float] = {}
    for row in rows:
        for step, seconds in (row.step_seconds or {}).items():
            totals[step] = totals.get(step, 0.0) + seconds
    everything = sum(totals.values()) or 1.0
    steps = sorted(totals, key=lambda step: totals[step], reverse=True)
    bar_chart(
        path,
        "Time per DP3 step, all MSs",
        steps,
        [Series("share", [100 * totals[step] / everything for step in steps])],
        "share of DP3 time (%)",
        maximum=100.0,
    )
