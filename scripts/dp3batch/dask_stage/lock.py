"""The fan-out: one dask task per pending MS, results as they arrive, a clear end report.

Runs in the central Snakemake job. It holds a lock on the output directory for the whole
batch, cleans leftovers of killed runs, checks the cluster before submitting anything, and
stops every DP3 when it is interrupted or its parent (Snakemake) disappears.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dp3batch.books.commit import LocksUnsupported, LockTimeout, flock_with_deadline
from dp3batch.books.layout import OutputLayout

LOCK_WAIT_SECONDS = 30


class BatchError(RuntimeError):
    """The batch cannot start; the message says why and what to do."""


@contextlib.contextmanager
def output_dir_lock(output_dir: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One batch at a time per output directory. The kernel drops the lock when its holder
    dies, so a killed run never blocks the next one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = OutputLayout(output_dir).lock
    with open(lock_path, "a+") as handle:
        try:
            flock_with_deadline(handle, fcntl.LOCK_EX, wait)
        except LockTimeout:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BatchError(
                f"{output_dir} is being processed by another run ({holder}); wait for it to "
                "finish or stop it, then run again"
            ) from None
        except LocksUnsupported as error:
            raise BatchError(str(error)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
