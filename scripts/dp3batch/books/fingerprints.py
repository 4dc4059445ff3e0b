"""Completion records and pending reasons: when is an output done, and why is it not.

An output `<name>.ms` is complete only when it holds a valid completion record
(`RECORD_NAME`). The record is written into the temporary output as the last step, and the
temporary directory is renamed to the final path afterwards, so the final path never holds a
partial MS (DP3 creates its output before processing; its existence proves nothing).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dp3batch.books.layout import PARSET_NAME, RECORD_NAME
from dp3batch.books.native_stat import native_stat_lines

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
    # Bytes of every file in the tree, those the fingerprint leaves out included (an
    # output's size, for its record: a second walk took 0.3-0.7 ms of a small MS's task).
    total_bytes: int = 0


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
        total_bytes = _collect_file_stats(descriptor, "", entries, skipped_top_level)
    finally:
        os.close(descriptor)
    # Sorted by line, as the records written so far were (`table.f10:` sorts before
    # `table.f1:`); the order depends on the names alone, so the files keep it.
    entries.sort(key=lambda entry: entry[1])
    return TreeFingerprint(
        _digest(line for _, line in entries), tuple(name for name, _ in entries), total_bytes
    )


def _digest(lines: Iterable[str]) -> str:
    # A name's bytes as they are on disk: one that is not UTF-8 text (a byte Python keeps as
    # a surrogate) has a line too, where a plain `encode()` would refuse it.
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _collect_file_stats(
    directory: int,
    relative: str,
    entries: list[tuple[str, str]],
    skipped: frozenset[str] | set[str],
) -> int:
    """Appends (path, line) for each file the fingerprint covers; returns the bytes of every
    regular file under `directory` (as `du --apparent-size` counts them, links not followed)."""
    total_bytes = 0
    with os.scandir(directory) as scan:
        for entry in scan:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                subdirectory = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
                try:
                    total_bytes += _collect_file_stats(
                        subdirectory, f"{relative}{name}/", entries, frozenset()
                    )
                finally:
                    os.close(subdirectory)
                continue
            if entry.is_file(follow_symlinks=False):
                # For a regular file, the one lstat DirEntry caches serves `stat()` as well.
                total_bytes += entry.stat(follow_symlinks=False).st_size
            if name not in _VOLATILE_FILES and name not in skipped:
                stat = entry.stat()
                path = f"{relative}{name}"
                entries.append((path, f"{path}:{stat.st_size}:{stat.st_mtime_ns}"))
    return total_bytes


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
        native = native_stat_lines()
        packed = None if native is None else _packed_names(files, wrapped)
        if native is not None and packed is not None:
            text = native(descriptor, packed, len(files))
            return None if text is None else hashlib.sha256(text).hexdigest()
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


def _packed_names(files: list[str], joined: str) -> bytes | None:
    """The names for C, each ended by a NUL; None where C cannot stat them as Python would:
    a NUL in a name (os.stat refuses it), or text that is not UTF-8 as it stands
    (undecodable bytes kept as surrogates). `joined`: the names joined by anything."""
    if "\0" in joined:
        return None
    try:
        return "\0".join(files).encode() + b"\0"
    except UnicodeEncodeError:
        return None


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


def extra_inputs_fingerprint(files: list[tuple[str, str]]) -> str:
    """One fingerprint over the contents of every extra input file (missing ones included)."""
    digest = hashlib.sha256()
    for key, path in files:
        content = file_fingerprint(path) if os.path.isfile(path) else "missing"
        digest.update(f"{key}:{content}\n".encode())
    return digest.hexdigest()
