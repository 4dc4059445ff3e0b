"""Every path the workflow writes, in one place.

    <output_dir>/
        NAME.ms/                    an output: the DP3 MS, its completion record and parset
        .NAME.ms.tmp-<12 hex>       an output being written (renamed to NAME.ms when checked)
        .NAME.ms.old-<12 hex>       an output being replaced (removed right after)
        .NAME.ms.chunks/            frequency chunks of NAME.ms until its join (books.chunks)
        .dp3batch.lock              held (flock) by the batch that writes here
        .record-checks.json         what a rerun checks of each record (see record_checks)
        .forced-unfinished.json     MSs a forced run did not finish (see forced)
        summary.tsv, summary.json   the status of every MS, after every run
        logs/NAME.log               DP3's output for one MS
        logs/failed.txt             the failures of the last batch
        logs/batches/<batch>.*      one batch's result, log, guard and pid files
        report/<batch>/             one batch's plots
        runs/NN-dp3batch/           one run's log, config, task list, dask report and QA
                                    (in `<sdm_path>/logs/` instead when an SDM is given)

The workflow deletes nothing in `output_dir` but its own temporary and replaced copies of
the outputs it knows (`is_leftover_of`): never another hidden entry, never through a link.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dp3batch.config.errors import ConfigError

RECORD_NAME = "dp3_completion.json"
PARSET_NAME = "dp3.parset"
LOCK_NAME = ".dp3batch.lock"
FAILURES_NAME = "failed.txt"
SUMMARY_TSV = "summary.tsv"
SUMMARY_JSON = "summary.json"
RECORD_CHECKS_NAME = ".record-checks.json"
FORCED_NOTE_NAME = ".forced-unfinished.json"

RUNS_NAME = "runs"
RUN_NAME = "dp3batch"
# An entry `NN-<name>` of a runs directory (any name: the SDM's logs hold other programs' too).
_RUN_ENTRY = re.compile(r"^(?P<index>[0-9]+)-")
RUN_DIRECTORY_ATTEMPTS = 1000

TEMPORARY_MARK = "tmp"
REPLACED_MARK = "old"
_LEFTOVER = re.compile(r"^\.(?P<owner>.+)\.(?:tmp|old)-[0-9a-f]{12}$")


SUFFIX_LENGTH = 12


def _suffix() -> str:
    return uuid.uuid4().hex[:SUFFIX_LENGTH]


def longest_entry_name(output: str) -> str:
    """The longest name the workflow gives an entry for the output `output` (`X.ms`): its
    temporary (or replaced) form, `.X.ms.tmp-<12 hex>`."""
    return f".{output}.{TEMPORARY_MARK}-{'0' * SUFFIX_LENGTH}"


def check_output_names(output_dir: str | Path, outputs: Iterable[str]) -> None:
    """Every entry the workflow would write for these outputs (`X.ms`) must fit the output
    filesystem's limits on a name and a path; else the run would fail at its first commit."""
    existing = Path(output_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        name_limit = os.pathconf(existing, "PC_NAME_MAX")
        path_limit = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_limit, path_limit = 255, 4096
    # Room for what DP3 writes inside an output (`instrument/table.f0_TSM0` and the like).
    inner = 64
    directory = len(os.fsencode(str(output_dir)))
    for output in outputs:
        longest = len(os.fsencode(longest_entry_name(output)))
        if longest > name_limit:
            raise ConfigError(
                f"inputs: the output {output} is too long a name: its temporary form "
                f"({longest} bytes) exceeds the {name_limit} bytes a name may have on the "
                f"filesystem of {output_dir}; shorten the input's name by at least "
                f"{longest - name_limit} bytes"
            )
        if directory + 1 + longest + inner > path_limit:
            raise ConfigError(
                f"output_dir: {output_dir} is too long a path for the output {output} (its "
                f"files would pass the filesystem's {path_limit} bytes); choose a shorter one"
            )


def output_dir_problem(output_dir: Path) -> str | None:
    """Why the workflow cannot write into `output_dir` (or, if it does not exist yet, into
    the directory it would be made in), or None: a read-only filesystem, or no write
    permission for this user. Asked without writing anything."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"{output_dir}" if existing == output_dir else f"{output_dir} (made in {existing})"
    if not existing.is_dir():
        return f"output_dir: {where}: {existing} is not a directory"
    unwritable = why_unwritable(existing)
    if unwritable == READ_ONLY:
        return (
            f"output_dir: {where} {READ_ONLY}; the outputs, logs and summary are written "
            "there: choose another output_dir (or remount it read-write)"
        )
    if unwritable:
        return f"output_dir: {where} {unwritable}: choose another output_dir, or make it writable"
    if existing == output_dir:
        return others_books_problem(output_dir)
    return None


# The entries of an output directory every run updates (files) or adds to (directories).
SHARED_BOOKS = (
    LOCK_NAME,
    SUMMARY_TSV,
    SUMMARY_JSON,
    ".summary.digest",
    RECORD_CHECKS_NAME,
    "logs",
    "logs/batches",
    "report",
    "qa",
    RUNS_NAME,
)


def others_books_problem(output_dir: Path) -> str | None:
    """Why this user cannot run in an output directory another user ran in: the entries
    every run updates (its lock, summary, logs…) are theirs and not writable by this one
    (a team's shared directory, each member's umask 022). Else None."""
    blocked = []
    for name in SHARED_BOOKS:
        path = output_dir / name
        try:
            owner = path.lstat().st_uid
        except OSError:
            continue  # not made yet: this run makes it
        if owner != os.getuid() and not os.access(path, os.W_OK):
            blocked.append((name, owner))
    if not blocked:
        return None
    import pwd

    def user(uid: int) -> str:
        try:
            return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            return f"uid {uid}"

    owners = ", ".join(sorted({user(uid) for _, uid in blocked}))
    names = ", ".join(name for name, _ in blocked)
    return (
        f"output_dir: {output_dir} was written by another user, {owners}: {names} there "
        f"cannot be changed by this one, {user(os.getuid())}, and every run updates them. "
        "Use an output_dir of your own, or share one through a group: a setgid directory "
        "of that group, and umask 002 for every user of it"
    )


READ_ONLY = "is on a read-only filesystem"


def why_unwritable(directory: Path) -> str | None:
    """`is on a read-only filesystem` (READ_ONLY), `is not writable by this user (…)`, or
    None for an existing directory this process can make entries in. Asked without writing."""
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return READ_ONLY
    if not os.access(directory, os.W_OK | os.X_OK):
        mode = oct(directory.stat().st_mode & 0o777)
        return f"is not writable by this user (uid {os.getuid()}; {directory} has mode {mode[2:]})"
    return None


def temporary_path(output: Path) -> Path:
    """A fresh name beside `output` for one attempt at writing it."""
    return output.parent / f".{output.name}.{TEMPORARY_MARK}-{_suffix()}"


def replaced_path(output: Path) -> Path:
    """A fresh name beside `output` for the older output while the new one takes its place."""
    return output.parent / f".{output.name}.{REPLACED_MARK}-{_suffix()}"


def leftover_owner(file_name: str) -> str | None:
    """The output a temporary or replaced copy belongs to (`.X.ms.tmp-0a1b2c3d4e5f` → `X.ms`),
    or None for any other name."""
    match = _LEFTOVER.match(file_name)
    return match.group("owner") if match else None


def ms_log_file(log_dir: str | Path, name: str) -> str:
    """Where DP3's full output for the MS `name` goes."""
    return str(Path(log_dir) / f"{name}.log")


@dataclass(frozen=True)
class OutputLayout:
    """The files of one output directory."""

    output_dir: Path

    @property
    def log_dir(self) -> Path:
        return self.output_dir / "logs"

    @property
    def batches_dir(self) -> Path:
        return self.log_dir / "batches"

    @property
    def lock(self) -> Path:
        return self.output_dir / LOCK_NAME

    @property
    def record_checks(self) -> Path:
        return self.output_dir / RECORD_CHECKS_NAME

    @property
    def forced_note(self) -> Path:
        """The MSs a forced run (-F, -R) did not finish: the next run processes them."""
        return self.output_dir / FORCED_NOTE_NAME

    @property
    def failures(self) -> Path:
        return self.log_dir / FAILURES_NAME

    @property
    def summary_tsv(self) -> Path:
        return self.output_dir / SUMMARY_TSV

    @property
    def summary_json(self) -> Path:
        return self.output_dir / SUMMARY_JSON

    def output(self, name: str) -> Path:
        return self.output_dir / f"{name}.ms"

    def ms_log(self, name: str) -> str:
        return ms_log_file(self.log_dir, name)

    def batch_result(self, batch: str) -> Path:
        """The central job's output: the result of every MS of one batch."""
        return self.batches_dir / f"{batch}.json"

    def batch_log(self, batch: str, step: str = "process") -> Path:
        return self.batches_dir / f"{batch}.{step}.log"

    def batch_guard(self, batch: str) -> Path:
        """Tasks commit only while this file says the batch goes on (see execution.commit)."""
        return self.batches_dir / f"{batch}.guard"

    def batch_pid(self, batch: str) -> Path:
        """The central job's process id, for Snakemake to pass an interrupt on to it."""
        return self.batches_dir / f"{batch}.pid"

    def report_dir(self, batch: str) -> Path:
        return self.output_dir / "report" / batch

    @property
    def qa_dir(self) -> Path:
        """Each output's flagging report: `NAME_flagging_report.zarr` and `.png`."""
        return self.output_dir / "qa"

    @property
    def runs_dir(self) -> Path:
        """Where each run keeps its files when no SDM is given (see RunFiles)."""
        return self.output_dir / RUNS_NAME


@dataclass(frozen=True)
class RunFiles:
    """What one run keeps together (the reference pipeline's `<sdm>/logs/NN-bpp/`)."""

    directory: Path

    @property
    def log(self) -> Path:
        return self.directory / "pipeline.log"

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def task_list(self) -> Path:
        return self.directory / "task-list.json"

    @property
    def batch_specification(self) -> Path:
        """What the central job runs (`BatchSpec.to_json()`), written before it starts."""
        return self.directory / "batch-specification.json"

    @property
    def dask_report(self) -> Path:
        return self.directory / "dask-report.html"

    @property
    def qa(self) -> Path:
        return self.directory / "qa"


def make_run_directory(parent: Path, name: str = RUN_NAME) -> Path:
    """A new `NN-<name>` in `parent`, NN one above the highest index there: made by mkdir,
    which fails for the second of two runs that chose the same NN, so two runs never share
    one (the loser takes the next)."""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(RUN_DIRECTORY_ATTEMPTS):
        indices = [
            int(match.group("index"))
            for entry in os.listdir(parent)
            if (match := _RUN_ENTRY.match(entry))
        ]
        directory = parent / f"{max(indices, default=0) + 1:02d}-{name}"
        try:
            directory.mkdir()
            return directory
        except FileExistsError:
            continue
    raise OSError(f"could not make a run directory in {parent} in {RUN_DIRECTORY_ATTEMPTS} tries")
