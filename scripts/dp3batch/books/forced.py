"""MSs a forced run (`snakemake -F`, `-R process_measurement_sets`) did not finish.

A forced MS has a valid output already, so without a note the next plain run would find it
up to date and process nothing: "run again to process the remaining MSs" would be false
after Ctrl-C, a lost cluster or a failure. The central job notes them (under the output
directory's lock) in `<output_dir>/.forced-unfinished.json`, and the next run's planning
processes each again until an output made after the force stands (reason
FORCED_EARLIER). The note holds only what is still owed, and goes when nothing is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from dp3batch.books.codec import ContractError, from_json, to_json

# The reason of an MS processed again only because Snakemake's -F or -R said so.
FORCED = "forced"
# ... because an earlier forced run did not finish it.
FORCED_EARLIER = "forced by an earlier run that did not finish it"


def is_forced(reason: str) -> bool:
    """Whether a pending reason is a force (a lock may be noted after it: `forced; LOCKED`)."""
    return reason.split(";", 1)[0].strip() in (FORCED, FORCED_EARLIER)


@dataclass(frozen=True)
class ForcedItem:
    """One MS a forced batch did not finish: pending until an output made after
    `forced_at` (the forcing batch's planning time, as its records' `finished`) stands."""

    name: str
    output: str
    forced_at: str

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "a forced MS") -> ForcedItem:
        return from_json(cls, data, what)

    def owed(self, record_finished: str | None) -> bool:
        """Still to be processed: no output made since the force."""
        return record_finished is None or record_finished < self.forced_at


@dataclass(frozen=True)
class ForcedNote:
    JSON_FORMAT: ClassVar[int] = 1

    items: tuple[ForcedItem, ...]

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "forced note") -> ForcedNote:
        return from_json(cls, data, what)


def read_forced_note(path: Path) -> dict[str, ForcedItem]:
    """Output path → its item. A missing or unreadable note is empty: it only ever adds work,
    and losing it costs the user a `-F` again, never an output."""
    try:
        note = ForcedNote.from_json(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, ContractError):
        return {}
    return {item.output: item for item in note.items}


def write_forced_note(path: Path, items: Iterable[ForcedItem]) -> None:
    """Replace the note (atomically), or remove it when nothing is owed."""
    items = tuple(sorted(items, key=lambda item: item.name))
    if not items:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(ForcedNote(items).to_json(), indent=1) + "\n")
    temporary.replace(path)
