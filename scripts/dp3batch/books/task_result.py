"""The result of one MS's task, as the central job reports it: made on the worker
(`execution.process_measurement_set`), for a task that returned none (`dispatch.lost_result`),
or from an output's completion record; written into the batch marker with `to_json()` and
read back from it (`rules/common.smk`) with `from_json()`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from dp3batch.books.codec import ContractError, from_json, to_json
from dp3batch.books.records import CompletionRecord
from dp3batch.books.status import Status

# The keys of a record's flag statistics that name its flagging report's files.
FLAGGING_REPORT_FILES = ("png", "zarr")


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """What became of one MS. A done result carries what its completion record says about
    the run; a failed one why (`reason`) and DP3's most telling line (`error`). Fields that do
    not apply are None, and left out of the JSON."""

    JSON_OMITS_NONE: ClassVar[bool] = True

    name: str
    input: str
    output: str
    log: str
    worker: str | None = None
    numthreads: int | None = None
    started: str | None = None
    status: Status
    reason: str | None = None
    error: str | None = None
    finished: str | None = None
    duration_seconds: float | None = None
    size_estimate_bytes: int | None = None
    shape_before: Mapping[str, Any] | None = None
    shape_after: Mapping[str, Any] | None = None
    output_bytes: int | None = None
    step_seconds: Mapping[str, float] | None = None
    flags_by_step: Mapping[str, Any] | None = None
    stations: tuple[str, ...] | None = None
    dp3_version: str | None = None
    # DP3's peak resident memory, also of a DP3 that failed or was killed.
    peak_memory_bytes: int | None = None
    # DP3's CPU time (user + system), also of a DP3 that failed or was killed.
    dp3_cpu_seconds: float | None = None
    flag_statistics: Mapping[str, Any] | None = None

    @classmethod
    def from_record(cls, record: CompletionRecord, log: str) -> TaskResult:
        """The result of an MS whose output this batch committed, from its record."""
        return cls(
            name=record.name,
            input=record.input,
            output=record.output,
            log=log,
            worker=record.worker,
            numthreads=record.numthreads,
            started=record.started,
            status=Status.DONE,
            finished=record.finished,
            duration_seconds=record.duration_seconds,
            size_estimate_bytes=record.size_estimate_bytes,
            shape_before=record.shape_before,
            shape_after=record.shape_after,
            output_bytes=record.output_bytes,
            step_seconds=record.step_seconds,
            flags_by_step=record.flags_by_step,
            stations=record.stations,
            dp3_version=record.dp3_version,
            peak_memory_bytes=record.peak_memory_bytes,
            dp3_cpu_seconds=record.dp3_cpu_seconds,
            flag_statistics=record.flag_statistics,
        )

    def without_statistics(self) -> TaskResult:
        """This result without its flag counts and statistics (its record keeps them), but
        for where its flagging report's files are: what a batch keeps of each MS it did (at
        10,000 MSs, the whole results weighed 110 MB). The names its mappings repeat from MS
        to MS (shape, step) and its worker are kept once for all: 2.7 -> 1.9 KB a result."""
        files = {
            key: value
            for key, value in (self.flag_statistics or {}).items()
            if key in FLAGGING_REPORT_FILES
        }
        return replace(
            self,
            flags_by_step=None,
            stations=None,
            flag_statistics=files or None,
            worker=_shared(self.worker),
            dp3_version=_shared(self.dp3_version),
            shape_before=_shared_keys(self.shape_before),
            shape_after=_shared_keys(self.shape_after),
            step_seconds=_shared_keys(self.step_seconds),
        )

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "task result") -> TaskResult:
        return from_json(cls, data, what)


def _shared(text: str | None) -> str | None:
    return None if text is None else sys.intern(text)


def _shared_keys(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if mapping is None else {sys.intern(str(k)): v for k, v in mapping.items()}


def results_to_json(results: Iterable[TaskResult]) -> Iterator[dict[str, Any]]:
    """The batch marker's content: one result per MS, encoded as it is written."""
    return (result.to_json() for result in results)


def results_from_json(data: object, what: str) -> list[TaskResult]:
    """The results of a batch marker (`what` names it in an error)."""
    if not isinstance(data, list):
        raise ContractError(f"{what}: expected a list of results")
    return [TaskResult.from_json(item, f"{what}: [{index}]") for index, item in enumerate(data)]
