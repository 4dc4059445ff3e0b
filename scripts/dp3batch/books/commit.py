"""One DP3 run for one MS, as a dask task: temporary output, DP3 lifecycle, check, commit.

Runs on a dask worker. Each attempt writes to a fresh temporary directory beside the final
output; only a checked output with its completion record is renamed into place. DP3 dies
with the worker (PR_SET_PDEATHSIG) and is stopped when the client cancels the task, so no
orphan keeps running or holding an output.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

from dp3batch.books.layout import leftover_owner, replaced_path


def remove_leftovers(output_dir: Path, names: set[str] | frozenset[str]) -> list[Path]:
    """Remove the temporary or replaced copies of the outputs `names` (`X.ms`) that killed
    runs left in `output_dir`, and nothing else: not another hidden entry, not a link."""
    if not output_dir.is_dir():
        return []
    removed = []
    for entry in os.scandir(output_dir):
        if entry.is_symlink() or leftover_owner(entry.name) not in names:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        removed.append(Path(entry.path))
    return removed


class BatchStopped(RuntimeError):
    """The batch stopped (interrupted, or its scheduler lost) before this commit."""


class AttemptRevoked(BatchStopped):
    """The batch gave this attempt's MS to another attempt (its worker fell silent)."""


BATCH_STOPPED = "stopped"
# A guard line `revoked <attempt>`: that attempt (a dask task key) may commit nothing.
REVOKED = "revoked "


# A commit holds the guard's shared lock for a rename, the central job its exclusive lock for
# a write: milliseconds. Longer means a lock stuck on a shared filesystem.
GUARD_LOCK_SECONDS = 30.0


class LockTimeout(RuntimeError):
    """A file lock could not be taken in time."""


class LocksUnsupported(RuntimeError):
    """The filesystem refuses file locks at all (Lustre mounted `noflock`: ENOSYS; NFS
    without its lock service: ENOLCK)."""


def flock_with_deadline(handle, mode: int, seconds: float = GUARD_LOCK_SECONDS) -> None:
    """`flock(handle, mode)`, or LockTimeout after `seconds`, or LocksUnsupported."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{handle.name} stayed locked for {seconds:.0f} s (a lock stuck on a "
                    "shared filesystem?)"
                ) from None
            time.sleep(0.01)
        except OSError as error:
            raise LocksUnsupported(
                f"{handle.name} cannot be locked ({error.strerror}): its filesystem does not "
                "support file locks, which the workflow needs to run one batch at a time in "
                "an output directory and to commit each output safely; put output_dir on a "
                "filesystem with locks (Lustre mounted with -o flock, NFS with its lock "
                "service running)"
            ) from None


def commit(temporary: Path, output: Path, guard: str | None, attempt: str | None = None) -> None:
    """Put the finished output in place; an older output is moved aside first, then removed.

    Only while the batch goes on, and only if the batch still counts on this `attempt` (the
    task's dask key): the central job writes BATCH_STOPPED into the guard file under an
    exclusive lock when it ends, is interrupted or loses its scheduler, and `revoked
    <attempt>` when it gives the MS to another attempt (a worker fell silent), so no such
    output is committed after that (a commit holds the shared lock from its check to its
    rename)."""
    if not guard or not os.path.exists(guard):  # a task run on its own, outside a batch
        guard = os.devnull
    with open(guard) as guard_file:
        if guard != os.devnull:
            flock_with_deadline(guard_file, fcntl.LOCK_SH)
            lines = guard_file.read().splitlines()
            if BATCH_STOPPED in lines:
                raise BatchStopped("the batch was stopped before this output was committed")
            if attempt is not None and REVOKED + attempt in lines:
                raise AttemptRevoked(
                    f"attempt {attempt} was revoked: its MS was given to another attempt"
                )
        replaced = None
        if output.is_symlink():
            raise RuntimeError(f"{output} is a link: not replacing it")
        if output.exists():
            replaced = replaced_path(output)
            os.rename(output, replaced)
        os.rename(temporary, output)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def stop_commits(guard: Path) -> None:
    """In the central job: no task of this batch commits an output after this returns. (The
    line is added: the attempts revoked before stay on record.)"""
    with open(guard, "a") as guard_file:
        flock_with_deadline(guard_file, fcntl.LOCK_EX)
        guard_file.write(BATCH_STOPPED + "\n")
        guard_file.flush()
        os.fsync(guard_file.fileno())


def revoke_attempts(guard: Path, attempts: list[str]) -> None:
    """In the central job: none of these attempts (dask task keys) commits an output after
    this returns, even one whose worker wakes up later (a frozen worker's late result)."""
    with open(guard, "a+") as guard_file:
        flock_with_deadline(guard_file, fcntl.LOCK_EX)
        guard_file.write("".join(f"{REVOKED}{attempt}\n" for attempt in attempts))
        guard_file.flush()
        os.fsync(guard_file.fileno())
