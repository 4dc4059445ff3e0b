"""The join of a chunked MS, as a dask task: DP3 reads the chunk outputs as one MS
(`msin=[c0.ms,c1.ms,…]`, `steps=[]`) into a temporary output, which is checked against the
chunks (join_check) and committed to `NAME.ms` exactly as an unchunked output is. The chunk
outputs are removed only once the join is committed: until then a rerun joins them again.

A Demixer's solutions (`instrument` inside each chunk) are kept per chunk, named by the
chunk's channel range (`instrument_ch0000-0063`). The joined output's completion record lists
each chunk (its channels, band, fingerprints, worker, times and flagged percentages).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dp3batch.books.chunks import PlannedChunk, channel_range, chunk_directory, join_msout
from dp3batch.books.commit import BatchStopped, commit
from dp3batch.books.fingerprints import input_tree, output_tree, output_unchanged
from dp3batch.books.layout import PARSET_NAME, OutputLayout, temporary_path
from dp3batch.books.records import CompletionRecord, read_record, write_record
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage.execution import (
    DP3DidNotStart,
    TaskCancelled,
    dp3_command,
    dp3_failure,
    failed,
    new_log,
    now,
    remove_own_leftovers,
    run_dp3,
    start_task,
    unexpected_problem,
    wants_flagging_files,
)
from dp3batch.dask_stage.join_check import averaged_grid, join_problems
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.worker_faults import (
    WorkerCannotRun,
)
from dp3batch.dp3.averaging import frequency_averaging, msin_channels, plain_integer
from dp3batch.dp3.native import dp3_program
from dp3batch.dp3.parameters import format_value
from dp3batch.dp3.parset import literal, literal_list, write_parset
from dp3batch.inputs.tables import read_shape, window_frequencies
from dp3batch.report.chunk_flags import merged_flag_counts, merged_flag_statistics
from dp3batch.report.flagging import (
    FlaggingReport,
    count_input_flags,
    prepare_flagging_report,
    report_paths,
)


def join_run(task: Task, chunk_outputs: list[str], msout: str, threads: int) -> list[tuple]:
    """DP3's (key, value) strings of the join: the chunks in channel order, no steps, the
    `msout` keys the chunks left to it (a storage manager), and the column they wrote."""
    column = task.parameters.msout.get("datacolumn")
    run = [
        ("checkparset", "1"),
        ("msin", literal_list(chunk_outputs, "msin")),
        ("msout", literal(msout, "msout")),
        ("numthreads", str(threads)),
        ("steps", "[]"),
    ]
    if column is not None:
        run += [("msin.datacolumn", format_value(column))]
    for key, value in task.parameters.msout.items():
        if key == "datacolumn" or key in join_msout(task.parameters):
            run.append((f"msout.{key}", format_value(value)))
    return run


def chunk_problem(task: Task, chunk: PlannedChunk, input_fingerprint: str) -> str | None:
    """Why a chunk's output cannot be joined (gone, damaged, of another input), or None."""
    record = read_record(chunk.output)
    if record is None:
        return f"{chunk.label} has no output with a completion record ({chunk.output})"
    if record.parameters_fingerprint != chunk.parameters_fingerprint:
        return f"{chunk.label} was made with other steps"
    if not output_unchanged(Path(chunk.output), record.output_fingerprint, record.output_files):
        return f"{chunk.label} was damaged since it was made ({chunk.output})"
    if record.input_fingerprint != input_fingerprint:
        return f"{chunk.label} was made from another state of the input {task.input}"
    return None


def _expected_grid(task: Task) -> list[float] | None:
    """The channel frequencies an unchunked run makes of the window (None: not known)."""
    frequencies, widths = window_frequencies(
        task.input, task.parameters.with_band(task.band).selected_band()
    )
    first = plain_integer(format_value(task.parameters.msin.get("startchan", 0)))
    count = msin_channels(task.parameters, len(widths))
    if first is None or count is None:
        return None
    frequencies, widths = frequencies[first : first + count], widths[first : first + count]
    averaging = frequency_averaging(task.parameters, widths[0] if widths else 0.0)
    return None if averaging is None else averaged_grid(frequencies, widths, averaging)


def _chunk_entry(chunk: PlannedChunk, record: CompletionRecord) -> dict[str, Any]:
    """What the joined output's record keeps of one chunk (the summary's chunk breakdown)."""
    after = record.shape_after or {}
    flagged = after.get("flagged_fraction")
    return {
        "name": chunk.name,
        "index": chunk.index,
        "startchan": chunk.startchan,
        "nchan": chunk.nchan,
        "low_hz": chunk.low_hz,
        "high_hz": chunk.high_hz,
        "parameters_fingerprint": record.parameters_fingerprint,
        "output_fingerprint": record.output_fingerprint,
        "worker": record.worker,
        "numthreads": record.numthreads,
        "started": record.started,
        "finished": record.finished,
        "duration_seconds": record.duration_seconds,
        "batch_id": record.batch_id,
        "flagged_total_pct": (record.flag_statistics or {}).get("total_pct"),
        "flagged_output_pct": None if flagged is None else round(100 * flagged, 3),
        "peak_memory_bytes": record.peak_memory_bytes,
        "dp3_cpu_seconds": record.dp3_cpu_seconds,
        "dp3_arguments": list(record.dp3_arguments),
    }


def sum_cpu_seconds(seconds: list[float | None]) -> float | None:
    """The CPU of several DP3 runs, or None when one of them is not known (a chunk's record
    of an older version)."""
    known = [value for value in seconds if value is not None]
    return round(sum(known), 3) if len(known) == len(seconds) else None


def _sum_step_seconds(records: list[CompletionRecord]) -> dict[str, float]:
    total: dict[str, float] = {}
    for record in records:
        for step, seconds in (record.step_seconds or {}).items():
            total[step] = round(total.get(step, 0.0) + seconds, 3)
    return total


def _shape_before(records: list[CompletionRecord]) -> dict[str, Any]:
    """The input as the chunks read it, together: all their channels, and the flagged
    fraction weighted by each chunk's channels."""
    shapes = [dict(record.shape_before) for record in records]
    channels = sum(int(shape.get("channels") or 0) for shape in shapes)
    shape = {**shapes[0], "channels": channels}
    fractions = [shape.get("flagged_fraction") for shape in shapes]
    if channels and all(fraction is not None for fraction in fractions):
        shape["flagged_fraction"] = (
            sum(f * int(s["channels"]) for f, s in zip(fractions, shapes, strict=True)) / channels
        )
    return shape


def join_chunks(task: Task) -> TaskResult:
    """Join one MS's chunk outputs into its output; returns a result for the report. A
    failed join (or check) is a failed result of that MS alone, naming the reason."""
    start = start_task(task)
    worker, key, threads = start.worker, start.key, start.threads
    worker_address, started, result = start.worker_address, start.started, start.result
    chunks = list(task.chunks or ())
    output, log_path = Path(task.output), Path(task.log)
    temporary = temporary_path(output)
    doing = "preparing the join"
    flagging: FlaggingReport | None = None
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        remove_own_leftovers(output, log_path, task.batch_id)
        input_state = input_tree(Path(task.input))
        for chunk in chunks:
            problem = chunk_problem(task, chunk, input_state.fingerprint)
            if problem:
                reason = f"join: {problem}; run again to redo it"
                new_log(log_path, f"# {task.name}: join of {len(chunks)} chunks\n")
                return failed(result, started, log_path, reason, reason)
        records = [read_record(chunk.output) for chunk in chunks]
        chunk_outputs = [chunk.output for chunk in chunks]
        run = join_run(task, chunk_outputs, str(temporary), threads)
        program = dp3_program(task.dp3_executable, task.dp3_version)
        arguments = dp3_command(program, run, log_path.with_suffix(".parset"))
        new_log(
            log_path,
            f"# {task.name}: join of {len(chunks)} frequency chunks on {worker_address}\n"
            f"# batch {task.batch_id}\n# started {result.started}\n"
            f"# command: {' '.join(arguments)}\n",
        )
        doing = "running DP3 (the join)"
        exited, _ = run_dp3(arguments, log_path, worker, key, lambda: None)
        if exited.code != 0:
            reason = "join: " + dp3_failure(exited.code, output.parent, log_path)
            return failed(result, started, log_path, reason)
        doing = "checking the join"
        problems = join_problems(chunk_outputs, str(temporary), _expected_grid(task))
        if problems:
            reason = "join check failed: " + "; ".join(problems)
            return failed(result, started, log_path, reason, reason)
        required = _keep_solutions(chunks, task, temporary)
        doing = f"writing {PARSET_NAME}"
        finished = now()
        final_run = join_run(task, chunk_outputs, task.output, threads)
        header = (
            f"DP3 parset of the join of {task.output} from {len(chunks)} frequency chunks, "
            f"made {finished} by DP3 {task.dp3_version}. Each chunk's own DP3 arguments are "
            "in the completion record (frequency_chunks); the chunk outputs it reads are "
            "removed once the join is committed."
        )
        write_parset(temporary / PARSET_NAME, final_run, header)
        done = [record for record in records if record is not None]
        # The chunks' figures together (DP3's per-step counts included), and the report's
        # files where they are wanted (made from the joined output and the input's flags).
        statistics = merged_flag_statistics(
            [record.flag_statistics for record in done], [chunk.nchan for chunk in chunks]
        )
        doing = "making the flagging report"
        flagging = joined_flagging_report(task, temporary, done, statistics, log_path)
        if statistics is not None:
            statistics.update(
                {
                    key: flagging.statistics[key]
                    for key in ("zarr", "png")
                    if key in flagging.statistics
                }
            )
        doing = "writing the completion record"
        shape_out = read_shape(str(temporary), with_flags=True)
        output_state = output_tree(temporary)
        first = done[0]
        record = CompletionRecord(
            name=task.name,
            input=task.input,
            output=task.output,
            input_fingerprint=input_state.fingerprint,
            band=task.band,
            windows=first.windows,
            parameters=tuple(task.parameters.pairs()),
            parameters_fingerprint=task.parameters_fingerprint,
            extra_inputs_fingerprint=task.extra_inputs_fingerprint,
            dp3_version=task.dp3_version,
            telescope=first.telescope,
            stations=first.stations,
            aoflagger_strategies=first.aoflagger_strategies,
            dp3_executable=task.dp3_executable,
            dp3_arguments=tuple(arguments[1:]),
            worker=worker_address,
            numthreads=threads,
            started=str(result.started),
            finished=finished,
            # The DP3 time of every chunk and of the join: what the MS cost.
            duration_seconds=round(
                sum(record.duration_seconds for record in done) + time.time() - started, 3
            ),
            size_estimate_bytes=task.size or None,
            shape_before=_shape_before(done),
            shape_after=shape_out.as_dict(),
            shape_expected={"channels": sum(chunk.nchan for chunk in chunks)},
            required_files=tuple(required),
            output_bytes=output_state.total_bytes,
            step_seconds=_sum_step_seconds(done),
            flags_by_step=merged_flag_counts([record.flags_by_step for record in done]),
            output_fingerprint=output_state.fingerprint,
            input_files=input_state.files,
            output_files=output_state.files,
            batch_id=task.batch_id,
            peak_memory_bytes=max((record.peak_memory_bytes or 0) for record in done) or None,
            # Every chunk's DP3 and the join's: what the MS cost.
            dp3_cpu_seconds=sum_cpu_seconds(
                [*(record.dp3_cpu_seconds for record in done), exited.cpu_seconds]
            ),
            flag_statistics=statistics,
            frequency_chunks={
                "width_hz": task.frequency_chunk_hz,
                "chunks": [
                    _chunk_entry(chunk, record) for chunk, record in zip(chunks, done, strict=True)
                ],
            },
        )
        write_record(temporary, record)
        doing = "committing the output"
        commit(temporary, output, task.guard, None if key is None else str(key))
        # Only now: until the join is committed, a rerun joins these chunks again.
        shutil.rmtree(chunk_directory(output), ignore_errors=True)
        flagging.publish()
    except (TaskCancelled, BatchStopped):
        raise
    except DP3DidNotStart as error:
        raise WorkerCannotRun(worker_address, str(error)) from None
    except Exception as error:  # not DP3's failure: DP3's last line would mislead
        problem = unexpected_problem(error, output.parent)
        reason = f"while {doing}: {problem}"
        return failed(result, started, log_path, reason, reason)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
        if flagging is not None:
            flagging.discard()  # unless published
    return replace(TaskResult.from_record(record, result.log), status=Status.DONE)


def joined_flagging_report(
    task: Task,
    joined: Path,
    records: list[CompletionRecord],
    statistics: dict[str, Any] | None,
    log_path: Path,
) -> FlaggingReport:
    """The joined output's flagging report files, where `qa.flagging_report` wants them
    (judged from the chunks' figures together and the DP3 time of all chunks), else none
    (publishing it then removes an earlier output's files, as for any output)."""
    qa_dir = OutputLayout(Path(task.output).parent).qa_dir
    nothing = FlaggingReport({}, [], report_paths(qa_dir, task.name))
    seconds = sum(record.duration_seconds for record in records)
    if statistics is None or not wants_flagging_files(task, seconds)(statistics):
        return nothing
    chunks = task.chunks or ()
    try:
        input_flags = count_input_flags(
            task.input,
            task.parameters.with_band(task.band).selected_band(),
            chunks[0].startchan,
            sum(chunk.nchan for chunk in chunks),
        )
        return prepare_flagging_report(
            joined, qa_dir, task.name, None, input_flags, final=task.output
        )
    except Exception as error:  # the report must never cost the MS its output
        with contextlib.suppress(OSError), open(log_path, "a") as log:
            log.write(f"# flagging report failed: {type(error).__name__}: {error}\n")
        return nothing


def _keep_solutions(chunks: list[PlannedChunk], task: Task, temporary: Path) -> list[str]:
    """Copy each chunk's Demixer solutions into the joined output, named by the chunk's
    channel range; return the names (files the output must hold to be complete)."""
    names = []
    for chunk in chunks:
        for name in task.parameters.required_output_files():
            source = Path(chunk.output) / name
            kept = f"{name}_{channel_range(chunk.startchan, chunk.nchan)}"
            shutil.copytree(source, temporary / kept, symlinks=True)
            names.append(kept)
    return names
