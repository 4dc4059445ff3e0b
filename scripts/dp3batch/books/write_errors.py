"""A failed write of the workflow's own books (a record, a marker, a report, a log line) as
one line for people: which file, why, and what to do. A full disk is the usual cause, and the
data already committed is never at stake: every output is complete or absent."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

# Fewer free inodes than this on a filesystem that counts them: no output fits (a DP3 output
# MS is about 100 files), and a failure there was for want of them.
FEW_INODES = 128


def inodes_left(path: str | Path) -> int | None:
    """How many more files the filesystem of `path` (or of its nearest existing parent)
    can hold, or None where it sets no such limit (btrfs, say) or cannot be asked."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        status = os.statvfs(existing)
    except OSError:
        return None
    return status.f_favail if status.f_files else None


def out_of_inodes(path: str | Path) -> str | None:
    """`has no free inodes left (…)`, when the filesystem of `path` can hold no more files
    whatever its free space (which `df -h` shows, and `df -i` does not), else None."""
    left = inodes_left(path)
    if left is None or left >= FEW_INODES:
        return None
    return (
        f"has no free inodes left ({left}): it can hold no more files, whatever space "
        "`df -h` shows (`df -i` shows them)"
    )


# How the OS words a used-up quota (strerror(EDQUOT)), also in DP3's messages.
QUOTA_WORDS = os.strerror(errno.EDQUOT)
# What to do, after the cause: a quota, unlike a full disk, is the user's own.
QUOTA_ADVICE = (
    "your disk quota there is used up (see `quota -s`, on Lustre `lfs quota -h -u $USER "
    "MOUNT`): free space or ask for more, then run again"
)


def quota_problem(text: str, directory: str | Path) -> str | None:
    """When `text` (the tail of DP3's log) says a write failed for the quota: which
    filesystem, and what to do; else None."""
    if QUOTA_WORDS not in text:
        return None
    return f"writing under {directory}: {QUOTA_WORDS}: {QUOTA_ADVICE}"


def write_problem(error: OSError, path: str | Path | None = None) -> str:
    """`<file>: No space left on device: the filesystem is full; free space, then run again`.
    `path`: the file being written, for an error that does not name it (a write or close
    fails without a file name; only an open names it)."""
    name = error.filename or path
    where = f"{name}: " if name else ""
    cause = error.strerror or str(error)
    if error.errno == errno.EDQUOT:
        return f"{where}{cause}: {QUOTA_ADVICE}"
    if error.errno == errno.ENOSPC:
        if name and (inodes := out_of_inodes(name)):
            return f"{where}{cause}: the filesystem {inodes}; remove files, then run again"
        return f"{where}{cause}: the filesystem is full; free space, then run again"
    return f"{where}{cause}"


class QuietFileHandler(logging.FileHandler):
    """A log file that a full disk cannot turn into tracebacks: logging prints one for every
    line it fails to write, between the lines that matter. The same lines also go to the
    terminal (Snakemake's output), so a line the file misses is not lost."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass
