"""The batch specification: everything the central job needs, made by the rule layer
(`planning.batch_specification`) and handed to `batch.main`.

It travels as a JSON file from `BatchSpec.to_json()` (the run's `batch-specification.json`,
an input of the central rule), and is parsed once, by `BatchSpec.from_json()`, when the
central job starts. The JSON keeps the keys it has always had.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dp3batch.books.chunks import PlannedChunk, chunk_parameters
from dp3batch.books.codec import ContractError, from_json, to_json
from dp3batch.books.layout import PARSET_NAME, ms_log_file
from dp3batch.dp3.parameters import DP3Parameters


@dataclass(frozen=True)
class MSPaths:
    """One MS of the workflow (an item: one spectral window of an MS of several): its name,
    input and output. The summary lists every one; only their temporary outputs may be
    removed."""

    name: str
    input: str
    output: str

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "an MS of the workflow") -> MSPaths:
        return from_json(cls, data, what)


@dataclass(frozen=True, kw_only=True)
class PendingMS:
    """One MS the batch processes, and why."""

    name: str
    input: str
    output: str
    # The spectral window this item reads (see windows), or None for the only one.
    band: int | None
    # Why it is pending (`planning.pending_reason`, or "forced").
    reason: str
    # Estimated cost (bytes of the main table): the largest MSs are dispatched first.
    size: int
    # Its own parameters and their fingerprint (AOFlagger's strategy for its telescope, see
    # ms_parameters), or None: the batch's.
    parameters: DP3Parameters | None = field(default=None, metadata={"omit_none": True})
    parameters_fingerprint: str | None = field(default=None, metadata={"omit_none": True})
    # Another process held the input locked for writing at planning (its pid).
    locked_by: int | None = None
    # Which run had made the output's completion record at planning (`records.record_origin`),
    # None if there was none: a record of another origin once the batch holds the lock was
    # made meanwhile by another run.
    record_origin: str | None = field(default=None, metadata={"omit_none": True})
    # Its frequency chunks (books.chunks), done ones included, when it is cut into several;
    # None: one DP3 run makes its output.
    chunks: tuple[PlannedChunk, ...] | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        if (self.parameters is None) != (self.parameters_fingerprint is None):
            raise ContractError(
                f"pending MS {self.name}: 'parameters' and 'parameters_fingerprint' go together"
            )

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "a pending MS") -> PendingMS:
        return from_json(cls, data, what)


@dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """One batch of the central job: its settings, the shared DP3 parameters, the pending
    MSs, and every MS of the workflow."""

    batch_id: str
    # `HOST:PORT` of an existing dask scheduler, or None: an embedded cluster.
    scheduler: str | None
    # The embedded cluster's `n_workers` and `threads_per_worker` (None: fits the machine).
    local_cluster: Mapping[str, int | None]
    output_dir: str
    log_dir: str
    dp3_executable: str
    dp3_version: str
    parameters: DP3Parameters
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    # How long the batch waits for workers holding `process` to come back.
    worker_wait_seconds: float
    # How long a worker holding one of the batch's tasks may be silent before the batch
    # takes it as frozen and runs its MS elsewhere (None in older specifications: 60).
    worker_silence_seconds: float | None = field(default=None, metadata={"omit_none": True})
    all_measurement_sets: tuple[MSPaths, ...]
    # Below this duration no dask performance report is kept.
    dask_report_min_seconds: float
    # How many of the batch's last tasks the dask report's task stream shows.
    dask_report_task_stream: int
    # When the pending set was taken (for people: which records a batch made is decided by
    # their `batch_id`, never by a comparison of clocks).
    planned_at: str
    measurement_sets: tuple[PendingMS, ...]
    # This run's own directory (log, config, task list, dask report, QA: see
    # layout.RunFiles), or None.
    run_dir: str | None = field(default=None, metadata={"omit_none": True})
    # The config's `qa:` limits (books.qa.QALimits), or None: no QA verdict.
    qa: Mapping[str, Any] | None = field(default=None, metadata={"omit_none": True})
    # The config's `frequency_chunk_hz` (None: off), written into joined outputs' records.
    frequency_chunk_hz: float | None = field(default=None, metadata={"omit_none": True})
    # Which outputs get flagging report files (config `qa.flagging_report`; None: auto).
    flagging_report: str | None = field(default=None, metadata={"omit_none": True})

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object, what: str = "batch specification") -> BatchSpec:
        return share_parameters(from_json(cls, data, what))


def share_parameters(batch: BatchSpec) -> BatchSpec:
    """The batch with one object for the equal parameters of its pending MSs. Each MS of an
    AOFlagger chain carries its telescope's (see ms_parameters), about 1 KB decoded: a
    batch of 10,000 MSs held 10,000 equal copies for its whole run."""
    shared: dict[str, DP3Parameters] = {}

    def sharing(ms: PendingMS) -> PendingMS:
        if ms.parameters is None or ms.parameters_fingerprint is None:
            return ms
        kept = shared.setdefault(ms.parameters_fingerprint, ms.parameters)
        if kept is ms.parameters or kept != ms.parameters:
            return ms
        return replace(ms, parameters=kept)

    return replace(batch, measurement_sets=tuple(sharing(ms) for ms in batch.measurement_sets))


def parallel_tasks(batch: BatchSpec) -> int:
    """How many DP3 tasks of the batch can run at once: one per MS, or per frequency chunk
    to run (the embedded cluster has no more workers than that)."""
    return sum(
        max(1, sum(1 for chunk in ms.chunks or () if chunk.reason is not None))
        for ms in batch.measurement_sets
    )


def task_entries(batch: BatchSpec) -> Iterator[dict[str, Any]]:
    """One entry per DP3 task of the batch (a run's `task-list.json`), made as it is written:
    what it reads (the input, its window and, for a frequency chunk, its channels), what it
    writes, its log and parset, why it runs, and the DP3 parameters that define its result. A
    chunked MS has one entry per chunk to run, then its join (which reads the chunk outputs)."""
    for ms in batch.measurement_sets:
        parameters = (ms.parameters or batch.parameters).with_band(ms.band)
        entry = {
            "name": ms.name,
            "input": ms.input,
            "band": ms.band,
            "output": ms.output,
            "log": ms_log_file(batch.log_dir, ms.name),
            "parset": str(Path(ms.output) / PARSET_NAME),
            "reason": ms.reason,
            "dp3_parameters": dict(parameters.pairs()),
        }
        if not ms.chunks:
            yield entry
            continue
        for chunk in ms.chunks:
            if chunk.reason is None:
                continue  # done and up to date: kept for the join
            own = chunk_parameters(parameters, chunk.startchan, chunk.nchan)
            yield {
                **entry,
                "name": chunk.name,
                "chunk": f"{chunk.index}/{chunk.count}",
                "startchan": chunk.startchan,
                "nchan": chunk.nchan,
                "low_hz": chunk.low_hz,
                "high_hz": chunk.high_hz,
                "output": chunk.output,
                "log": chunk.log,
                "parset": str(Path(chunk.output) / PARSET_NAME),
                "reason": chunk.reason,
                "dp3_parameters": dict(own.pairs()),
            }
        yield {
            **entry,
            "name": f"{ms.name} join",
            "joins": [chunk.output for chunk in ms.chunks],
            "dp3_parameters": {"msin": [chunk.output for chunk in ms.chunks], "steps": "[]"},
        }
