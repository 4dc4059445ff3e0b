"""Reading the shape of a MeasurementSet and what the chain should make of it."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    rows: int
    times: int
    channels: int
    interval: float
    channel_width: float
    flagged_fraction: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# The kinds of table casacore writes as the type in a table.dat's header; the first
# found in its first bytes is the table's own.
_TABLE_KINDS = re.compile(rb"(PlainTable|RefTable|ConcatTable|NullTable)")


def table_kind(path: str | Path) -> str | None:
    """What kind of casacore table `path` is, by its table.dat: `PlainTable` (its data in its
    own files), `RefTable` (rows of another table: a TaQL `GIVING` or `select` result),
    `ConcatTable`; None if it cannot be told."""
    try:
        with open(os.path.join(path, "table.dat"), "rb") as header:
            head = header.read(96)
    except OSError:
        return None
    found = _TABLE_KINDS.search(head)
    return found.group(1).decode() if found else None


# struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t).
_FLOCK = "hhqqi4x"


@functools.cache
def _read_only_table_class() -> type:
    from casacore import tables

    class ReadOnlyTable(tables.table):
        """python-casacore's table without the row object every open makes (a TableRow over
        every column, for `table[i]`, which nothing here uses): measured, a fifth to a third
        of the CPU of a first open, and most of a reopen's. A task opens its input's and its
        output's tables 8 times (see held_open)."""

        def _makerow(self) -> None:
            self._row = None

    return ReadOnlyTable


# The tables `held_open` holds in this thread, by path: a read of one is given the open
# table itself. Per thread: the workers of an embedded cluster run their tasks as threads of
# one process, each holding its own MS's tables.
_held = threading.local()


def read_table(path: str | Path) -> Any:
    """An existing table (or `MS::SUBTABLE`), opened read-only, printing nothing; or, while
    `held_open` holds it in this thread, that open table."""
    if (table := _lent(path)) is not None:
        return _Borrowed(table)
    return _read_only_table_class()(str(path), ack=False, readonly=True)


def _lent(path: str | Path) -> Any | None:
    """The table `held_open` holds at `path` in this thread, if any."""
    held = getattr(_held, "tables", None)
    return held.get(os.path.normpath(path)) if held else None


class _Borrowed:
    """A table `held_open` holds, lent to one read: the read's `close()` (or the end of its
    `with`) leaves it open for the next."""

    def __init__(self, table: Any):
        self._table = table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_subtable(path: str | Path, name: str):
    """An MS's subtable (`ANTENNA`, ...), opened read-only: through its own directory, as
    the MS layout stores it, when that holds a table; else through the main table's keyword.
    `MS::NAME` opens the whole main table first: 0.3 ms of the 0.5 ms a window lookup took,
    which a dry run over 10,000 MSs does 10,000 times."""
    directory = os.path.join(path, name)
    if _lent(directory) is not None or os.path.isfile(os.path.join(directory, "table.dat")):
        return read_table(directory)
    return read_table(f"{path}::{name}")


@contextlib.contextmanager
def held_open(path: str | Path, subtables: Iterable[str] = ()) -> Iterator[None]:
    """Keeps an MS's main table (and these subtables) open, read-only, while a group of
    reads asks for them again and again: each read in this thread is given the open table
    (a task reads its input's and its output's tables 26 times; 8 opens now, where casacore's
    sharing of an open table still cost each reopen 0.06 ms and a dozen lstats of its path).
    Best effort: a table that cannot be opened here is opened by the reads as before, with
    their own messages."""
    opened: dict[str, Any] = {}
    try:
        with contextlib.suppress(RuntimeError, OSError):
            opened[os.path.normpath(path)] = read_table(str(path))
            for name in subtables:
                directory = os.path.join(path, name)
                opened[os.path.normpath(directory)] = open_subtable(path, name)
        outer = getattr(_held, "tables", None)
        _held.tables = {**(outer or {}), **opened}
        try:
            yield
        finally:
            _held.tables = outer
    finally:
        for table in reversed(opened.values()):
            table.close()


def write_lock_holder(ms: str | Path) -> int | None:
    """The process that holds a write lock on the MS or one of its subtables, or None.

    casacore waits forever for a table another process holds locked for writing
    ("waiting for read-lock"); asking the kernel first (F_GETLK takes no lock) lets a run
    name the lock instead of hanging on it."""
    for lock_file in _lock_files(str(ms)):
        try:
            descriptor = os.open(lock_file, os.O_RDONLY)
        except OSError:
            continue
        try:
            query = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
            lock_type, _, _, _, pid = struct.unpack(
                _FLOCK, fcntl.fcntl(descriptor, fcntl.F_GETLK, query)
            )
        except OSError:
            continue
        finally:
            os.close(descriptor)
        if lock_type != fcntl.F_UNLCK:
            return pid
    return None


def _lock_files(ms: str) -> list[str]:
    """The lock file of the MS's main table and of each subtable (a dry run over 10,000
    pending MSs asks for all of them: a directory listing, not a glob)."""
    files = [os.path.join(ms, "table.lock")]
    try:
        with os.scandir(ms) as entries:
            files += [
                os.path.join(entry.path, "table.lock")
                for entry in entries
                if entry.is_dir()  # a subtable may be a link, as a glob would follow
            ]
    except OSError:
        pass
    return files


def lock_message(ms: str | Path, pid: int) -> str:
    return (
        f"{ms} is locked by another process (pid {pid}) that holds it open for writing; "
        "close it there (or stop that process), then run again"
    )


def read_shape(path: str, with_flags: bool = False, band: int | None = None) -> Shape:
    """Rows, time slots, channels and resolutions of an MS (and, if asked, its flagged
    fraction); of the rows and window of one band (DATA_DESC_ID, as `msin.band`) if given."""
    import numpy as np

    with read_table(str(path)) as whole:
        table = whole if band is None else whole.query(f"DATA_DESC_ID=={int(band)}")
        try:
            rows, times, interval, flagged = _row_shape(table, with_flags)
        finally:
            if band is not None:
                table.close()
    window = 0
    if band is not None:
        with open_subtable(path, "DATA_DESCRIPTION") as description:
            window = int(description.getcell("SPECTRAL_WINDOW_ID", band))
    with open_subtable(path, "SPECTRAL_WINDOW") as spw:
        channels = int(spw.getcell("NUM_CHAN", window))
        channel_width = float(np.abs(spw.getcell("CHAN_WIDTH", window)).mean())
    return Shape(rows, times, channels, interval, channel_width, flagged)


def _row_shape(table, with_flags: bool) -> tuple[int, int, float, float | None]:
    import numpy as np

    rows = table.nrows()
    times = distinct_count(table.getcol("TIME")) if rows else 0
    interval = float(table.getcell("INTERVAL", 0)) if rows else 0.0
    flagged = None
    if with_flags and rows:
        # A row with FLAG_ROW set is flagged whole, whatever its FLAG says: DP3 reads it so
        # (an MS with every row flagged and FLAG all false comes out of DP3 all flagged).
        has_flag_row = "FLAG_ROW" in table.colnames()
        flagged_count = 0
        total = 0
        step = 10_000
        for start in range(0, rows, step):
            count = min(step, rows - start)
            flags = table.getcol("FLAG", startrow=start, nrow=count)
            if has_flag_row:
                whole = table.getcol("FLAG_ROW", startrow=start, nrow=count).astype(bool)
                per_row = flags[0].size
                flagged_count += int(np.count_nonzero(flags[~whole])) + per_row * int(whole.sum())
            else:
                flagged_count += int(np.count_nonzero(flags))
            total += flags.size
        flagged = flagged_count / total if total else 0.0
    return rows, times, interval, flagged


def distinct_count(values) -> int:
    """How many different values a 1-D array holds. An MS's rows are nearly always in time
    order: then one pass counts them (10 million rows: 30 ms, where sorting them takes 1 s,
    CPU taken from the DP3 running beside)."""
    import numpy as np

    if len(values) == 0:
        return 0
    steps = np.diff(values)
    if (steps >= 0).all():
        return 1 + int(np.count_nonzero(steps))
    return len(np.unique(values))


def window_channels(path: str | Path, band: int | None = None) -> int:
    """NUM_CHAN of the spectral window that `band` (a DATA_DESC_ID, as `msin.band`) reads,
    or of the first window."""
    window = 0
    if band is not None:
        with open_subtable(path, "DATA_DESCRIPTION") as description:
            window = int(description.getcell("SPECTRAL_WINDOW_ID", band))
    with open_subtable(path, "SPECTRAL_WINDOW") as spw:
        return int(spw.getcell("NUM_CHAN", window))


def window_frequencies(
    path: str | Path, band: int | None = None
) -> tuple[list[float], list[float]]:
    """CHAN_FREQ and CHAN_WIDTH (Hz) of the spectral window that `band` reads (see
    window_channels)."""
    window = 0
    if band is not None:
        with open_subtable(path, "DATA_DESCRIPTION") as description:
            window = int(description.getcell("SPECTRAL_WINDOW_ID", band))
    with open_subtable(path, "SPECTRAL_WINDOW") as spw:
        frequencies = [float(value) for value in spw.getcell("CHAN_FREQ", window)]
        widths = [float(value) for value in spw.getcell("CHAN_WIDTH", window)]
    return frequencies, widths


def read_telescope_name(path: str | Path) -> str:
    """OBSERVATION::TELESCOPE_NAME of the MS's first observation, as DP3 and AOFlagger read
    it ("" when the MS has none)."""

    try:
        with open_subtable(path, "OBSERVATION") as observation:
            if observation.nrows() == 0 or "TELESCOPE_NAME" not in observation.colnames():
                return ""
            return str(observation.getcell("TELESCOPE_NAME", 0)).strip()
    except RuntimeError:  # no OBSERVATION table: AOFlagger then knows no telescope either
        return ""


def station_names(path: str | Path) -> list[str]:
    """ANTENNA::NAME of the MS, in antenna index order (DP3's per-antenna flag counts use
    the index)."""

    with open_subtable(path, "ANTENNA") as antennas:
        return [str(name) for name in antennas.getcol("NAME")]


def read_station_names(path: str | Path) -> list[str]:
    """`station_names`, or [] when they cannot be read (for the report only)."""
    try:
        return station_names(path)
    except RuntimeError:
        return []


def row_count(path: str | Path) -> int:
    with read_table(str(path)) as table:
        return table.nrows()
