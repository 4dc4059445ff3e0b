"""The flagging report of one output: what is flagged, where, and by whom.

A function of the output MS and DP3's log (and, when the workflow made the output, the flags
its input already had): an xarray dataset with the output's flagged and total visibility
counts over time x baseline x frequency (antenna names, baseline lengths, frequencies and
times as coordinates) and the counts DP3 printed per flagging step, before any averaging;
saved as zarr (`xr.open_zarr`) beside a PNG of it. See docs/report.md.

It runs on the dask worker right after DP3 (see dask_stage.execution), and as the command
`dp3batch-flagging-report` (report.flagging_command) for any MS. It reads the output once.
The statistics every output gets are computed with numpy (FlaggingData); xarray, zarr and
matplotlib are imported only where an output gets the report's files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dp3batch.dp3.log import parse_flag_counts
from dp3batch.inputs.tables import read_table

ROWS_PER_READ = 20_000
# MJD seconds of the Unix epoch (1970-01-01 is MJD 40587).
UNIX_EPOCH_MJD_SECONDS = 40587 * 86400.0
ZARR_SUFFIX = "_flagging_report.zarr"
PNG_SUFFIX = "_flagging_report.png"


def report_paths(qa_dir: str | Path, name: str) -> tuple[Path, Path]:
    """`<qa_dir>/<name>_flagging_report.zarr` and `.png` (the reference pipeline's names)."""
    return Path(qa_dir) / f"{name}{ZARR_SUFFIX}", Path(qa_dir) / f"{name}{PNG_SUFFIX}"


@dataclass(frozen=True)
class InputFlags:
    """The flags an MS already has, over the channels DP3 reads of it: flagged correlation
    samples in all, per antenna (of the baselines it is part of) and per channel."""

    rows: int
    channels: int
    correlations: int
    flagged: int
    antenna_flagged: tuple[int, ...]
    # Rows of each antenna's baselines (an autocorrelation counts once).
    antenna_rows: tuple[int, ...]
    channel_flagged: tuple[int, ...]
    # The frequencies (Hz) of those channels.
    frequencies: tuple[float, ...] = ()

    @property
    def visibilities(self) -> int:
        """Baselines x times x channels, as DP3 counts visibilities."""
        return self.rows * self.channels

    @property
    def fraction(self) -> float:
        samples = self.visibilities * self.correlations
        return self.flagged / samples if samples else 0.0

    def antenna_pct(self) -> np.ndarray:
        samples = np.asarray(self.antenna_rows) * self.channels * self.correlations
        return _percent(self.antenna_flagged, samples)

    def channel_pct(self) -> np.ndarray:
        return _percent(self.channel_flagged, np.full(self.channels, self.rows * self.correlations))


# A visibility's correlations as one unsigned word, by their count (bools are one byte each).
_CORRELATION_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def flagged_correlations(flags: np.ndarray) -> np.ndarray:
    """`np.count_nonzero(flags, axis=2)`: of each visibility (rows x channels), how many
    correlations are flagged. numpy sums over that short last axis one visibility at a time
    (102 ms for the FLAG column of a 0.2 GB MS, on the worker while its DP3 runs); counting
    the set bits of each visibility's bytes read as one word gives the same in 3.4 ms."""
    word = _CORRELATION_WORDS.get(flags.shape[2])
    if word is None or flags.dtype != np.bool_:
        return np.count_nonzero(flags, axis=2)
    return np.bitwise_count(np.ascontiguousarray(flags).view(word)[..., 0])


def count_input_flags(
    path: str | Path, band: int | None = None, startchan: int = 0, nchan: int = 0
) -> InputFlags:
    """The flags of an MS (of one band's rows, `DATA_DESC_ID`), per antenna and per channel,
    over channels `startchan` to `startchan + nchan` (0: to the end), read in blocks of rows."""
    with read_table(os.path.join(path, "ANTENNA")) as antennas:
        n_antennas = antennas.nrows()
    antenna_flagged = np.zeros(n_antennas, dtype=np.int64)
    antenna_rows = np.zeros(n_antennas, dtype=np.int64)
    channel_flagged: np.ndarray | int = 0
    channels = correlations = 0
    with read_table(str(path)) as whole:
        table = whole if band is None else whole.query(f"DATA_DESC_ID=={int(band)}")
        try:
            rows = table.nrows()
            has_flag_row = "FLAG_ROW" in table.colnames()
            for start in range(0, rows, ROWS_PER_READ):
                count = min(ROWS_PER_READ, rows - start)
                flags = table.getcol("FLAG", startrow=start, nrow=count)
                flags = flags[:, startchan : startchan + nchan if nchan else None]
                if has_flag_row:
                    # A row with FLAG_ROW set is flagged whole, as DP3 reads it.
                    whole_row = table.getcol("FLAG_ROW", startrow=start, nrow=count).astype(bool)
                    flags = flags | whole_row[:, None, None]
                _, channels, correlations = flags.shape
                antenna1 = table.getcol("ANTENNA1", startrow=start, nrow=count)
                antenna2 = table.getcol("ANTENNA2", startrow=start, nrow=count)
                per_channel = flagged_correlations(flags)  # rows x channels
                per_row = per_channel.sum(axis=1)
                channel_flagged = channel_flagged + per_channel.sum(axis=0)
                cross = antenna1 != antenna2  # an autocorrelation counts once for its antenna
                for antenna, weights in ((antenna1, per_row), (antenna2[cross], per_row[cross])):
                    antenna_flagged += np.bincount(
                        antenna, weights=weights, minlength=n_antennas
                    ).astype(np.int64)
                    antenna_rows += np.bincount(antenna, minlength=n_antennas)
        finally:
            if band is not None:
                table.close()
    channel_flagged = np.atleast_1d(np.asarray(channel_flagged, dtype=np.int64))[:channels]
    with read_table(os.path.join(path, "DATA_DESCRIPTION")) as description:
        window = int(description.getcell("SPECTRAL_WINDOW_ID", band or 0))
    with read_table(os.path.join(path, "SPECTRAL_WINDOW")) as windows:
        frequencies = windows.getcell("CHAN_FREQ", window)[startchan:][:channels]
    return InputFlags(
        rows=rows,
        channels=channels,
        correlations=correlations,
        flagged=int(channel_flagged.sum()),
        antenna_flagged=tuple(int(value) for value in antenna_flagged),
        antenna_rows=tuple(int(value) for value in antenna_rows),
        channel_flagged=tuple(int(value) for value in channel_flagged),
        frequencies=tuple(float(value) for value in frequencies),
    )


def _percent(flagged: np.ndarray, total: np.ndarray) -> np.ndarray:
    flagged, total = np.asarray(flagged, dtype=float), np.asarray(total, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * flagged / np.where(total > 0, total, 1), np.nan)


def _read_output(path: Path, cube: bool = False) -> dict[str, Any]:
    """The output's flagged correlations and correlations summed per baseline and per
    channel, its coordinates, and with `cube` the counts over time x baseline x frequency
    (what a report's files show). The cube takes 2 bytes of memory per visibility, 4 % of the
    output's size (4 GB for an output of 100 GB): it is made only for the files."""
    with read_table(str(path / "ANTENNA")) as antennas:
        names = [str(name) for name in antennas.getcol("NAME")]
        positions = antennas.getcol("POSITION")
    with read_table(str(path / "SPECTRAL_WINDOW")) as window:
        frequencies = np.asarray(window.getcell("CHAN_FREQ", 0), dtype=float)
    with read_table(str(path)) as table:
        rows = table.nrows()
        time_column = table.getcol("TIME")
        antenna1 = table.getcol("ANTENNA1")
        antenna2 = table.getcol("ANTENNA2")
        times = np.unique(time_column)
        n_antennas = len(names)
        pair = antenna1.astype(np.int64) * n_antennas + antenna2
        pairs = np.unique(pair)
        time_index = np.searchsorted(times, time_column)
        baseline_index = np.searchsorted(pairs, pair)
        shape = (len(times), len(pairs), len(frequencies))
        flagged = np.zeros(shape if cube else (0, 0, 0), dtype=np.uint8)
        total = np.zeros_like(flagged)
        baseline_flagged = np.zeros(len(pairs), dtype=np.int64)
        baseline_rows = np.zeros(len(pairs), dtype=np.int64)
        channel_flagged = np.zeros(len(frequencies), dtype=np.int64)
        correlations = 0
        for start in range(0, rows, ROWS_PER_READ):
            count = min(ROWS_PER_READ, rows - start)
            flags = table.getcol("FLAG", startrow=start, nrow=count)
            counted = flagged_correlations(flags)
            correlations = flags.shape[2]
            baselines = baseline_index[start : start + count]
            baseline_flagged += np.bincount(baselines, counted.sum(axis=1), len(pairs)).astype(
                np.int64
            )
            baseline_rows += np.bincount(baselines, minlength=len(pairs))
            channel_flagged += counted.sum(axis=0, dtype=np.int64)
            if cube:
                where = (time_index[start : start + count], baselines)
                flagged[where] = counted
                total[where] = correlations
    first, second = pairs // n_antennas, pairs % n_antennas
    lengths = np.linalg.norm(positions[second] - positions[first], axis=1)
    return {
        "names": names,
        "times": times,
        "frequencies": frequencies,
        "first": first,
        "second": second,
        "lengths": lengths,
        "baseline_flagged": baseline_flagged,
        "baseline_total": baseline_rows * len(frequencies) * correlations,
        "channel_flagged": channel_flagged,
        "channel_total": np.full(len(frequencies), rows * correlations, dtype=np.int64),
        # With `cube` only (else empty):
        "flagged": flagged,
        "total": total,
    }


@dataclass(frozen=True)
class FlaggingData:
    """The flagging report's numbers, as numpy arrays: what the statistics are computed from
    (on every output), and what the xarray dataset of its files holds (only where they are
    made: building the dataset costs more than the numbers)."""

    output: Path  # where it was read
    names: list[str]
    read: dict[str, Any]  # see _read_output
    # DP3's counts per flagging step (from its log, before averaging); NaN where it printed
    # none. `step_channel_pct` is None when it printed no per-channel table.
    steps: Mapping[str, dict]
    step_antenna_pct: np.ndarray | None = None
    step_channel_pct: np.ndarray | None = None
    # The flags the input had (None: not given, or over another channel grid than DP3's).
    input_flags: InputFlags | None = None
    input_antenna_pct: np.ndarray | None = None
    input_channel_pct: np.ndarray | None = None
    input_frequency: np.ndarray | None = None
    # Input + every flagging step, at full resolution (None unless every step saw the
    # input's own visibilities).
    total_pct: float | None = None
    total_antenna_pct: np.ndarray | None = None
    total_channel_pct: np.ndarray | None = None
    # The output as the report names it, when read from its temporary copy.
    shown_as: Path | None = None

    @property
    def channel_count(self) -> int:
        """The channels of the steps' or the input's grid (before averaging)."""
        for values in (self.step_channel_pct, self.input_channel_pct):
            if values is not None:
                return values.shape[-1]
        return 0

    def station_output_pct(self) -> np.ndarray:
        """Per station, the percentage of the output's correlations flagged on its
        baselines."""
        first, second = self.read["first"], self.read["second"]
        flagged, total = self.read["baseline_flagged"], self.read["baseline_total"]
        cross = first != second
        n = len(self.names)
        station_flagged = np.bincount(first, flagged, n) + np.bincount(
            second[cross], flagged[cross], n
        )
        station_total = np.bincount(first, total, n) + np.bincount(second[cross], total[cross], n)
        return _percent(station_flagged, station_total)


def flagging_data(
    output: str | Path,
    dp3_log: str | None = None,
    input_flags: InputFlags | None = None,
    cube: bool = False,
) -> FlaggingData:
    """The flagging report's numbers of one output (see FlaggingData): its flags per
    baseline and per channel (and with `cube` over time x baseline x frequency, for the
    report's files), DP3's counts per flagging step, the flags the input had, and what they
    add up to per station and per channel."""
    output = Path(output)
    read = _read_output(output, cube)
    names = read["names"]
    data = FlaggingData(output, names, read, parse_flag_counts(dp3_log or ""))
    if data.steps:
        data = _with_steps(data)
    if input_flags is not None:
        data = _with_input(data, input_flags)
    if data.steps and data.input_flags is not None:
        data = _with_totals(data)
    return data


def _with_steps(data: FlaggingData) -> FlaggingData:
    steps = data.steps
    channels = max((len(count["per_channel"]) for count in steps.values()), default=0)

    def padded(values: list, length: int) -> list[float]:
        values = [np.nan if value is None else value for value in values][:length]
        return values + [np.nan] * (length - len(values))

    antenna = np.array(
        [padded(count["per_antenna"], len(data.names)) for count in steps.values()], dtype=float
    ).reshape(len(steps), len(data.names))
    channel = None
    if channels:  # else DP3 printed no per-channel table
        channel = np.array(
            [padded(count["per_channel"], channels) for count in steps.values()], dtype=float
        )
    return replace(data, step_antenna_pct=antenna, step_channel_pct=channel)


def _with_input(data: FlaggingData, flags: InputFlags) -> FlaggingData:
    if data.step_channel_pct is not None and data.step_channel_pct.shape[1] != flags.channels:
        return data  # the steps saw another channel grid: not comparable
    frequency = None
    if len(flags.frequencies) == flags.channels:
        frequency = np.asarray(flags.frequencies, dtype=float)
    antenna = flags.antenna_pct()[: len(data.names)]
    if len(antenna) != len(data.names):
        return data  # another array of stations than the output's: not comparable
    return replace(
        data,
        input_flags=flags,
        input_antenna_pct=antenna,
        input_channel_pct=flags.channel_pct(),
        input_frequency=frequency,
    )


def _with_totals(data: FlaggingData) -> FlaggingData:
    """Flagged at full resolution after every flagging step: what the input had plus what
    each step flagged itself (DP3 counts only the flags a step adds). Only when every step
    saw the input's own visibilities (none ran after an averager or on inserted slots)."""
    flags = data.input_flags
    assert flags is not None and data.step_antenna_pct is not None
    visibilities = flags.visibilities
    if any(count["visibilities"] != visibilities for count in data.steps.values()):
        return data
    station = data.input_antenna_pct + np.nansum(data.step_antenna_pct, axis=0)
    channel = data.input_channel_pct
    if data.step_channel_pct is not None:
        channel = channel + np.nansum(data.step_channel_pct, axis=0)
    flagged = flags.fraction * visibilities + sum(c["flagged"] for c in data.steps.values())
    return replace(
        data,
        total_pct=min(100.0, 100.0 * flagged / visibilities),
        total_antenna_pct=np.minimum(station, 100.0),
        total_channel_pct=np.minimum(channel, 100.0),
    )


def flagging_dataset(data: FlaggingData) -> Any:
    """The flagging report of one output as an xarray Dataset (what its zarr holds)."""
    import xarray as xr

    read = data.read
    if read["flagged"].size == 0 and read["channel_total"].sum():  # read without its cube
        read = _read_output(data.output, cube=True)
    names = np.array(data.names, dtype=str)
    times = (read["times"] - UNIX_EPOCH_MJD_SECONDS) * 1e9
    variables: dict[str, Any] = {
        "flagged": (
            ("time", "baseline", "frequency"),
            read["flagged"],
            {"description": "flagged correlations of the output (after averaging)"},
        ),
        "total": (
            ("time", "baseline", "frequency"),
            read["total"],
            {"description": "correlations of the output (0: no row for it)"},
        ),
    }
    coords: dict[str, Any] = {
        "time": ("time", times.astype("datetime64[ns]"), {"description": "UTC"}),
        "baseline": ("baseline", np.arange(len(read["first"]))),
        "frequency": ("frequency", read["frequencies"], {"units": "Hz"}),
        "antenna": ("antenna", names),
        "baseline_antenna1": ("baseline", names[read["first"]]),
        "baseline_antenna2": ("baseline", names[read["second"]]),
        "baseline_length": ("baseline", read["lengths"], {"units": "m"}),
    }
    steps = data.steps
    before_averaging = "input + every flagging step, before averaging"
    if steps:
        whole = "whole percent"
        coords["step"] = ("step", np.array(list(steps), dtype=str))
        variables.update(
            step_flagged=("step", [count["flagged"] for count in steps.values()]),
            step_visibilities=("step", [count["visibilities"] for count in steps.values()]),
            step_flagged_pct=(
                "step",
                [count["percent"] for count in steps.values()],
                {"description": "visibilities the step flagged itself (DP3's count)"},
            ),
            step_antenna_flagged_pct=(
                ("step", "antenna"),
                data.step_antenna_pct,
                {"description": f"DP3's per-antenna percentage ({whole})"},
            ),
        )
        if data.step_channel_pct is not None:
            variables["step_channel_flagged_pct"] = (
                ("step", "input_channel"),
                data.step_channel_pct,
                {"description": f"DP3's per-channel percentage ({whole})"},
            )
    if data.channel_count:
        coords["input_channel"] = ("input_channel", np.arange(data.channel_count))
    if data.input_flags is not None:
        if data.input_frequency is not None:
            coords["input_frequency"] = ("input_channel", data.input_frequency, {"units": "Hz"})
        variables.update(
            input_flagged_pct=((), 100.0 * data.input_flags.fraction),
            input_antenna_flagged_pct=("antenna", data.input_antenna_pct),
            input_channel_flagged_pct=("input_channel", data.input_channel_pct),
        )
    if data.total_pct is not None:
        variables.update(
            total_flagged_pct=((), data.total_pct),
            total_antenna_flagged_pct=(
                "antenna",
                data.total_antenna_pct,
                {"description": before_averaging},
            ),
            total_channel_flagged_pct=(
                "input_channel",
                data.total_channel_pct,
                {"description": before_averaging},
            ),
        )
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "title": f"Flagging report of {(data.shown_as or data.output).name}",
            "ms": str(data.shown_as or data.output),
            "made_by": "dp3batch",
        },
    )


def _rounded(values: Any) -> list[float | None] | None:
    if values is None:
        return None
    return [None if not np.isfinite(value) else round(float(value), 3) for value in values]


def _rounded_scalar(value: float | None) -> float | None:
    return round(float(value), 3) if value is not None and np.isfinite(value) else None


def flag_statistics(data: FlaggingData) -> dict[str, Any]:
    """What the completion record keeps of the report (JSON): the percentages flagged in the
    input, at full resolution after every flagging step (before averaging), and in the
    output, in all, per station and per channel. The summary, the batch report and the QA
    verdict are made from it."""
    read = data.read
    flagged = int(read["channel_flagged"].sum())
    total = int(read["channel_total"].sum())
    output_channel = _percent(read["channel_flagged"], read["channel_total"])
    flags = data.input_flags
    frequency = data.input_frequency if flags is not None else None
    return {
        "output_pct": round(100.0 * flagged / total, 3) if total else None,
        "input_pct": None if flags is None else _rounded_scalar(100.0 * flags.fraction),
        "total_pct": _rounded_scalar(data.total_pct),
        "stations": list(data.names),
        "station_output_pct": _rounded(data.station_output_pct()),
        "station_input_pct": _rounded(data.input_antenna_pct),
        "station_total_pct": _rounded(data.total_antenna_pct),
        "output_frequency_hz": [float(value) for value in read["frequencies"]],
        "channel_output_pct": _rounded(output_channel),
        "input_frequency_hz": None if frequency is None else [float(v) for v in frequency],
        "channel_input_pct": _rounded(data.input_channel_pct),
        "channel_total_pct": _rounded(data.total_channel_pct),
    }


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def _remove_stale(path: Path) -> None:
    """What killed attempts left beside `path` (its `.tmp-`/`.old-` copies), and only that:
    matched by name, never as a pattern (an MS name may hold any character)."""
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path.parent):
            if entry.name.startswith(prefixes) and not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)


def _replace(new: Path, path: Path) -> None:
    """Rename `new` to `path`; a directory there is moved aside first, then removed."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class FlaggingReport:
    """A report written to temporary names beside its final ones: `publish` renames them
    into place (after the output's commit) and removes the files of an earlier output that
    this one has none of; `discard` removes the temporary ones."""

    statistics: dict[str, Any]
    files: list[tuple[Path, Path]]
    # The final files this output's report would have: those not made are stale on publish.
    finals: tuple[Path, ...] = ()

    def publish(self) -> None:
        made = {final for _, final in self.files}
        for temporary, final in self.files:
            _replace(temporary, final)
        for final in self.finals:
            if final not in made and (final.exists() or final.is_symlink()):
                _remove(final)  # it described an earlier output
        self.files = []

    def discard(self) -> None:
        for temporary, _ in self.files:
            _remove(temporary)
        self.files = []


def _always(statistics: Mapping[str, Any]) -> bool:
    return True


def prepare_flagging_report(
    output: str | Path,
    qa_dir: str | Path,
    name: str,
    dp3_log: str | None = None,
    input_flags: InputFlags | None = None,
    with_files: Callable[[Mapping[str, Any]], bool] = _always,
    final: str | Path | None = None,
) -> FlaggingReport:
    """The flagging report of one output (`final`: its path once committed, when `output` is
    its temporary copy): its statistics (see `flag_statistics`, with the
    seconds it took) and, where `with_files(statistics)`, its files
    (`<qa_dir>/<name>_flagging_report.zarr` and `.png`) under temporary names, which the
    statistics name. Rendering the files costs about 0.7 s of CPU whatever the MS's size
    (most of a small MS's task), the statistics a read of the output's flags."""
    started = time.perf_counter()
    # The cube at once where the files are sure to be made (else read again if they are).
    data = flagging_data(output, dp3_log, input_flags, cube=with_files is _always)
    if final is not None:  # read from its temporary copy, named as it will be
        data = replace(data, shown_as=Path(final))
    zarr_path, png_path = report_paths(qa_dir, name)
    report = FlaggingReport(flag_statistics(data), [], (zarr_path, png_path))
    if with_files(report.statistics):
        dataset = flagging_dataset(data)
        zarr_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for final in (zarr_path, png_path):
                _remove_stale(final)
                report.files.append((_temporary(final), final))
            dataset.to_zarr(report.files[0][0], mode="w", consolidated=True, zarr_format=2)
            plot_flagging_report(dataset, report.files[1][0], data.station_output_pct())
        except BaseException:
            report.discard()
            raise
        report.statistics.update(zarr=str(zarr_path), png=str(png_path))
    report.statistics["seconds"] = round(time.perf_counter() - started, 3)
    return report


def make_flagging_report(
    output: str | Path,
    qa_dir: str | Path,
    name: str,
    dp3_log: str | None = None,
    input_flags: InputFlags | None = None,
) -> dict[str, Any]:
    """`prepare_flagging_report`, published at once; returns its statistics."""
    report = prepare_flagging_report(output, qa_dir, name, dp3_log, input_flags)
    report.publish()
    return report.statistics


def _worst(values: Any, labels: list[str]) -> tuple[str, float] | None:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.isfinite(values).any():
        return None
    position = int(np.nanargmax(values))
    return labels[position], float(values[position])


def plot_flagging_report(dataset: Any, path: str | Path, output_station: np.ndarray) -> None:
    """The PNG: the flagged fraction of the output as a time x frequency waterfall, per
    channel (before and after averaging), per baseline length and per station. Drawn with
    matplotlib's object API (no pyplot: the embedded cluster's tasks share one process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 8.5), dpi=80)
    FigureCanvasAgg(figure)
    # Room at the top for the two lines of the title and the channel axis above the spectrum.
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.86, hspace=0.3, wspace=0.2)
    (waterfall, spectrum), (lengths, stations) = figure.subplots(2, 2)
    flagged = dataset["flagged"].values
    total = dataset["total"].values
    frequencies_mhz = dataset["frequency"].values / 1e6
    times = dataset["time"].values
    _waterfall(figure, waterfall, flagged, total, frequencies_mhz, times)
    _spectrum(spectrum, dataset, flagged, total, frequencies_mhz)

    per_baseline = _percent(flagged.sum(axis=(0, 2)), total.sum(axis=(0, 2)))
    lengths.plot(dataset["baseline_length"].values / 1e3, per_baseline, ".", color="#4477aa")
    lengths.set(
        title="Output: flagged per baseline",
        xlabel="baseline length (km)",
        ylabel="flagged (%)",
        ylim=(-2, 102),
    )

    names = [str(name) for name in dataset["antenna"].values]
    positions = np.arange(len(names))
    # One artist per series, not one per station: 512 stations draw as fast as 16.
    stations.stairs(
        np.nan_to_num(output_station),
        np.arange(len(names) + 1) - 0.5,
        fill=True,
        color="#332288",
        label="output",
    )
    before = None
    if "total_antenna_flagged_pct" in dataset:
        before = dataset["total_antenna_flagged_pct"].values
        stations.plot(
            positions,
            before,
            "_",
            color="#cc3311",
            markersize=6,
            mew=2,
            label="before averaging: input + every step",
        )
    # At most about 24 names, and always the most flagged station's.
    every = max(1, -(-len(names) // 24))
    ticks = set(positions[::every].tolist())
    judged = before if before is not None else output_station
    if len(names) and np.isfinite(judged).any():
        most = int(np.nanargmax(judged))
        # Its name in place of a neighbour's, which it would overlap.
        ticks = {tick for tick in ticks if abs(tick - most) >= every} | {most}
    ticks = sorted(ticks)
    stations.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize="x-small")
    stations.set(title="Flagged per station", ylabel="flagged (%)", ylim=(0, 102))
    stations.legend(loc="upper right", fontsize="small")

    output_pct = 100 * int(flagged.sum(dtype=np.int64)) / max(1, int(total.sum(dtype=np.int64)))
    headline = [f"output {output_pct:.1f} % flagged"]
    if "total_flagged_pct" in dataset:
        headline.append(f"before averaging {float(dataset['total_flagged_pct']):.1f} %")
    if worst := _worst(before if before is not None else output_station, names):
        headline.append(f"worst station {worst[0]} ({worst[1]:.0f} %)")
    if worst_channel := _worst_channel(dataset):
        headline.append(f"worst channel {worst_channel}")
    # The name on a line of its own: with the numbers beside it, a long name ran off the page.
    figure.suptitle(
        f"{dataset.attrs.get('title', 'Flagging report')}\n" + ", ".join(headline), y=0.99, va="top"
    )
    figure.savefig(path, format="png", pil_kwargs={"compress_level": 1})


def _waterfall(figure, axes, flagged, total, frequencies_mhz, times) -> None:
    fraction = _percent(flagged.sum(axis=1), total.sum(axis=1))
    minutes = (times - times[0]) / np.timedelta64(60, "s") if len(times) else np.zeros(0)
    extent = None
    if len(minutes) and len(frequencies_mhz):
        half_channel = np.ptp(frequencies_mhz) / max(1, len(frequencies_mhz) - 1) / 2 or 0.1
        half_time = np.ptp(minutes) / max(1, len(minutes) - 1) / 2 or 0.5
        extent = (
            frequencies_mhz[0] - half_channel,
            frequencies_mhz[-1] + half_channel,
            minutes[-1] + half_time,
            minutes[0] - half_time,
        )
    image = axes.imshow(
        fraction, aspect="auto", interpolation="nearest", vmin=0, vmax=100, extent=extent
    )
    figure.colorbar(image, ax=axes, label="flagged (%)", pad=0.01)
    start = str(times[0])[:19].replace("T", " ") if len(times) else "?"
    axes.set(
        title="Output: flagged per time and channel (all baselines)",
        xlabel="frequency (MHz)",
        ylabel=f"minutes since {start} UTC",
    )


def _spectrum(axes, dataset, flagged, total, frequencies_mhz) -> None:
    """Per channel: the output's flags, and where known the flags before averaging."""
    output = _percent(flagged.sum(axis=(0, 1)), total.sum(axis=(0, 1)))
    axes.plot(
        frequencies_mhz,
        output,
        color="#332288",
        drawstyle="steps-mid",
        label="output (after averaging)",
    )
    axes.set(
        title="Flagged per channel", xlabel="frequency (MHz)", ylabel="flagged (%)", ylim=(-2, 102)
    )
    if "input_frequency" in dataset.coords:
        before_axes, axis = axes, dataset["input_frequency"].values / 1e6
    else:  # channels of the input, whose frequencies are not known here
        before_axes, axis = (
            axes.twiny(),
            dataset["input_channel"].values if "input_channel" in dataset.coords else None,
        )
        before_axes.set_xlabel("channel (as DP3 read it)")
    if "total_channel_flagged_pct" in dataset:
        before_axes.plot(
            axis,
            dataset["total_channel_flagged_pct"].values,
            color="#cc3311",
            drawstyle="steps-mid",
            label="before averaging: input + every step",
        )
        before_axes.plot(
            axis,
            dataset["input_channel_flagged_pct"].values,
            color="#88ccee",
            drawstyle="steps-mid",
            label="input",
        )
    elif "step_channel_flagged_pct" in dataset:
        for step in dataset["step"].values:
            before_axes.plot(
                axis,
                dataset["step_channel_flagged_pct"].sel(step=step).values,
                drawstyle="steps-mid",
                label=f"by {step} (DP3)",
            )
    handles = [line for ax in {axes, before_axes} for line in ax.get_lines()]
    axes.legend(handles=handles, loc="upper right", fontsize="small")


def worst_channel(dataset: Any) -> tuple[int, float | None, float] | None:
    """(channel, frequency in Hz or None, percent) of the most flagged channel before
    averaging (input + every step), else of the output."""
    if "total_channel_flagged_pct" in dataset:
        values = dataset["total_channel_flagged_pct"].values
        frequencies = (
            dataset["input_frequency"].values if "input_frequency" in dataset.coords else None
        )
    else:
        values = _percent(
            dataset["flagged"].values.sum(axis=(0, 1)), dataset["total"].values.sum(axis=(0, 1))
        )
        frequencies = dataset["frequency"].values
    if values.size == 0 or not np.isfinite(values).any():
        return None
    channel = int(np.nanargmax(values))
    frequency = None if frequencies is None else float(frequencies[channel])
    return channel, frequency, float(values[channel])


def _worst_channel(dataset: Any) -> str | None:
    found = worst_channel(dataset)
    if found is None:
        return None
    channel, frequency, percent = found
    where = f" ({frequency / 1e6:.3f} MHz)" if frequency is not None else ""
    return f"{channel}{where} ({percent:.0f} %)"
