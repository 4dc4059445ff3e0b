"""The status of an MS in a run, as the summary, the report and the terminal show it.

A `StrEnum`: its members are the strings written to JSON and TSV, so a result read back
from a file compares equal to them."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    DONE = "done"  # processed and committed by this run
    UP_TO_DATE = "up to date"  # complete from an earlier run
    FAILED = "failed"  # DP3, the output check or the worker failed
    NOT_PROCESSED = "not processed"  # the batch ended (or has not run) before it

    @property
    def complete(self) -> bool:
        return self in (Status.DONE, Status.UP_TO_DATE)
