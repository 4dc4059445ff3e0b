"""The result of one MS's task, as the central job reports it: made on the worker
(`execution.process_measurement_set`), for a task that returned none (`dispatch.lost_result`),
or from an output's completion record; written into the batch marker with `to_json()` and
read back from it (`rules/common.smk`) with `from_json()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dp3batch.completion import CompletionRecord
from dp3batch.json_fields import ContractError, Fields, without_none
from dp3batch.status import Status


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """What became of one MS. A done result carries what its completion record says about
    the run; a failed one why (`reason`) and DP3's most telling line (`error`). Fields that do
    not apply are None, and left out of the JSON."""

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
        )

    def to_json(self) -> dict[str, Any]:
        return without_none(
            {
                "name": self.name,
                "input": self.input,
                "output": self.output,
                "log": self.log,
                "worker": self.worker,
                "numthreads": self.numthreads,
                "started": self.started,
                "status": str(self.status),
                "reason": self.reason,
                "error": self.error,
                "finished": self.finished,
                "duration_seconds": self.duration_seconds,
                "size_estimate_bytes": self.size_estimate_bytes,
                "shape_before": self.shape_before,
                "shape_after": self.shape_after,
                "output_bytes": self.output_bytes,
                "step_seconds": self.step_seconds,
                "flags_by_step": self.flags_by_step,
                "stations": None if self.stations is None else list(self.stations),
                "dp3_version": self.dp3_version,
            }
        )

    @classmethod
    def from_json(cls, data: object, what: str = "task result") -> TaskResult:
        fields = Fields(data, what)
        return cls(
            name=fields.text("name"),
            input=fields.text("input"),
            output=fields.text("output"),
            log=fields.text("log"),
            worker=fields.optional_text("worker"),
            numthreads=fields.optional_integer("numthreads"),
            started=fields.optional_text("started"),
            status=_status(fields),
            reason=fields.optional_text("reason"),
            error=fields.optional_text("error"),
            finished=fields.optional_text("finished"),
            duration_seconds=fields.optional_number("duration_seconds"),
            size_estimate_bytes=fields.optional_integer("size_estimate_bytes"),
            shape_before=fields.optional_mapping("shape_before"),
            shape_after=fields.optional_mapping("shape_after"),
            output_bytes=fields.optional_integer("output_bytes"),
            step_seconds=fields.optional_mapping("step_seconds"),
            flags_by_step=fields.optional_mapping("flags_by_step"),
            stations=fields.optional_strings("stations"),
            dp3_version=fields.optional_text("dp3_version"),
        )


def _status(fields: Fields) -> Status:
    value = fields.text("status")
    try:
        return Status(value)
    except ValueError:
        known = ", ".join(repr(str(status)) for status in Status)
        raise ContractError(f"{fields.what}: 'status' {value!r} is not one of {known}") from None


def results_to_json(results: list[TaskResult]) -> list[dict[str, Any]]:
    """The batch marker's content: one result per MS."""
    return [result.to_json() for result in results]


def results_from_json(data: object, what: str) -> list[TaskResult]:
    """The results of a batch marker (`what` names it in an error)."""
    if not isinstance(data, list):
        raise ContractError(f"{what}: expected a list of results")
    return [TaskResult.from_json(item, f"{what}: [{index}]") for index, item in enumerate(data)]
