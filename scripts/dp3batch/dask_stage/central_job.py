"""The fan-out: one dask task per pending MS, results as they arrive, a clear end report.

Runs in the central Snakemake job. It holds a lock on the output directory for the whole
batch, cleans leftovers of killed runs, checks the cluster before submitting anything, and
stops every DP3 when it is interrupted or its parent (Snakemake) disappears.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from dp3batch.books.batch_spec import BatchSpec, PendingMS
from dp3batch.books.chunks import chunk_directory
from dp3batch.books.codec import ContractError, write_json_list
from dp3batch.books.commit import LockTimeout, remove_leftovers, stop_commits
from dp3batch.books.forced import ForcedItem, is_forced, read_forced_note, write_forced_note
from dp3batch.books.layout import OutputLayout, RunFiles, leftover_owner, ms_log_file
from dp3batch.books.qa import QALimits, qa_verdict
from dp3batch.books.records import Expectation, RecordStore, pending_reason, record_origin
from dp3batch.books.status import Status
from dp3batch.books.task_result import FLAGGING_REPORT_FILES, TaskResult, results_to_json
from dp3batch.books.write_errors import QuietFileHandler, write_problem
from dp3batch.dask_stage.cluster import FILE_ONLY, ClusterError, cluster_client
from dp3batch.dask_stage.dask_report import DaskPerformanceReport, write_no_report
from dp3batch.dask_stage.dispatch import (
    Dispatch,
    SchedulerLost,
    WorkersLost,
    fan_out,
    lost_result,
    stop_running,
)
from dp3batch.dask_stage.interrupts import (
    Interrupted,
    StopRequest,
    ignore_interrupts,
    interruptible,
)
from dp3batch.dask_stage.lock import BatchError, output_dir_lock
from dp3batch.dask_stage.preflight import PROBE_PREFIX, preflight
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.watchdog import DEFAULT_SILENCE_SECONDS, ClusterWatch
from dp3batch.dask_stage.worker_checks import check_workers
from dp3batch.dask_stage.worker_faults import own_package_identity
from dp3batch.dp3.install import ensure_home
from dp3batch.report.batch_report import ReportFiles, reserve_report_files, write_report_files
from dp3batch.report.summary import NO_QA, Summary, SummaryFiles

log = logging.getLogger("dp3batch")
# The batch log only (not the terminal).
file_log = logging.getLogger("dp3batch.batch_log")


def task_for(batch: BatchSpec, ms: PendingMS, code_digest: str | None = None) -> Task:
    """The task of one MS of a batch (what a worker receives)."""
    return Task.of(batch, ms, code_digest)


def _progress(done: int, total: int, elapsed: float) -> str:
    """`[n/N]`, an ETA from the pace so far, and a bar when a person is watching."""
    remaining = (total - done) * elapsed / done if done else 0.0
    eta = f"ETA {datetime.timedelta(seconds=round(remaining))}" if done < total else "last"
    bar = ""
    if sys.stderr.isatty():
        filled = round(20 * done / total)
        bar = "|" + "#" * filled + "." * (20 - filled) + "| "
    return f"{bar}[{done}/{total}, {eta}]"


def _report_line(
    done: int, total: int, elapsed: float, result: TaskResult, qa: QALimits = NO_QA
) -> str:
    duration = result.duration_seconds or 0.0
    # A task that returned no result (its worker died) ran nowhere that is known.
    where = f" on {result.worker} ({result.numthreads} thread(s))" if result.worker else ""
    progress = _progress(done, total, elapsed)
    if result.status == Status.DONE:
        verdict = qa_verdict(result.flag_statistics, qa)
        suspect = f"; QA: SUSPECT, {verdict.reason}" if verdict.suspect else ""
        return f"{progress} {result.name}: done in {duration:.1f} s{where}{suspect}"
    said = f"; DP3 said: {result.error}" if result.error and result.error != result.reason else ""
    return (
        f"{progress} {result.name}: FAILED after {duration:.1f} s{where}: "
        f"{result.reason}{said}; log: {result.log}"
    )


def _known_outputs(batch: BatchSpec) -> set[str]:
    """Names of every output of the workflow (`X.ms`), this batch's and the up-to-date ones."""
    names = {Path(ms.output).name for ms in batch.all_measurement_sets}
    return names | {Path(ms.output).name for ms in batch.measurement_sets}


def still_pending(batch: BatchSpec, store: RecordStore) -> tuple[list[PendingMS], list[str]]:
    """The batch's MSs that are still pending now that the lock is held, and the names of
    those another run completed while this one waited: an up-to-date record that another run
    made since this batch was planned (its origin changed; an MS forced with -F keeps its
    record and is not dropped, whatever clock stamped it)."""
    expected = Expectation(
        parameters_fingerprint=batch.parameters_fingerprint,
        extra_inputs_fingerprint=batch.extra_inputs_fingerprint,
        dp3_version=batch.dp3_version,
    )
    pending, completed = [], []
    for ms in batch.measurement_sets:
        fingerprint = ms.parameters_fingerprint or batch.parameters_fingerprint
        own = replace(expected, parameters_fingerprint=fingerprint)
        origin = record_origin(store.record(ms.output))
        if (origin is not None and origin != ms.record_origin) and (
            pending_reason(Path(ms.input), Path(ms.output), own, store) is None
        ):
            completed.append(ms.name)
        else:
            pending.append(ms)
    return pending, completed


class BatchRun:
    """One batch, from the lock to the last result; `results` holds one entry per MS."""

    def __init__(self, batch: BatchSpec):
        self.batch = batch
        self.layout = OutputLayout(Path(batch.output_dir))
        self.results: dict[str, TaskResult] = {}
        # The records this batch reads (the summary reads every one, once): what the next
        # run checks of each is kept, not the whole record.
        self.store = RecordStore(keep_records=False)
        self.total = len(batch.measurement_sets)
        self.started = time.monotonic()
        self.report_files = ReportFiles(self.layout.report_dir(batch.batch_id))
        self.dask_report: DaskPerformanceReport | None = None
        self.qa = QALimits.from_config(batch.qa)
        # The cluster as this batch saw it (None until pre-flight has passed).
        self.watch: ClusterWatch | None = None
        # Joiners whose check had not answered, long after they joined, when the batch ended.
        self.unchecked_joiners: dict[str, str] = {}
        # Frequency chunks: the MS of each chunk task, their results, and the joins that
        # became ready (the fan-out submits them first).
        self.chunk_owner: dict[str, PendingMS] = {}
        self.chunk_results: dict[str, TaskResult] = {}
        self.ready_joins: list[Task] = []
        self.code_digest: str | None = None
        # MSs another run completed while this one waited for the lock: up to date, not
        # processed again.
        self.completed_elsewhere: set[str] = set()

    def record_result(self, result: TaskResult) -> None:
        owner = self.chunk_owner.get(result.name)
        if owner is not None:
            self._chunk_result(owner, result)
            return
        done = result.status == Status.DONE
        # A done MS's summary row is read from its record, whole: its statistics need not stay.
        self.results[result.name] = result.without_statistics() if done else result
        if done:
            # Chunks an earlier chunked run left of this MS (interrupted, or another width
            # since) are superseded by the output just committed.
            shutil.rmtree(chunk_directory(Path(result.output)), ignore_errors=True)
        elapsed = time.monotonic() - self.started
        line = _report_line(len(self.results), self.total, elapsed, result, self.qa)
        (log.info if done else log.error)(line)

    def _chunk_result(self, ms: PendingMS, result: TaskResult) -> None:
        """A chunk's result: said on a line of its own; the MS's join is ready once every
        chunk is done, and the MS fails (alone) with the first chunk that fails."""
        self.chunk_results[result.name] = result.without_statistics()
        chunk = next(chunk for chunk in ms.chunks or () if chunk.name == result.name)
        duration = result.duration_seconds or 0.0
        where = f" on {result.worker}" if result.worker else ""
        if result.status == Status.DONE:
            log.info("  %s %s: done in %.1f s%s", ms.name, chunk.label, duration, where)
            if ms.name not in self.results and self._chunks_done(ms) == len(ms.chunks or ()):
                self.ready_joins.append(Task.join_of(self.batch, ms, self.code_digest))
            return
        log.error(
            "  %s %s: FAILED after %.1f s%s: %s; log: %s",
            ms.name,
            chunk.label,
            duration,
            where,
            result.reason,
            result.log,
        )
        if ms.name not in self.results:
            self.record_result(
                replace(
                    result, name=ms.name, output=ms.output, reason=f"{chunk.label}: {result.reason}"
                )
            )

    def _chunks_done(self, ms: PendingMS) -> int:
        """The chunks of a chunked MS whose outputs are done: before this batch, or by it."""
        return sum(
            1
            for chunk in ms.chunks or ()
            if chunk.reason is None
            or (
                (found := self.chunk_results.get(chunk.name)) is not None
                and found.status == Status.DONE
            )
        )

    def _tasks(self, pending: list[PendingMS], digest: str | None) -> list[Task]:
        """The tasks of the pending MSs: one per MS, or for a chunked one, one per chunk to
        run (its join follows them), or its join alone when every chunk is done already."""
        tasks = []
        for ms in pending:
            if not ms.chunks:
                tasks.append(task_for(self.batch, ms, digest))
                continue
            # What a killed run left of a chunk being written (the chunks themselves stay).
            names = {Path(chunk.output).name for chunk in ms.chunks}
            remove_leftovers(chunk_directory(Path(ms.output)), names)
            owed = [chunk for chunk in ms.chunks if chunk.reason is not None]
            for chunk in owed:
                self.chunk_owner[chunk.name] = ms
                tasks.append(Task.chunk_of(self.batch, ms, chunk, digest))
            if not owed:
                tasks.append(Task.join_of(self.batch, ms, digest))
        return tasks

    def run(self) -> None:
        batch, layout = self.batch, self.layout
        Path(batch.log_dir).mkdir(parents=True, exist_ok=True)
        with output_dir_lock(layout.output_dir), interruptible() as stop_request:
            # Shared files are touched only while the lock is held.
            layout.failures.unlink(missing_ok=True)
            for leftover in remove_leftovers(layout.output_dir, _known_outputs(batch)):
                log.info("removed %s, left behind by an interrupted run", leftover)
            for directory in (layout.output_dir, Path(batch.log_dir)):
                for probe in directory.glob(f"{PROBE_PREFIX}*"):  # of a path check cut short
                    probe.unlink(missing_ok=True)
            pending, completed = still_pending(batch, self.store)
            self.completed_elsewhere = set(completed)
            for name in completed:
                log.info("%s: completed by another run meanwhile; not processed again", name)
            # Before any DP3 runs: whatever ends this batch (even SIGKILL), the next run
            # finishes the forced MSs it did not.
            self._note_forced(pending)
            try:
                if pending:
                    self._run_tasks(pending, stop_request)
            finally:
                self._note_forced([])

    def _run_tasks(self, pending: list[PendingMS], stop_request: StopRequest) -> None:
        batch = self.batch
        guard = self.layout.batch_guard(batch.batch_id)
        guard.write_text("running\n")
        with cluster_client(batch) as client:
            # Workers of an external cluster run the workflow's code from their own
            # environment (nothing is uploaded): each is asked which dp3batch it imports.
            expected = own_package_identity() if batch.scheduler else None
            silence = batch.worker_silence_seconds or DEFAULT_SILENCE_SECONDS
            start = preflight(client, batch, expected, silence)
            address = batch.scheduler or client.scheduler.address
            self.watch = ClusterWatch(
                client,
                batch.batch_id,
                address,
                start.scheduler_id,
                silence,
                guard,
                check_joiners=None if expected is None else self._joiner_check(client, expected),
                committed=self._committed_result,
            )
            self.watch.excluded.update(start.excluded)
            self.watch.unchecked.update(start.silent)
            self.watch.begin(start.workers)
            digest = None if expected is None else expected.get("digest")
            self.code_digest = digest
            tasks = self._tasks(pending, digest)
            dispatch = Dispatch(
                tasks=tasks,
                batch_id=batch.batch_id,
                scheduler_address=address,
                worker_grace=batch.worker_wait_seconds,
                on_result=self.record_result,
                stop=stop_request,
                watch=self.watch,
                ready=self.ready_joins,
            )
            log.info("%d DP3 task(s) to run, largest first", len(tasks))
            reserve_report_files(self.report_files)
            self.dask_report = DaskPerformanceReport(
                client,
                self.report_files.dask,
                batch.dask_report_min_seconds,
                batch.dask_report_task_stream,
            )
            self.dask_report.start()
            try:
                fan_out(client, dispatch)
                self.dask_report.finish()
                if dispatch.group_tasks:
                    file_log.info(
                        "%d small MS(s) ran several to a dask task, in %d task(s)",
                        dispatch.grouped_mss,
                        dispatch.group_tasks,
                    )
            except (Interrupted, ClusterError) as error:
                ignore_interrupts()
                try:
                    stop_commits(guard)  # nothing is committed from here on
                except LockTimeout as lock_error:
                    log.error("Error: %s", lock_error)
                if isinstance(error, SchedulerLost) and error.unanswered:
                    # Asking it to cancel would only wait out the request's deadline.
                    if dispatch.in_flight:
                        log.error("could not stop the running tasks: the scheduler does not answer")
                else:
                    stop_running(client, dispatch)
                raise
            finally:
                # Before the client closes, which ends the checks still under way with an error.
                self.unchecked_joiners = self.watch.unanswered_checks()
                self.watch.end()
            # Nothing of this batch commits after its end (a late attempt of a worker that
            # woke up, say): every MS has its result.
            with contextlib.suppress(LockTimeout, OSError):
                stop_commits(guard)

    def _joiner_check(self, client, expected: dict[str, Any]):
        batch = self.batch

        def check(joined):
            return check_workers(client, joined, batch.dp3_executable, expected, batch.dp3_version)

        return check

    def _committed_result(self, task: Task) -> TaskResult | None:
        """The result of an MS this batch committed, from its record (an attempt that
        committed just before its worker fell silent)."""
        ms = next((ms for ms in self.batch.measurement_sets if ms.name == task.name), None)
        return None if ms is None else self._from_record(ms)

    def _note_forced(self, pending: list[PendingMS]) -> None:
        """Keep `.forced-unfinished.json` true: the forced MSs of this batch that are about to
        run (`pending`), and any earlier ones, stay noted until an output made since their
        force stands. Called under the output directory's lock."""
        note_path = self.layout.forced_note
        noted = read_forced_note(note_path)
        for ms in pending:
            if is_forced(ms.reason) and ms.output not in noted:
                noted[ms.output] = ForcedItem(ms.name, ms.output, self.batch.planned_at)
        known = {ms.output for ms in self.batch.all_measurement_sets}
        known |= {ms.output for ms in self.batch.measurement_sets}
        owed = []
        for output, item in noted.items():
            record = self.store.record(output)
            if output in known and item.owed(None if record is None else record.finished):
                owed.append(item)
        try:
            write_forced_note(note_path, owed)
        except OSError as error:
            log.error(
                "Error: could not note the forced MSs not processed yet in %s (%s): run "
                "with -F again to process them",
                note_path,
                error,
            )

    def final_results(self, why_unfinished: str) -> list[TaskResult]:
        """One result per MS of the batch. An MS without a result may still have been
        committed (its result lost with the scheduler): its completion record says so."""
        results = []
        for ms in self.batch.measurement_sets:
            result = self.results.get(ms.name)
            if result is None and ms.name in self.completed_elsewhere:
                result = self._from_record(ms, by_any_batch=True) or lost_result(
                    task_for(self.batch, ms), "its output was removed meanwhile"
                )
            elif result is None:
                result = self._from_record(ms) or lost_result(
                    task_for(self.batch, ms), why_unfinished + self._chunks_kept(ms)
                )
                if result.status != Status.DONE:
                    result = replace(result, status=Status.NOT_PROCESSED)
            elif result.status != Status.DONE:
                # Another attempt may have committed it (a task re-run after its worker or
                # scheduler was lost): the record on disk has the last word.
                result = self._from_record(ms) or result
            results.append(result)
        return results

    def _chunks_kept(self, ms: PendingMS) -> str:
        """For an MS cut into chunks and not joined: how many of its chunks are done and kept
        (a rerun redoes only the others)."""
        if not ms.chunks:
            return ""
        return f" ({self._chunks_done(ms)} of {len(ms.chunks)} frequency chunks done and kept)"

    def excluded_workers(self) -> dict[str, str]:
        """Workers this batch gave no (more) work, and why; joiners whose check was still
        under way (and had taken long) among them."""
        if self.watch is None:
            return {}
        return {**self.unchecked_joiners, **self.watch.excluded}

    def _from_record(self, ms: PendingMS, by_any_batch: bool = False) -> TaskResult | None:
        """The result an MS's record gives: done when this batch made it; `by_any_batch`
        (another run completed it while this one waited for the lock): up to date."""
        record = self.store.record(ms.output)
        if record is None or (record.batch_id != self.batch.batch_id and not by_any_batch):
            return None
        result = TaskResult.from_record(record, ms_log_file(self.batch.log_dir, ms.name))
        if record.batch_id != self.batch.batch_id:
            result = replace(result, status=Status.UP_TO_DATE)
        return result

    def write_reports(self, results: list[TaskResult]) -> None:
        """The summary of every MS (from the records on disk) and this batch's report."""
        summary = Summary(self.layout, self.batch.all_measurement_sets, self.store, self.qa)
        rows, problem = summary.write(
            results, {ms.name for ms in self.batch.measurement_sets}, self.batch.batch_id
        )
        if problem:  # said once, by the rule layer, which writes it again when it ends
            file_log.error("Error: %s", problem)
        # The summary has just parsed every record: what the next run checks of each is
        # kept now, so that the rerun right after this batch reads none of them.
        self.store.keep_checks(
            self.layout.record_checks, [ms.output for ms in self.batch.all_measurement_sets]
        )
        dask_problem = None
        if not _has_content(self.report_files.dask):  # absent, or reserved and never written
            try:
                write_no_report(self.report_files.dask, "the batch ended before its tasks did")
            except OSError as error:
                dask_problem = write_problem(error, self.report_files.dask)
        if self.dask_report is not None and self.dask_report.problem:
            dask_problem = self.dask_report.problem
        # Its files are the central rule's outputs: each exists afterwards, whatever failed,
        # or Snakemake would fail the job and delete them all (the batch marker too).
        title = f"Batch {self.batch.batch_id}"
        summary_files = SummaryFiles(self.layout.summary_json, self.layout.summary_tsv)
        missing = write_report_files(rows, self.report_files, title, summary_files) or dask_problem
        if missing:
            log.warning(
                "Warning: the report of this batch (%s) is incomplete: %s. The MSs and their "
                "summary are not affected.",
                self.report_files.directory,
                missing,
            )


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def failure_report(
    results: list[TaskResult],
    excluded: dict[str, str] | None = None,
    ended_by: str | None = None,
) -> str:
    """Every MS of the batch that is not done, with why, DP3's words and its log; the
    workers the batch gave no work (a DP3 that does not start there, a silent worker); and
    what ended the batch early (`ended_by`: a lost scheduler, no workers left), in full."""
    failed = [result for result in results if result.status == Status.FAILED]
    skipped = [result for result in results if result.status == Status.NOT_PROCESSED]
    lines = []
    if failed:
        lines.append(f"{len(failed)} of {len(results)} MS(s) failed:")
        for result in failed:
            lines.append(f"  {result.name} ({result.input}): {result.reason}")
            if result.error and result.error != result.reason:
                lines.append(f"      DP3: {result.error}")
            lines.append(f"      log: {result.log}")
    if skipped:
        lines.append(f"{len(skipped)} of {len(results)} MS(s) not processed:")
        # What ended the batch is said once, below, in full.
        early = ended_by.splitlines()[0] if ended_by else None
        reasons = dict.fromkeys(str(r.reason) for r in skipped if str(r.reason) != early)
        lines += [f"  {', '.join(r.name for r in skipped)}", *(f"  ({r})" for r in reasons)]
    if excluded:
        lines.append(
            f"{len(excluded)} worker(s) were left out of this batch (no DP3 task, or no more):"
        )
        lines += [f"  {worker}: {why}" for worker, why in sorted(excluded.items())]
    if ended_by:
        lines.append(f"The batch ended early. Error: {ended_by}")
    lines.append("Fix the cause and run again: only the MSs not done will be processed.")
    return "\n".join(lines)


def write_batch_result(path: Path, results: list[TaskResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            write_json_list(handle, results_to_json(results))
            handle.write("\n")
        temporary.replace(path)
    except OSError:  # a full disk: no half-written copy is left to take space
        temporary.unlink(missing_ok=True)
        raise


class _ForTheTerminal(logging.Filter):
    """Leaves out what is logged with `extra=FILE_ONLY` (dask's own warnings; an error the
    run prints once more at its very end)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "terminal", True)


def _configure_logging(log_file: str | None, run_log: Path | None = None) -> None:
    """To the terminal, the batch's log, and (appended) the run's own log."""
    terminal = logging.StreamHandler()
    terminal.addFilter(_ForTheTerminal())
    handlers: list[logging.Handler] = [terminal]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(QuietFileHandler(log_file))
    if run_log is not None:
        with contextlib.suppress(OSError):  # the batch's own log has every line anyway
            handlers.append(QuietFileHandler(run_log))
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
    for handler in log.handlers:
        handler.close()
    log.handlers[:] = handlers
    log.setLevel(logging.INFO)
    log.propagate = False
    file_log.handlers[:] = handlers[1:]
    file_log.propagate = False
    # dask's own chatter (worker start-up, lost connections, a comm closed as the embedded
    # cluster stops) adds nothing to our report. Importing distributed sets its loggers'
    # levels from dask's config, so they are set here after that import.
    import distributed  # noqa: F401

    # Also those given a level of their own (`distributed.client`: a reconnection cut short
    # as the batch stops after losing its scheduler logged a traceback).
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _leftovers_after_stop(run: BatchRun) -> str:
    """Remove the temporary outputs of this batch (and of any output the workflow knows), and
    say truthfully what remains."""
    names = _known_outputs(run.batch)
    remove_leftovers(run.layout.output_dir, names)
    remaining = [
        entry.name
        for entry in run.layout.output_dir.iterdir()
        if leftover_owner(entry.name) in names
    ]
    if remaining:
        return f"{len(remaining)} temporary output(s) could not be removed yet: {remaining}"
    return "no partial output was kept"


def main(specification: dict[str, Any], marker: str, log_file: str | None = None) -> int:
    """Entry point of the central job, given `BatchSpec.to_json()`; returns the process exit
    code.

    Failed MSs do not fail this job: their results go into the marker with the others, so
    that the report covers them; the workflow's `onsuccess` then fails the run."""
    _configure_logging(log_file)
    ensure_home()  # the embedded cluster's workers are threads of this process
    try:
        batch = BatchSpec.from_json(specification)
        # Parsed: the JSON (about 3 KB per MS) need not be held for the whole batch.
        del specification
    except ContractError as error:
        # The workflow's own rule layer made it: a mismatch is a bug, not a user's mistake.
        log.error("Error: %s; this is a bug of the workflow, please report it", error)
        return 2
    run_files = RunFiles(Path(batch.run_dir)) if batch.run_dir else None
    if run_files is not None:
        _configure_logging(log_file, run_files.log)
    layout = OutputLayout(Path(batch.output_dir))
    pid_file = layout.batch_pid(batch.batch_id)
    with contextlib.suppress(OSError):  # a full disk: Snakemake then signals only itself
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    total = len(batch.measurement_sets)
    log.info("batch %s: %d MS(s), output in %s", batch.batch_id, total, batch.output_dir)
    run = BatchRun(batch)
    ended_by = None
    try:
        run.run()
        results = run.final_results("not run")
    except (WorkersLost, SchedulerLost) as error:
        # In full once, at the end of the run (the failure report); a headline here.
        log.error("Stopping the batch: %s (more at the end of the run)", error.headline)
        log.info("Error: %s", error, extra=FILE_ONLY)
        ended_by = str(error)
        results = run.final_results(str(error).splitlines()[0])
    except (ClusterError, BatchError) as error:
        # Printed once, at the very end of the run (Snakefile `onerror`, from the failures
        # file); here only into the batch's log. Without that file, here too.
        try:
            layout.failures.write_text(f"Error: {error}\n")
            log.error("Error: %s", error, extra=FILE_ONLY)
        except OSError:
            log.error("Error: %s", error)
        return 2
    except OSError as error:  # the batch's own files (its guard, its lock) cannot be written
        log.error("Error: the batch could not go on: %s", write_problem(error))
        return 2
    except KeyboardInterrupt as interrupt:
        cause = getattr(interrupt, "cause", "an interrupt")
        done = sum(1 for result in run.results.values() if result.status == Status.DONE)
        chunks = sum(1 for result in run.chunk_results.values() if result.status == Status.DONE)
        log.error(
            "Interrupted (%s): %d of %d MS(s)%s finished before it and are kept; %s; run "
            "again to process the remaining MSs.",
            cause,
            done,
            total,
            f" and {chunks} frequency chunk(s)" if chunks else "",
            _leftovers_after_stop(run),
        )
        return 130
    finally:
        pid_file.unlink(missing_ok=True)
    done = sum(1 for result in results if result.status == Status.DONE)
    elsewhere = sum(1 for result in results if result.status == Status.UP_TO_DATE)
    log.info(
        "%d of %d MS(s) done%s in %.1f s; outputs in %s",
        done,
        total,
        f" ({elsewhere} more by another run)" if elsewhere else "",
        time.monotonic() - run.started,
        batch.output_dir,
    )
    excluded = run.excluded_workers()
    if done + elsewhere < total:
        # Shown once, at the very end of the run (Snakefile `onerror`), not here too.
        report = failure_report(results, excluded, ended_by)
        with contextlib.suppress(OSError):
            layout.failures.write_text(report + "\n")
    elif excluded:
        log.warning(
            "Warning: every MS is done, but %d worker(s) were left out of this batch:\n%s",
            len(excluded),
            "\n".join(f"  {worker}: {why}" for worker, why in sorted(excluded.items())),
        )
    try:
        write_batch_result(Path(marker), results)
    except OSError as error:
        log.error(
            "Error: could not write the result of this batch, %s. The MSs done are kept (each "
            "with its completion record); a rerun processes only the others.",
            write_problem(error, marker),
        )
        return 2
    run.write_reports(results)
    if run_files is not None:
        keep_with_the_run(run.report_files.dask, run_files.dask_report)
        keep_flagging_reports(results, run_files)
    return 0


def keep_with_the_run(source: Path, kept: Path) -> None:
    """A copy of one of the batch's files among the run's own (a missing source, or a full
    disk, only leaves it out: the batch's report has it)."""
    with contextlib.suppress(OSError):
        if source.is_file():
            shutil.copyfile(source, kept)


def keep_flagging_reports(results: list[TaskResult], run_files: RunFiles) -> None:
    """This batch's flagging reports among the run's own files (`qa/`): hard links where the
    filesystem allows (no second copy of the data), else copies. One that cannot be kept is
    left out: the output directory's `qa/` has it."""
    for result in results:
        statistics = result.flag_statistics or {}
        if result.status != Status.DONE:
            continue
        for key in FLAGGING_REPORT_FILES:
            source = Path(str(statistics.get(key) or ""))
            if not statistics.get(key) or not source.exists():
                continue
            kept = run_files.qa / source.name
            with contextlib.suppress(OSError):
                run_files.qa.mkdir(exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, kept, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(source), str(kept))


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem (an SDM elsewhere), or no hard links there
        shutil.copy2(source, destination)


def end_process(code: int) -> NoReturn:
    """End the central job once all is written: exit handlers run and output is flushed, but
    the interpreter's teardown of dask's and the dashboard's modules (0.3-0.5 s, on every run)
    is skipped."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
