"""What a rerun checks of each completion record, kept between runs (`.record-checks.json`).

A no-op rerun over 10,000 MSs would otherwise open, read and parse every record: 60 µs
each, a fifth of its pass. The file keeps, for each record, the fields the up-to-date check
reads (`RecordCheck`), beside the identity of the record's file when they were read: device,
inode, size, modification and change time. A record whose file still has that identity is
the record they were read from, so it is not read again. A record rewritten by the workflow
is a new file (a rename); one edited in place gets a new change time, which no call that
sets file times can set back. Only records that had settled (see `completion.SETTLED_NS`)
are kept: file times tick coarsely, so an edit in the same tick as the write would go
unseen.

The file is a cache: when it is missing, unreadable or of another format, every record is
read as before. It is JSON, never code (pickle would run whatever a writer of the output
directory put there), and each entry is checked for its types when it is used.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKS_FORMAT = 1

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a record file.
Identity = tuple[int, int, int, int, int]


def file_identity(stat: os.stat_result) -> Identity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass(frozen=True)
class RecordCheck:
    """The fields of a completion record that decide whether its output is up to date,
    and which windows its input has (see completion.pending_reason, windows)."""

    input: str
    windows: Mapping[str, Any] | None
    required_files: tuple[str, ...] | None
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    dp3_version: str
    telescope: str | None
    output_fingerprint: str | None
    output_files: tuple[str, ...] | None
    input_fingerprint: str
    input_files: tuple[str, ...] | None


class KeptChecks:
    """The file as loaded: record path -> its entry as read (checked when asked, see
    `check`), the lists of file names the entries share, and the records' digest it was
    written with. A missing or unreadable file is an empty one."""

    def __init__(
        self,
        entries: dict[str, list[Any]] | None = None,
        file_lists: list[Any] | None = None,
        digest: str | None = None,
    ):
        self._entries = entries or {}
        self._file_lists = file_lists or []
        self._checked_file_lists: dict[int, tuple[str, ...]] = {}
        # Each check as built from its entry: planning asks for an output's check up to
        # three times in its pass (windows, telescope, pending reason).
        self._built: dict[str, tuple[Identity, RecordCheck]] = {}
        # The records' digest (summary.records_digest) the file was written with.
        self.digest = digest

    @classmethod
    def load(cls, path: Path) -> KeptChecks:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict) or data.get("format") != CHECKS_FORMAT:
            return cls()
        entries, file_lists = data.get("entries"), data.get("file_lists")
        digest = data.get("digest")
        if not isinstance(entries, dict) or not isinstance(file_lists, list):
            return cls()
        return cls(entries, file_lists, digest if isinstance(digest, str) else None)

    def check(self, record_path: str, identity: Identity) -> RecordCheck | None:
        """The check kept for this record file, if it was kept for this very identity."""
        built = self._built.get(record_path)
        if built is not None and built[0] == identity:
            return built[1]
        entry = self._entries.get(record_path)
        if entry is None:
            return None
        try:
            if tuple(entry[:5]) != identity:
                return None
            check = self._check_from_entry(entry[5:])
        except (TypeError, ValueError, IndexError):  # not an entry this version wrote
            return None
        self._built[record_path] = (identity, check)
        return check

    def _check_from_entry(self, entry: list[Any]) -> RecordCheck:
        (
            input_path,
            windows,
            required_files,
            parameters_fingerprint,
            extra_inputs_fingerprint,
            dp3_version,
            telescope,
            output_fingerprint,
            output_files,
            input_fingerprint,
            input_files,
        ) = entry
        check = RecordCheck(
            input=input_path,
            windows=windows,
            required_files=None if required_files is None else tuple(required_files),
            parameters_fingerprint=parameters_fingerprint,
            extra_inputs_fingerprint=extra_inputs_fingerprint,
            dp3_version=dp3_version,
            telescope=telescope,
            output_fingerprint=output_fingerprint,
            output_files=self._file_list(output_files),
            input_fingerprint=input_fingerprint,
            input_files=self._file_list(input_files),
        )
        _check_types(check)
        return check

    def _file_list(self, index: int | None) -> tuple[str, ...] | None:
        if index is None:
            return None
        files = self._checked_file_lists.get(index)
        if files is None:
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError("not a file list")
            files = tuple(self._file_lists[index])
            if not set(map(type, files)) <= {str}:
                raise ValueError("not a list of names")
            # Checked once: thousands of entries share it.
            self._checked_file_lists[index] = files
        return files


@contextlib.contextmanager
def without_collections() -> Iterator[None]:
    """No garbage collection while the checks of 10,000 records are built: they hold no
    cycles, and the collector's passes over the heap of the process that builds them
    (Snakemake's) cost more than building them (measured: 0.5 s against 0.2 s)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def write_record_checks(
    path: Path, checks: Iterable[tuple[str, Identity, RecordCheck]], digest: str | None
) -> None:
    """Replace the file by these checks (record path, identity, check), noting the records'
    `digest` if known. Written beside it and renamed: a reader sees the old file or the new
    one. A failure to write is no error: the next run reads the records instead."""
    text = _checks_json(checks, digest)
    temporary = path.with_name(f"{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:  # a full disk: no half-written copy is left to take space
        with contextlib.suppress(OSError):
            temporary.unlink()


def _checks_json(checks: Iterable[tuple[str, Identity, RecordCheck]], digest: str | None) -> str:
    file_lists: dict[tuple[str, ...], int] = {}

    def listed(files: tuple[str, ...] | None) -> int | None:
        # Thousands of MSs share a few layouts: each list of names is written once.
        return None if files is None else file_lists.setdefault(files, len(file_lists))

    entries = {
        record_path: [
            *identity,
            check.input,
            check.windows,
            None if check.required_files is None else list(check.required_files),
            check.parameters_fingerprint,
            check.extra_inputs_fingerprint,
            check.dp3_version,
            check.telescope,
            check.output_fingerprint,
            listed(check.output_files),
            check.input_fingerprint,
            listed(check.input_files),
        ]
        for record_path, identity, check in checks
    }
    data = {
        "format": CHECKS_FORMAT,
        "digest": digest,
        "file_lists": list(file_lists),
        "entries": entries,
    }
    return json.dumps(data, separators=(",", ":"))


_TEXT = (
    "input",
    "parameters_fingerprint",
    "extra_inputs_fingerprint",
    "dp3_version",
    "input_fingerprint",
)
_OPTIONAL_TEXT = ("telescope", "output_fingerprint")


def _check_types(check: RecordCheck) -> None:
    """The types `CompletionRecord.from_json` would have insisted on."""
    if not all(isinstance(getattr(check, name), str) for name in _TEXT):
        raise ValueError("not text")
    if not all(isinstance(getattr(check, name), str | None) for name in _OPTIONAL_TEXT):
        raise ValueError("not text")
    if not isinstance(check.windows, dict | None):
        raise ValueError("windows not an object")
    if check.required_files is not None and not set(map(type, check.required_files)) <= {str}:
        raise ValueError("not a list of names")
