"""Completion records and pending reasons: when is an output done, and why is it not.

An output `<name>.ms` is complete only when it holds a valid completion record
(`RECORD_NAME`). The record is written into the temporary output as the last step, and the
temporary directory is renamed to the final path afterwards, so the final path never holds a
partial MS (DP3 creates its output before processing; its existence proves nothing).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from dp3batch.books.codec import Parameters, from_json, to_json
from dp3batch.books.fingerprints import input_unchanged, output_unchanged
from dp3batch.books.layout import PARSET_NAME, RECORD_NAME, ms_log_file
from dp3batch.books.record_checks import (
    Identity,
    KeptChecks,
    RecordCheck,
    file_identity,
    without_collections,
    write_record_checks,
)

__all__ = ["PARSET_NAME", "RECORD_NAME", "ms_log_file"]

RECORD_FORMAT = 1


@dataclass(frozen=True)
class Expectation:
    """What a completion record must agree with for its output to count as up to date."""

    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    dp3_version: str


@dataclass(frozen=True, kw_only=True)
class CompletionRecord:
    """How an output was made: written into it last (`RECORD_NAME`), read back to decide
    whether it is still up to date, and by the summary and the report.

    Fields that older versions of the workflow did not write are optional: such a record
    still reads, and its output is pending for the reason it always was. Nested objects
    (shapes, windows, flag counts) are other modules' JSON, kept as read and never changed
    in place (a read record is shared: see `read_record`)."""

    JSON_FORMAT: ClassVar[int] = RECORD_FORMAT

    name: str
    input: str
    output: str
    input_fingerprint: str
    # The window this output holds (None: the MS's only one), and the MS's windows (a rerun
    # reads them here, see windows).
    band: int | None = None
    windows: Mapping[str, Any] | None = None
    parameters: Parameters
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    dp3_version: str
    # The telescope decides AOFlagger's default strategy (see ms_parameters).
    telescope: str | None = None
    # For the flagged fraction per station (DP3 counts per antenna index).
    stations: tuple[str, ...] | None = None
    aoflagger_strategies: Mapping[str, str | None] | None = None
    dp3_executable: str
    dp3_arguments: tuple[str, ...]
    worker: str
    numthreads: int
    started: str
    finished: str
    duration_seconds: float
    # The estimate of DP3's work the batch dispatched by (bytes of the input's main table),
    # beside what the run took.
    size_estimate_bytes: int | None = None
    shape_before: Mapping[str, Any]
    shape_after: Mapping[str, Any]
    # What the output was checked against (see output_check).
    shape_expected: Mapping[str, Any] | None = None
    # What must sit beside the MS for the output to count as complete.
    required_files: tuple[str, ...] | None = None
    output_bytes: int | None = None
    step_seconds: Mapping[str, float] | None = None
    # What each flagging step flagged, as DP3 counted it (see dp3_log.parse_flag_counts).
    flags_by_step: Mapping[str, Any] | None = None
    # Of the output's own files, taken after every read of the output: a damaged output no
    # longer matches it.
    output_fingerprint: str | None = None
    # The files each fingerprint covers: a rerun stats them by name (see listed_fingerprint).
    input_files: tuple[str, ...] | None = None
    output_files: tuple[str, ...] | None = None
    # The batch that made the output (`BatchSpec.batch_id`): "made by this batch" is decided
    # by it, never by comparing the clocks of two hosts. Records of earlier versions have none.
    batch_id: str | None = field(default=None, metadata={"omit_none": True})
    # DP3's peak resident memory (its `ru_maxrss`), for sizing jobs.
    peak_memory_bytes: int | None = field(default=None, metadata={"omit_none": True})
    # DP3's CPU time (user + system, of it and its children, as `wait4` counts): against
    # `duration_seconds`, how busy its threads kept their cores.
    dp3_cpu_seconds: float | None = field(default=None, metadata={"omit_none": True})
    # What the output's flagging report found (report.flagging.flag_statistics): flagged
    # percentages in the input, before averaging and in the output, per station and per
    # channel, and the report's files. Left out when there is none (older records).
    flag_statistics: Mapping[str, Any] | None = field(default=None, metadata={"omit_none": True})
    # Of an output joined from frequency chunks: the width, and each chunk's channels, band,
    # fingerprints, worker, times and flagged percentages (see dask_stage.join).
    frequency_chunks: Mapping[str, Any] | None = field(default=None, metadata={"omit_none": True})

    def to_json(self) -> dict[str, Any]:
        """The record as it is written: `format` first, then every field in order."""
        return to_json(self)

    def check(self) -> RecordCheck:
        """What the up-to-date check reads of this record."""
        return RecordCheck(
            input=self.input,
            windows=self.windows,
            required_files=self.required_files,
            parameters_fingerprint=self.parameters_fingerprint,
            extra_inputs_fingerprint=self.extra_inputs_fingerprint,
            dp3_version=self.dp3_version,
            telescope=self.telescope,
            output_fingerprint=self.output_fingerprint,
            output_files=self.output_files,
            input_fingerprint=self.input_fingerprint,
            input_files=self.input_files,
        )

    @classmethod
    def from_json(cls, data: object, what: str = "completion record") -> CompletionRecord:
        """A record from its JSON; ContractError names the field that does not fit. Unknown
        keys are ignored; a record of another `format` is refused."""
        return from_json(cls, data, what)


# A store keeps parsed records by path, with the identity of the file they were read from (see
# record_checks.file_identity): one run reads each record up to three times (pending reason,
# telescope, summary). A rewritten record is a new file (write_record renames); one edited in
# place gets a new change time, but file times tick coarsely (milliseconds), so only records
# older than SETTLED_NS are kept. The records are frozen, so every reader shares the one parsed.
SETTLED_NS = 2_000_000_000


def _settled(stat: os.stat_result) -> bool:
    # Any write sets the modification time to now: a file modified long ago cannot be
    # written again without its identity changing.
    return time.time_ns() - stat.st_mtime_ns > SETTLED_NS


class RecordStore:
    """The completion records of one run's outputs, as this run reads them: each parsed
    record is kept while its file keeps its identity (and had settled when read), and what
    the last run kept of each record (`KeptChecks`, `.record-checks.json`) is trusted while
    the record's file is unchanged. Planning builds it and passes it to whatever reads
    records; the processes planning forks inherit it."""

    def __init__(self, kept: KeptChecks | None = None, keep_records: bool = True):
        self.kept = kept or KeptChecks()
        self._parsed: dict[str, tuple[Identity, CompletionRecord | None]] = {}
        # keep_records=False: a reader that reads each record once (the central job's
        # summary over 10,000 MSs) keeps only each record's check, a tenth of its memory.
        self._keep_records = keep_records
        self._checks: dict[str, tuple[Identity, RecordCheck | None]] = {}
        # Thousands of records list the same files: each list is held once.
        self._file_lists: dict[tuple[str, ...], tuple[str, ...]] = {}

    @classmethod
    def load(cls, checks_file: Path) -> RecordStore:
        """A store that trusts what the last run kept in `checks_file`."""
        return cls(KeptChecks.load(checks_file))

    def record(self, output: Path | str) -> CompletionRecord | None:
        """The completion record of an output, or None if there is none or it is unreadable
        (not JSON, another format, or a field that does not fit: the output is then
        pending)."""
        found = self._read(os.path.join(output, RECORD_NAME))
        return None if found is None else found[1]

    def check(self, output: Path | str) -> RecordCheck | None:
        """What the up-to-date check needs of an output's record: kept from an earlier run
        while the record's file is unchanged, else read from the record."""
        path = os.path.join(output, RECORD_NAME)
        try:
            identity = file_identity(os.stat(path))
        except OSError:
            return None
        check = self.kept.check(path, identity)
        if check is not None:
            return check
        seen = self._checks.get(path)
        if seen is not None and seen[0] == identity:
            return seen[1]
        found = self._read(path)
        record = None if found is None else found[1]
        return None if record is None else record.check()

    def _read(self, path: str) -> tuple[Identity, CompletionRecord | None] | None:
        """The record at `path` and the identity of the file it was read from; None if
        there is no file to read."""
        try:
            with open(path) as handle:
                stat = os.fstat(handle.fileno())
                identity = file_identity(stat)
                cached = self._parsed.get(path)
                if cached is not None and cached[0] == identity:
                    return cached
                record = _parse_record(handle.read(), path)
                if _settled(stat) and self._keep_records:
                    self._parsed[path] = (identity, record)
                elif _settled(stat):  # its check only
                    check = None if record is None else self._shared_lists(record.check())
                    self._checks[path] = (identity, check)
                return identity, record
        except (OSError, ValueError):  # ValueError: not text (UnicodeDecodeError)
            return None

    def _shared_lists(self, check: RecordCheck) -> RecordCheck:
        lists = {}
        for name in ("input_files", "output_files", "required_files"):
            files = getattr(check, name)
            if files is not None:
                lists[name] = self._file_lists.setdefault(files, files)
        return replace(check, **lists)

    def keep_checks(
        self, checks_file: Path, outputs: Iterable[Path | str], digest: str | None = None
    ) -> None:
        """Keep the checks of these outputs' records for the next run (`checks_file`),
        rewriting the file only if a record is new or changed since it was loaded. Records
        that have not settled yet are left to a later run.

        `digest`: the records' digest (summary.records_digest), if known: when the file was
        written with the same, no record changed since, and nothing is looked at."""
        if digest is not None and digest == self.kept.digest:
            return
        with without_collections():
            self._keep_checks(checks_file, outputs, digest)

    def _keep_checks(
        self, checks_file: Path, outputs: Iterable[Path | str], digest: str | None
    ) -> None:
        current: list[tuple[str, Identity, RecordCheck]] = []
        changed = False
        for output in outputs:
            path = os.path.join(output, RECORD_NAME)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            identity = file_identity(stat)
            check = self.kept.check(path, identity)
            if check is not None:
                current.append((path, identity, check))
                continue
            if not _settled(stat):
                digest = None  # not the state of every record kept: the next run looks again
                continue
            # Usually parsed already, by this run's summary: no need to open it again.
            seen = self._checks.get(path)
            if seen is not None and seen[0] == identity:
                if seen[1] is not None:
                    current.append((path, identity, seen[1]))
                    changed = True
                continue
            found = self._read(path)
            if found is not None and found[1] is not None and found[0] == identity:
                current.append((path, identity, found[1].check()))
                changed = True
        # A digest not yet noted is worth the write: the next run with the same looks at
        # nothing.
        if changed or digest is not None:
            write_record_checks(checks_file, current, digest)


def record_origin(record: CompletionRecord | None) -> str | None:
    """Which run made a record, for telling whether a record changed hands: its batch, or
    for a record of an earlier version (none named) its `finished` stamp; None without a
    record. Compared for equality only: stamps of two hosts' clocks are never ordered."""
    if record is None:
        return None
    return record.batch_id or f"finished {record.finished}"


def read_record(output: Path | str) -> CompletionRecord | None:
    """One output's record, read on its own (nothing is kept)."""
    return RecordStore().record(output)


def _parse_record(text: str, path: str) -> CompletionRecord | None:
    try:
        return CompletionRecord.from_json(json.loads(text), f"completion record {path}")
    except ValueError:  # not JSON, or ContractError
        return None


def write_record(output: Path, record: CompletionRecord) -> None:
    """Write the record durably: to a temporary name, fsync, then rename into place."""
    temporary = output / f".{RECORD_NAME}.tmp"
    # One text, one write, the same bytes: `json.dump` writes each of a record's ~2,000
    # pieces on its own (0.70 ms of CPU a record with its fsync, against 0.60).
    text = json.dumps(record.to_json(), indent=2)
    with open(temporary, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, output / RECORD_NAME)


def _made_here_or_empty(output: Path) -> bool:
    """Whether replacing what is at `output` loses nothing the workflow did not make: it has
    a record, if a damaged one, or it is an empty directory."""
    if os.path.lexists(os.path.join(output, RECORD_NAME)):
        return True
    try:
        with os.scandir(output) as entries:
            return next(entries, None) is None
    except OSError:  # a file, a link to nowhere
        return False


def missing_required_files(output: Path, record: CompletionRecord | RecordCheck) -> list[str]:
    """Files the record says belong to the output (e.g. a demixer's instrument model) that are
    gone: an output without them is not complete."""
    return [name for name in record.required_files or () if not (output / name).exists()]


# The pending reason of something at an output's path that has no completion record at all.
# The workflow commits an output by renaming a directory that already holds its record, so
# it did not make that (or its record was deleted): it is never replaced (see planning).
NOT_MADE_HERE = "not made by this workflow"


def pending_reason(
    input_ms: Path, output: Path, expected: Expectation, store: RecordStore
) -> str | None:
    """Why an MS must be (re)processed, or None when its output is complete and up to date."""
    check = store.check(output)
    if check is None:
        # Only now is the output's existence asked: up-to-date outputs need no extra stat.
        if not os.path.lexists(output):
            return "missing"
        return "incomplete" if _made_here_or_empty(output) else NOT_MADE_HERE
    if missing_required_files(output, check):
        return "incomplete"
    # The comparisons first, the stat walks of the output and the input last: a changed
    # chain makes every MS pending without walking thousands of files.
    if check.parameters_fingerprint != expected.parameters_fingerprint:
        return "steps changed"
    if check.extra_inputs_fingerprint != expected.extra_inputs_fingerprint:
        return "calibration or sky model file changed"
    if check.dp3_version != expected.dp3_version:
        return "DP3 changed"
    if not output_unchanged(output, check.output_fingerprint, check.output_files):
        return "output changed"
    if not input_unchanged(input_ms, check.input_fingerprint, check.input_files):
        return "input changed"
    return None
