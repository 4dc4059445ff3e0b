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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp3batch.layout import PARSET_NAME, RECORD_NAME, ms_log_file

__all__ = ["PARSET_NAME", "RECORD_NAME", "ms_log_file"]

RECORD_FORMAT = 1

# casacore rewrites lock files when a table is merely opened: they say nothing about content.
_VOLATILE_FILES = {"table.lock"}


# Files of an output that are not DP3's: written after the fingerprint, or by a hand rerun.
_OUTPUT_OWN_FILES = {RECORD_NAME, PARSET_NAME, f".{RECORD_NAME}.tmp"}


def input_fingerprint(path: Path) -> str:
    """A cheap fingerprint of an MS: names, sizes and modification times of all its files.

    Hashing the data would cost minutes per large MS; any rewrite of a casacore table
    changes its files' mtimes, which is what this catches. (os.scandir: a no-op rerun over
    thousands of MSs spends most of its time here.)"""
    return _tree_fingerprint(path, frozenset())


def output_fingerprint(path: Path) -> str:
    """The same walk over an output's own MS files: a deleted, truncated or rewritten table
    file, or a removed subtable, changes it (the record and parset beside them do not count)."""
    return _tree_fingerprint(path, _OUTPUT_OWN_FILES)


def _tree_fingerprint(path: Path, skipped_top_level: frozenset[str] | set[str]) -> str:
    entries: list[str] = []
    # Walked through directory descriptors: each stat is then an fstatat of a bare name, not
    # a lookup of the whole path again (a no-op rerun over 10,000 MSs stats 1.3 million
    # files, and this is most of its time).
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _collect_file_stats(descriptor, "", entries, skipped_top_level)
    finally:
        os.close(descriptor)
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _collect_file_stats(
    directory: int, relative: str, entries: list[str], skipped: frozenset[str] | set[str]
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
                entries.append(f"{relative}{name}:{stat.st_size}:{stat.st_mtime_ns}")


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


# Parsed records by path, with the (inode, size, mtime) they were read at: one run reads each
# record up to three times (pending reason, telescope, summary). A rewritten record is a new
# file (write_record renames); one edited in place gets a new mtime, but file times tick
# coarsely (milliseconds), so only records older than _SETTLED_NS are kept.
_SETTLED_NS = 2_000_000_000
_RECORDS: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}


def read_record(output: Path) -> dict[str, Any] | None:
    """The completion record of an output, or None if there is none or it is unreadable."""
    path = os.path.join(output, RECORD_NAME)
    try:
        with open(path) as handle:
            stat = os.fstat(handle.fileno())
            identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            cached = _RECORDS.get(path)
            if cached is not None and cached[0] == identity:
                record = cached[1]
            else:
                record = _parse_record(handle.read())
                if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS:
                    _RECORDS[path] = (identity, record)
    except (OSError, ValueError):  # ValueError: not text (UnicodeDecodeError)
        return None
    return dict(record) if record is not None else None


def _parse_record(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def write_record(output: Path, record: dict[str, Any]) -> None:
    """Write the record durably: to a temporary name, fsync, then rename into place."""
    record = {"format": RECORD_FORMAT, **record}
    temporary = output / f".{RECORD_NAME}.tmp"
    with open(temporary, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, output / RECORD_NAME)


def missing_required_files(output: Path, record: dict[str, Any]) -> list[str]:
    """Files the record says belong to the output (e.g. a demixer's instrument model) that are
    gone: an output without them is not complete."""
    required = record.get("required_files") or []
    if not isinstance(required, list):
        return ["(unreadable required_files)"]
    return [name for name in required if not (output / str(name)).exists()]


def pending_reason(input_ms: Path, output: Path, expected: Expectation) -> str | None:
    """Why an MS must be (re)processed, or None when its output is complete and up to date."""
    record = read_record(output)
    if record is None:
        # Only now is the output's existence asked: up-to-date outputs need no extra stat.
        return "incomplete" if os.path.exists(output) else "missing"
    if missing_required_files(output, record):
        return "incomplete"
    if record.get("output_fingerprint") != output_fingerprint(output):
        return "output changed"
    if record.get("parameters_fingerprint") != expected.parameters_fingerprint:
        return "steps changed"
    if record.get("extra_inputs_fingerprint") != expected.extra_inputs_fingerprint:
        return "calibration or sky model file changed"
    if record.get("dp3_version") != expected.dp3_version:
        return "DP3 changed"
    if record.get("input_fingerprint") != input_fingerprint(input_ms):
        return "input changed"
    return None
