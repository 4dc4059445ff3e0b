"""Completion records and pending reasons: when is an output done, and why is it not.

An output `<name>.ms` is complete only when it holds a valid completion record
(`RECORD_NAME`). The record is written into the temporary output as the last step, and the
temporary directory is renamed to the final path afterwards, so the final path never holds a
partial MS (DP3 creates its output before processing; its existence proves nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp3batch.json_fields import ContractError, Fields, Parameters, parameters_to_json
from dp3batch.layout import PARSET_NAME, RECORD_NAME, ms_log_file
from dp3batch.record_checks import (
    Identity,
    RecordCheck,
    file_identity,
    known_check,
    loaded_digest,
    without_collections,
    write_record_checks,
)

__all__ = ["PARSET_NAME", "RECORD_NAME", "ms_log_file"]

RECORD_FORMAT = 1

# casacore rewrites lock files when a table is merely opened: they say nothing about content.
_VOLATILE_FILES = {"table.lock"}


# Files of an output that are not DP3's: written after the fingerprint, or by a hand rerun.
_OUTPUT_OWN_FILES = {RECORD_NAME, PARSET_NAME, f".{RECORD_NAME}.tmp"}


def input_fingerprint(path: Path) -> str:
    """A cheap fingerprint of an MS: names, sizes and modification times of all its files.

    Hashing the data would cost minutes per large MS; any rewrite of a casacore table
    changes its files' mtimes, which is what this catches."""
    return input_tree(path).fingerprint


def output_fingerprint(path: Path) -> str:
    """The same walk over an output's own MS files: a deleted, truncated or rewritten table
    file, or a removed subtable, changes it (the record and parset beside them do not count)."""
    return output_tree(path).fingerprint


@dataclass(frozen=True)
class TreeFingerprint:
    """The fingerprint of a directory tree, and the files (relative paths) it covers: a
    record keeps both, so that a rerun checks the same files again by name (`listed_fingerprint`)
    instead of listing every directory."""

    fingerprint: str
    files: tuple[str, ...]


def input_tree(path: Path) -> TreeFingerprint:
    return _tree_fingerprint(path, frozenset())


def output_tree(path: Path) -> TreeFingerprint:
    return _tree_fingerprint(path, _OUTPUT_OWN_FILES)


def _tree_fingerprint(path: Path, skipped_top_level: frozenset[str] | set[str]) -> TreeFingerprint:
    entries: list[tuple[str, str]] = []
    # Walked through directory descriptors: each stat is then an fstatat of a bare name, not
    # a lookup of the whole path again.
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _collect_file_stats(descriptor, "", entries, skipped_top_level)
    finally:
        os.close(descriptor)
    # Sorted by line, as the records written so far were (`table.f10:` sorts before
    # `table.f1:`); the order depends on the names alone, so the files keep it.
    entries.sort(key=lambda entry: entry[1])
    return TreeFingerprint(_digest(line for _, line in entries), tuple(name for name, _ in entries))


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _collect_file_stats(
    directory: int,
    relative: str,
    entries: list[tuple[str, str]],
    skipped: frozenset[str] | set[str],
) -> None:
    with os.scandir(directory) as scan:
        for entry in scan:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                subdirectory = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
                try:
                    _collect_file_stats(subdirectory, f"{relative}{name}/", entries, frozenset())
                finally:
                    os.close(subdirectory)
            elif name not in _VOLATILE_FILES and name not in skipped:
                stat = entry.stat()
                path = f"{relative}{name}"
                entries.append((path, f"{path}:{stat.st_size}:{stat.st_mtime_ns}"))


def listed_fingerprint(path: Path | str, files: Iterable[str]) -> str | None:
    """The fingerprint of `path` over the given files (relative paths, in the order a
    `TreeFingerprint` lists them), by a stat of each: None when one is gone.

    Equal to the walk's value as long as no file was added. A file added beside them changes
    nothing casacore reads unless a listed file changes too (a table's `table.dat` names its
    columns' files and its subtables). Listing the directories is what a walk costs most:
    a no-op rerun over 10,000 MSs does this for every input and output."""
    files = list(files)
    # Names are relative and stay inside the tree: no record of ours lists another.
    wrapped = f"/{'/'.join(files)}/"
    if "/../" in wrapped or "//" in wrapped:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        # Through links, as the walk's `DirEntry.stat()`.
        lines = [
            f"{name}:{stat.st_size}:{stat.st_mtime_ns}"
            for name in files
            for stat in (os.stat(name, dir_fd=descriptor),)
        ]
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return _digest(lines)


def input_unchanged(path: Path | str, fingerprint: str, files: Iterable[str] | None) -> bool:
    """Whether an input still has the `fingerprint` its record holds."""
    return tree_unchanged(path, fingerprint, files, input_fingerprint)


def output_unchanged(
    path: Path | str, fingerprint: str | None, files: Iterable[str] | None
) -> bool:
    """Whether an output's own files still have the `fingerprint` its record holds."""
    return tree_unchanged(path, fingerprint, files, output_fingerprint)


def tree_unchanged(
    path: Path | str,
    fingerprint: str | None,
    files: Iterable[str] | None,
    walk: Callable[[Path], str],
) -> bool:
    """Whether the tree at `path` still has a recorded `fingerprint`: by the files the record
    lists, else (records of earlier versions) by `walk`."""
    if fingerprint is None:
        return False
    if files is not None:
        return listed_fingerprint(path, files) == fingerprint
    try:
        return walk(Path(path)) == fingerprint
    except OSError:
        return False


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a small extra input (H5Parm, sky model, strategy)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parameters_fingerprint(
    parameters: list[tuple[str, str]], file_keys: set[str] | frozenset[str] = frozenset()
) -> str:
    """Fingerprint of the result-defining parameters. Files count by content (see
    `extra_inputs_fingerprint`), not by path, so moving them changes nothing."""
    text = "\n".join(
        f"{key}=<file>" if key in file_keys else f"{key}={value}" for key, value in parameters
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Expectation:
    """What a completion record must agree with for its output to count as up to date."""

    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    dp3_version: str


def extra_inputs_fingerprint(files: list[tuple[str, str]]) -> str:
    """One fingerprint over the contents of every extra input file (missing ones included)."""
    digest = hashlib.sha256()
    for key, path in files:
        content = file_fingerprint(path) if os.path.isfile(path) else "missing"
        digest.update(f"{key}:{content}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class CompletionRecord:
    """How an output was made: written into it last (`RECORD_NAME`), read back to decide
    whether it is still up to date, and by the summary and the report.

    Fields that older versions of the workflow did not write are optional: such a record
    still reads, and its output is pending for the reason it always was. Nested objects
    (shapes, windows, flag counts) are other modules' JSON, kept as read and never changed
    in place (a read record is shared: see `read_record`)."""

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

    def to_json(self) -> dict[str, Any]:
        """The record as it is written: `format` first, then every field in order."""
        return {
            "format": RECORD_FORMAT,
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "input_fingerprint": self.input_fingerprint,
            "band": self.band,
            "windows": self.windows,
            "parameters": parameters_to_json(self.parameters),
            "parameters_fingerprint": self.parameters_fingerprint,
            "extra_inputs_fingerprint": self.extra_inputs_fingerprint,
            "dp3_version": self.dp3_version,
            "telescope": self.telescope,
            "stations": _list_or_none(self.stations),
            "aoflagger_strategies": self.aoflagger_strategies,
            "dp3_executable": self.dp3_executable,
            "dp3_arguments": list(self.dp3_arguments),
            "worker": self.worker,
            "numthreads": self.numthreads,
            "started": self.started,
            "finished": self.finished,
            "duration_seconds": self.duration_seconds,
            "size_estimate_bytes": self.size_estimate_bytes,
            "shape_before": self.shape_before,
            "shape_after": self.shape_after,
            "shape_expected": self.shape_expected,
            "required_files": _list_or_none(self.required_files),
            "output_bytes": self.output_bytes,
            "step_seconds": self.step_seconds,
            "flags_by_step": self.flags_by_step,
            "output_fingerprint": self.output_fingerprint,
            "input_files": _list_or_none(self.input_files),
            "output_files": _list_or_none(self.output_files),
        }

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
        fields = Fields(data, what)
        if fields.data.get("format") != RECORD_FORMAT:
            raise ContractError(
                f"{what}: format {fields.data.get('format')!r} is not {RECORD_FORMAT}"
            )
        return cls(
            name=fields.text("name"),
            input=fields.text("input"),
            output=fields.text("output"),
            input_fingerprint=fields.text("input_fingerprint"),
            band=fields.optional_integer("band"),
            windows=fields.optional_mapping("windows"),
            parameters=fields.parameters("parameters"),
            parameters_fingerprint=fields.text("parameters_fingerprint"),
            extra_inputs_fingerprint=fields.text("extra_inputs_fingerprint"),
            dp3_version=fields.text("dp3_version"),
            telescope=fields.optional_text("telescope"),
            stations=fields.optional_strings("stations"),
            aoflagger_strategies=fields.optional_mapping("aoflagger_strategies"),
            dp3_executable=fields.text("dp3_executable"),
            dp3_arguments=fields.strings("dp3_arguments"),
            worker=fields.text("worker"),
            numthreads=fields.integer("numthreads"),
            started=fields.text("started"),
            finished=fields.text("finished"),
            duration_seconds=fields.number("duration_seconds"),
            size_estimate_bytes=fields.optional_integer("size_estimate_bytes"),
            shape_before=fields.mapping("shape_before"),
            shape_after=fields.mapping("shape_after"),
            shape_expected=fields.optional_mapping("shape_expected"),
            required_files=fields.optional_strings("required_files"),
            output_bytes=fields.optional_integer("output_bytes"),
            step_seconds=fields.optional_mapping("step_seconds"),
            flags_by_step=fields.optional_mapping("flags_by_step"),
            output_fingerprint=fields.optional_text("output_fingerprint"),
            input_files=fields.optional_strings("input_files"),
            output_files=fields.optional_strings("output_files"),
        )


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


# Parsed records by path, with the identity of the file they were read from (see
# record_checks.file_identity): one run reads each record up to three times (pending reason,
# telescope, summary). A rewritten record is a new file (write_record renames); one edited in
# place gets a new change time, but file times tick coarsely (milliseconds), so only records
# older than SETTLED_NS are kept. The records are frozen, so every reader shares the one parsed.
SETTLED_NS = 2_000_000_000
_RECORDS: dict[str, tuple[Identity, CompletionRecord | None]] = {}


def read_record(output: Path | str) -> CompletionRecord | None:
    """The completion record of an output, or None if there is none or it is unreadable
    (not JSON, another format, or a field that does not fit: the output is then pending)."""
    found = _read_record_file(os.path.join(output, RECORD_NAME))
    return None if found is None else found[1]


def _read_record_file(path: str) -> tuple[Identity, CompletionRecord | None] | None:
    """The record at `path` and the identity of the file it was read from; None if there
    is no file to read."""
    try:
        with open(path) as handle:
            stat = os.fstat(handle.fileno())
            identity = file_identity(stat)
            cached = _RECORDS.get(path)
            if cached is not None and cached[0] == identity:
                return cached
            record = _parse_record(handle.read(), path)
            if _settled(stat):
                _RECORDS[path] = (identity, record)
            return identity, record
    except (OSError, ValueError):  # ValueError: not text (UnicodeDecodeError)
        return None


def _settled(stat: os.stat_result) -> bool:
    # Any write sets the modification time to now: a file modified long ago cannot be
    # written again without its identity changing.
    return time.time_ns() - stat.st_mtime_ns > SETTLED_NS


def read_check(output: Path | str) -> RecordCheck | None:
    """What the up-to-date check needs of an output's record: kept from an earlier run while
    the record's file is unchanged (see record_checks), else read from the record."""
    path = os.path.join(output, RECORD_NAME)
    try:
        identity = file_identity(os.stat(path))
    except OSError:
        return None
    check = known_check(path, identity)
    if check is not None:
        return check
    found = _read_record_file(path)
    record = None if found is None else found[1]
    return None if record is None else record.check()


def refresh_record_checks(
    checks_file: Path, outputs: Iterable[Path | str], digest: str | None = None
) -> None:
    """Keep the checks of these outputs' records for the next run (`checks_file`, as read by
    `load_record_checks` before this run's pass), rewriting the file only if a record is
    new or changed since. Records that have not settled yet are left to a later run.

    `digest`: the records' digest (summary.records_digest), if known: when the file was
    written with the same, no record changed since, and nothing is looked at."""
    if digest is not None and digest == loaded_digest():
        return
    with without_collections():
        _refresh_record_checks(checks_file, outputs, digest)


def _refresh_record_checks(
    checks_file: Path, outputs: Iterable[Path | str], digest: str | None
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
        check = known_check(path, identity)
        if check is not None:
            current.append((path, identity, check))
            continue
        if not _settled(stat):
            digest = None  # not the state of every record kept: the next run looks again
            continue
        # Usually parsed already, by this run's summary: no need to open it again.
        found = _RECORDS.get(path)
        if found is None or found[0] != identity:
            found = _read_record_file(path)
        if found is not None and found[1] is not None and found[0] == identity:
            current.append((path, identity, found[1].check()))
            changed = True
    # A digest not yet noted is worth the write: the next run with the same looks at nothing.
    if changed or digest is not None:
        write_record_checks(checks_file, current, digest)


def _parse_record(text: str, path: str) -> CompletionRecord | None:
    try:
        return CompletionRecord.from_json(json.loads(text), f"completion record {path}")
    except ValueError:  # not JSON, or ContractError
        return None


def write_record(output: Path, record: CompletionRecord) -> None:
    """Write the record durably: to a temporary name, fsync, then rename into place."""
    temporary = output / f".{RECORD_NAME}.tmp"
    with open(temporary, "w") as handle:
        json.dump(record.to_json(), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, output / RECORD_NAME)


def missing_required_files(output: Path, record: CompletionRecord | RecordCheck) -> list[str]:
    """Files the record says belong to the output (e.g. a demixer's instrument model) that are
    gone: an output without them is not complete."""
    return [name for name in record.required_files or () if not (output / name).exists()]


def pending_reason(input_ms: Path, output: Path, expected: Expectation) -> str | None:
    """Why an MS must be (re)processed, or None when its output is complete and up to date."""
    check = read_check(output)
    if check is None:
        # Only now is the output's existence asked: up-to-date outputs need no extra stat.
        return "incomplete" if os.path.exists(output) else "missing"
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
