"""The task of one MS: everything a worker needs to run DP3 on it and commit the output.

Plain, typed data built by the central job from the batch specification; dask pickles it
to the worker (workers import this module from the environment they share with the workflow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dp3batch.books.batch_spec import BatchSpec, PendingMS
from dp3batch.books.chunks import PlannedChunk, chunk_parameters
from dp3batch.books.layout import OutputLayout, ms_log_file
from dp3batch.dp3.parameters import DP3Parameters


@dataclass(frozen=True)
class Task:
    name: str
    input: str
    output: str
    log: str
    dp3_executable: str
    dp3_version: str
    # The result-defining DP3 parameters.
    parameters: DP3Parameters
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    # The spectral window this item reads (see windows), or None for the only one.
    band: int | None = None
    # Estimated cost (bytes of the main table): the largest MSs are dispatched first.
    size: int = 0
    # Another process held the input locked for writing at planning (its pid).
    locked_by: int | None = None
    # The batch's guard file: no commit once it says the batch stopped (execution.commit).
    guard: str | None = None
    # The batch's id, written into the completion record (who made it, without clocks).
    batch_id: str | None = None
    # The digest of the dp3batch code the batch runs (worker_faults.package_identity): a
    # worker that runs other code does not run the task. None: not checked.
    code_digest: str | None = None
    # A join: the frequency chunks whose outputs DP3 reads as one into `output` (see
    # dask_stage.join), and the width they were cut to. None: a DP3 run of the chain.
    chunks: tuple[PlannedChunk, ...] | None = None
    frequency_chunk_hz: float | None = None
    # Which outputs get flagging report files (`qa.flagging_report`), and the QA limits
    # that make an output suspect (books.qa.QALimits as JSON; None: no verdict).
    flagging_report: str = "auto"
    qa: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, batch: BatchSpec, ms: PendingMS, code_digest: str | None = None) -> Task:
        """The task of one pending MS of a batch: the batch's shared values, unless the MS
        carries its own parameters (AOFlagger's strategy for its telescope, see planning)."""
        return cls(
            name=ms.name,
            input=ms.input,
            output=ms.output,
            log=ms_log_file(batch.log_dir, ms.name),
            dp3_executable=batch.dp3_executable,
            dp3_version=batch.dp3_version,
            parameters=ms.parameters if ms.parameters is not None else batch.parameters,
            parameters_fingerprint=ms.parameters_fingerprint or batch.parameters_fingerprint,
            extra_inputs_fingerprint=batch.extra_inputs_fingerprint,
            band=ms.band,
            size=ms.size,
            locked_by=ms.locked_by,
            guard=str(OutputLayout(Path(batch.output_dir)).batch_guard(batch.batch_id)),
            batch_id=batch.batch_id,
            code_digest=code_digest,
            flagging_report=batch.flagging_report or "auto",
            qa=batch.qa,
        )

    @classmethod
    def chunk_of(
        cls, batch: BatchSpec, ms: PendingMS, chunk: PlannedChunk, code_digest: str | None = None
    ) -> Task:
        """The DP3 run of one frequency chunk of a pending MS: the MS's task, reading the
        chunk's channels into the chunk's own output, with its own log and fingerprint."""
        whole = cls.of(batch, ms, code_digest)
        channels = max(1, sum(each.nchan for each in ms.chunks or (chunk,)))
        return replace(
            whole,
            name=chunk.name,
            output=chunk.output,
            log=chunk.log,
            parameters=chunk_parameters(whole.parameters, chunk.startchan, chunk.nchan),
            parameters_fingerprint=chunk.parameters_fingerprint,
            # Its share of the MS's work, for largest-first dispatch.
            size=ms.size * chunk.nchan // channels,
            # Its flag statistics go into the joined output's record; report files of a
            # chunk would be removed with it.
            flagging_report="never",
        )

    @classmethod
    def join_of(cls, batch: BatchSpec, ms: PendingMS, code_digest: str | None = None) -> Task:
        """The join of a chunked MS's chunk outputs into its output (after every chunk)."""
        return replace(
            cls.of(batch, ms, code_digest),
            chunks=ms.chunks,
            frequency_chunk_hz=batch.frequency_chunk_hz,
        )
