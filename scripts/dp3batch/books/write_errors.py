"""A failed write of the workflow's own books (a record, a marker, a report, a log line) as
one line for people: which file, why, and what to do. A full disk is the usual cause, and the
data already committed is never at stake: every output is complete or absent."""

from __future__ import annotations

import errno
import logging
from pathlib import Path


def write_problem(error: OSError, path: str | Path | None = None) -> str:
    """`<file>: No space left on device: the filesystem is full; free space, then run again`.
    `path`: the file being written, for an error that does not name it (a write or close
    fails without a file name; only an open names it)."""
    name = error.filename or path
    where = f"{name}: " if name else ""
    cause = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        return f"{where}{cause}: the filesystem is full; free space, then run again"
    return f"{where}{cause}"


class QuietFileHandler(logging.FileHandler):
    """A log file that a full disk cannot turn into tracebacks: logging prints one for every
    line it fails to write, between the lines that matter. The same lines also go to the
    terminal (Snakemake's output), so a line the file misses is not lost."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass
