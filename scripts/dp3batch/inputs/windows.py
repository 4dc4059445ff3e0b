"""Spectral windows: DP3 reads one per run (`msin.band`), so an MS of several is several items.

A band is what DP3's `msin.band` selects: the rows with that DATA_DESC_ID (DP3 says "Band k
not found" when there are none, and refuses rows of several bands read together: "The MS
appears to have multiple subbands"). The bands of an MS are the DATA_DESC_IDs its rows use.

Naming: an MS with one band keeps `NAME.ms`; one with bands 0 and 1 gives `NAME_spw0.ms`
and `NAME_spw1.ms`, each its own work item (pending reason, task, log, record, summary row).
An explicit `msin.band` in the steps selects that band only, and the output is `NAME.ms`.

Finding the bands means opening tables, too slow for a no-op rerun over thousands of MSs,
so a completion record keeps them (`windows`) with a fingerprint of what they were read
from; a rerun trusts the record while that fingerprint holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp3batch.books.fingerprints import input_fingerprint, input_unchanged, tree_unchanged
from dp3batch.books.record_checks import RecordCheck
from dp3batch.books.records import RecordStore
from dp3batch.config.errors import ConfigError
from dp3batch.inputs.tables import open_subtable, read_table, write_lock_holder

WINDOW_SUFFIX = "_spw"
DESCRIPTION_TABLE = "DATA_DESCRIPTION"


@dataclass(frozen=True)
class Windows:
    """The spectral windows of an MS as DP3 numbers them."""

    descriptions: int  # rows of DATA_DESCRIPTION
    bands: tuple[int, ...]  # the DATA_DESC_IDs the main table's rows use, ascending

    @property
    def several(self) -> bool:
        return len(self.bands) > 1

    def band_of_single(self) -> int | None:
        """The `msin.band` a one-band MS needs: none when DATA_DESCRIPTION has one row (DP3
        reads it by default), else its band (DP3 would take row 0's window for its data)."""
        if self.descriptions <= 1 or len(self.bands) != 1:
            return None
        return self.bands[0]


def window_name(name: str, band: int) -> str:
    """`obs` and band 1 → `obs_spw1` (the output `obs_spw1.ms`, the log `obs_spw1.log`)."""
    return f"{name}{WINDOW_SUFFIX}{band}"


def read_windows(path: str | Path) -> Windows:
    """Open the MS: DATA_DESCRIPTION's rows, and (only if there are several) which the main
    table's rows use. The caller checks first that no other process holds it locked."""
    import numpy as np

    with open_subtable(path, DESCRIPTION_TABLE) as description:
        descriptions = description.nrows()
    if descriptions <= 1:
        return Windows(descriptions, (0,) if descriptions else ())
    with read_table(str(path)) as table:
        used = np.unique(table.getcol("DATA_DESC_ID")) if table.nrows() else []
    return Windows(descriptions, tuple(int(band) for band in used))


def description_fingerprint(path: str | Path) -> str:
    """What the bands of a one-description MS depend on: DATA_DESCRIPTION's files."""
    return input_fingerprint(Path(path) / DESCRIPTION_TABLE)


def windows_record(path: str | Path) -> dict[str, Any]:
    """The `windows` entry of a completion record: the bands and what they were read from."""
    windows = read_windows(path)
    return {
        "descriptions": windows.descriptions,
        "bands": list(windows.bands),
        "description_fingerprint": description_fingerprint(path),
    }


def windows_from_record(record: RecordCheck | None, input_path: Path) -> Windows | None:
    """The bands a completion record of this input knows, if they still hold, else None.

    One DATA_DESCRIPTION row means one band whatever the rows say: its files' fingerprint
    suffices (a stat of a few files). With several, the rows decide: the whole input must be
    unchanged (its fingerprint equals the record's)."""
    if record is None or record.input != str(input_path):
        return None
    entry = record.windows
    if not isinstance(entry, Mapping):
        return None
    descriptions, bands = entry.get("descriptions"), entry.get("bands")
    if not isinstance(descriptions, int) or not isinstance(bands, list):
        return None
    if not all(isinstance(band, int) for band in bands):
        return None
    if not _description_unchanged(record, input_path, entry.get("description_fingerprint")):
        return None
    if descriptions > 1 and not input_unchanged(
        input_path, record.input_fingerprint, record.input_files
    ):
        return None
    return Windows(descriptions, tuple(bands))


def _description_unchanged(record: RecordCheck, input_path: Path, fingerprint: Any) -> bool:
    """Whether DATA_DESCRIPTION still has its `description_fingerprint`: by a stat of its
    files the record lists (no listing of the directory)."""
    files = None
    if record.input_files is not None:
        prefix = f"{DESCRIPTION_TABLE}/"
        files = [name[len(prefix) :] for name in record.input_files if name.startswith(prefix)]
    known = fingerprint if isinstance(fingerprint, str) else None
    # Joined as text: planning does this for every MS of a rerun.
    description = os.path.join(input_path, DESCRIPTION_TABLE)
    return tree_unchanged(description, known, files, input_fingerprint)


_WINDOW_OUTPUT = re.compile(rf"^(?P<name>.+){WINDOW_SUFFIX}[0-9]+\.ms$")


def outputs_by_name(output_dir: Path, names: set[str]) -> dict[str, list[Path]]:
    """The outputs already in `output_dir` of each MS name, `NAME.ms` first: one listing of
    the directory, so that a rerun over thousands of MSs stays cheap."""
    try:
        entries = sorted(os.listdir(output_dir))
    except OSError:
        return {}
    found: dict[str, list[Path]] = {}
    for entry in entries:
        if entry.endswith(".ms") and entry[: -len(".ms")] in names:
            found.setdefault(entry[: -len(".ms")], []).insert(0, output_dir / entry)
        match = _WINDOW_OUTPUT.match(entry)
        if match and match.group("name") in names:
            found.setdefault(match.group("name"), []).append(output_dir / entry)
    return found


def known_windows(input_path: Path, outputs: list[Path], store: RecordStore) -> Windows | None:
    """The windows of an MS: from a completion record of one of its outputs while it holds,
    else read from the MS (None when another process holds it locked for writing: it stays
    one item, whose task then fails alone, naming the lock)."""
    for output in outputs:
        windows = windows_from_record(store.check(output), input_path)
        if windows is not None:
            return windows
    if write_lock_holder(input_path) is not None:
        return None
    try:
        return read_windows(input_path)
    except Exception as error:  # casacore raises RuntimeError and friends: all mean unreadable
        raise ConfigError(
            f"inputs: {input_path} cannot be read as a MeasurementSet: {str(error).strip()}"
        ) from error
