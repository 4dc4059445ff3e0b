"""One DP3 run for one MS, as a dask task: temporary output, DP3 lifecycle, check, commit.

Runs on a dask worker. Each attempt writes to a fresh temporary directory beside the final
output; only a checked output with its completion record is renamed into place. DP3 dies
with the worker (PR_SET_PDEATHSIG) and is stopped when the client cancels the task, so no
orphan keeps running or holding an output.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from dp3batch.books.commit import BatchStopped, commit, remove_leftovers
from dp3batch.books.fingerprints import input_tree, output_tree
from dp3batch.books.layout import PARSET_NAME, OutputLayout, temporary_path
from dp3batch.books.qa import QALimits, qa_verdict
from dp3batch.books.records import CompletionRecord, read_record, write_record
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.books.write_errors import out_of_inodes, quota_problem, write_problem
from dp3batch.dask_stage.memory import (
    aoflagger_memory_gb,
    make_first_oom_victim,
    possibly_out_of_memory,
    recent_memory_limit,
    task_memory_share,
)
from dp3batch.dask_stage.output_check import (
    InputGrid,
    RowsOutOfTimeOrder,
    check_output,
    read_input_grid,
)
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.worker_deaths import STARTED_TOPIC
from dp3batch.dask_stage.worker_faults import (
    WorkerCannotRun,
    dp3_start_problem,
    own_package_identity,
    package_problem,
)
from dp3batch.dp3.command import hand_rerun_command
from dp3batch.dp3.install import dp3_environment, ensure_home
from dp3batch.dp3.log import parse_flag_counts, parse_step_times
from dp3batch.dp3.native import DEATH_SIGNAL_VARIABLE, dp3_program, sets_own_death_signal
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.dp3.parset import arguments_for_dp3, write_parset
from dp3batch.dp3.translation import run_parameters
from dp3batch.inputs.tables import (
    Shape,
    held_open,
    lock_message,
    read_shape,
    read_station_names,
    read_telescope_name,
    row_count,
    write_lock_holder,
)
from dp3batch.inputs.windows import windows_record
from dp3batch.report.flagging import (
    FlaggingReport,
    InputFlags,
    count_input_flags,
    prepare_flagging_report,
)

POLL_SECONDS = 0.5
# casacore waits forever for a lock; DP3 then prints this and nothing more.
LOCK_WAIT_TEXT = "waiting for"
LOCK_GRACE_SECONDS = 10.0
# Less free space than this on the output's filesystem after a failure: the disk was full.
DISK_FULL_BYTES = 16 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


# What a task reads while its DP3 runs (see run_dp3).
Read = TypeVar("Read")


class TaskCancelled(RuntimeError):
    """The client no longer wants this task (it went away or was interrupted)."""


class NoRows(RuntimeError):
    """The input MS has no rows (of the window read)."""


class InputLocked(RuntimeError):
    """Another process holds the input MS locked for writing."""


class DP3DidNotStart(RuntimeError):
    """DP3 could not start on this worker (see worker_faults.dp3_start_problem)."""


def _die_with_parent() -> None:
    """In the DP3 child: get SIGKILL when the worker thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@functools.cache
def _pdeathsig_launcher() -> tuple[str, ...] | None:
    """util-linux's `setpriv --pdeathsig KILL --`, where it has that option (2.33 and later):
    it sets the same death signal and execs DP3, so that starting DP3 needs no Python code
    in the child. A `preexec_fn` makes Python fork the whole worker (15 ms a task against
    5 ms, measured) and may deadlock in a process with threads, as a dask worker is."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        usage = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in usage else None


def current_dask_task() -> tuple[Any, Any, int, int | None]:
    """(worker, task key, threads, memory limit in bytes) when running in a dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None, None, os.cpu_count() or 1, None
    memory_limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return worker, worker.get_current_task(), worker.state.nthreads, memory_limit


def _cancelled(worker: Any, key: Any) -> bool:
    if worker is None:
        return False
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


def _attempted_in_this_batch(log_path: Path, batch_id: str | None) -> bool:
    """Whether an attempt of this batch already started on this MS (its log's header names
    the batch): then it may have left a temporary output. Unknown batch: assume so."""
    if batch_id is None:
        return True
    try:
        with open(log_path, errors="replace") as log:
            head = log.read(4096)  # the header's second line
    except OSError:
        return False
    return f"\n# batch {batch_id}\n" in head


def new_log(log_path: Path, header: str) -> None:
    """This attempt's log, begun with `header`, as a new file. A DP3 of an earlier attempt
    that still runs (its worker froze, and woke up after the MS was given to another) holds
    the old log open for appending: written over in place, the log would get that DP3's
    lines appended, and they would be read as this attempt's (its flag counts, its step
    times)."""
    with contextlib.suppress(FileNotFoundError):
        log_path.unlink()
    with open(log_path, "w") as log:
        log.write(header)


def last_error_line(log_path: Path) -> str:
    """DP3's most telling line: the last one that mentions an error, else the last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line and not line.startswith("#")]
    for line in reversed(lines):
        lowered = line.lower()
        if "error" in lowered or "exception" in lowered or "no such" in lowered:
            return line
    return lines[-1] if lines else "(DP3 printed nothing)"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


# What a task reads of its input and its output: held open while it does (see held_open).
INPUT_SUBTABLES = ("ANTENNA", "DATA_DESCRIPTION", "SPECTRAL_WINDOW", "OBSERVATION")
OUTPUT_SUBTABLES = ("ANTENNA", "SPECTRAL_WINDOW")


@dataclass(frozen=True)
class InputDescription:
    """What the completion record says of the input beside its shape and flags."""

    windows: dict[str, Any]
    telescope: str
    stations: tuple[str, ...]


@dataclass(frozen=True)
class DP3Exit:
    """How DP3 ended: its exit code (negative: the signal that killed it), its peak
    resident memory (`ru_maxrss`) and its CPU time (user + system), of it and the children
    it waited for, if known."""

    code: int
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None


def run_dp3(
    arguments: list[str], log_path: Path, worker: Any, key: Any, meanwhile: Callable[[], Read]
) -> tuple[DP3Exit, Read]:
    """How DP3 ended, and what `meanwhile` returned: it runs once DP3 has started (work of
    this task that need not wait for DP3); if it raises, DP3 is stopped."""
    # DP3 dies with the worker thread that starts it: the launcher asks for that itself,
    # else setpriv does, else (the slowest) Python between fork and exec.
    environment = dp3_environment()
    setpriv: tuple[str, ...] = ()
    preexec = None
    if sets_own_death_signal(arguments[0]):
        environment[DEATH_SIGNAL_VARIABLE] = str(os.getpid())
    elif (found := _pdeathsig_launcher()) is not None:
        setpriv = found
    else:
        preexec = _die_with_parent
    with open(log_path, "a") as log:
        try:
            process = subprocess.Popen(
                [*setpriv, *arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                preexec_fn=preexec,
                # Its own process group: stopping it also stops what a wrapper script started.
                start_new_session=True,
            )
        except OSError as error:  # not there, not executable: this worker's fault
            raise DP3DidNotStart(f"DP3 could not start: {error.strerror}: {arguments[0]}") from None
    # Before DP3 has read its input; what a wrapper script forks from then on inherits it.
    make_first_oom_victim(process.pid)
    lock_wait_seen = None
    try:
        read = meanwhile()
        while True:
            try:
                return _wait_for_exit(process, POLL_SECONDS), read
            except subprocess.TimeoutExpired:
                if _cancelled(worker, key):
                    raise TaskCancelled(f"task {key} was cancelled") from None
                if lock_wait_seen is None and _waits_for_lock(log_path):
                    lock_wait_seen = time.monotonic()
                if lock_wait_seen and time.monotonic() - lock_wait_seen > LOCK_GRACE_SECONDS:
                    raise InputLocked(
                        "DP3 waited for a table lock held by another process"
                    ) from None
    finally:
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()


def _wait_for_exit(process: subprocess.Popen, seconds: float) -> DP3Exit:
    """`process.wait(timeout=seconds)`, but woken by the exit itself: `Popen.wait` polls
    (every 50 ms), and each task would keep its DP3 slot idle for that long on average."""
    try:
        descriptor = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel), or already reaped
        return DP3Exit(process.wait(timeout=seconds))
    try:
        ready, _, _ = select.select([descriptor], [], [], seconds)
    finally:
        os.close(descriptor)
    if not ready:
        raise subprocess.TimeoutExpired(process.args, seconds)
    return _reap(process)


def _reap(process: subprocess.Popen) -> DP3Exit:
    """Reap the exited DP3 with `wait4`, which also says its peak memory (Linux: KiB) and
    its CPU time."""
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except ChildProcessError:  # reaped already
        return DP3Exit(process.wait())
    process.returncode = os.waitstatus_to_exitcode(status)  # as Popen.wait would set it
    return DP3Exit(
        process.returncode, usage.ru_maxrss * 1024, round(usage.ru_utime + usage.ru_stime, 3)
    )


def _log_tail(log_path: Path, size: int = 4096) -> str:
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log_path.stat().st_size - size))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _waits_for_lock(log_path: Path) -> bool:
    """casacore's "waiting for read-lock" (or write-lock) at the end of DP3's output."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log_path.stat().st_size - 4096))
            tail = log.read().decode(errors="replace").lower()
    except OSError:
        return False
    return LOCK_WAIT_TEXT in tail and "lock" in tail


def exit_description(exit_code: int) -> str:
    """`DP3 exited with code 1`, or the signal that killed it, by name."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        crash = " (DP3 crashed)" if name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE") else ""
        return f"DP3 was killed by {name}{crash}"
    return f"DP3 exited with code {exit_code}"


def dp3_failure(code: int, directory: Path, log_path: Path) -> str:
    """Why DP3 failed, as its user can act on it: the filesystem where its output goes is
    full, out of inodes or over the user's quota; else how DP3 ended."""
    return (
        disk_full_problem(directory)
        or quota_problem(_log_tail(log_path), directory)
        or exit_description(code)
    )


def unexpected_problem(error: Exception, directory: Path) -> str:
    """A task's own failure (not DP3's) in words: a full filesystem where the output goes,
    a failed write as `write_problem` words it (a quota, no inodes), else the error."""
    if problem := disk_full_problem(directory):
        return problem
    if isinstance(error, OSError):
        return write_problem(error)
    return f"{type(error).__name__}: {error}"


def disk_full_problem(directory: Path) -> str | None:
    """A failure with (almost) no space, or no free inodes, left where the output goes: say
    so plainly."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    if usage.free < DISK_FULL_BYTES:
        return (
            f"the filesystem of {directory} is full ({usage.free // 1024} KiB free): free "
            "space or choose another output_dir, then run again"
        )
    if inodes := out_of_inodes(directory):
        return (
            f"the filesystem of {directory} {inodes}: remove files or choose another "
            "output_dir, then run again"
        )
    return None


def input_gone(path: str) -> str | None:
    """Why the input can no longer be processed at all (it was deleted or replaced by
    something that is not an MS after the run was planned), or None."""
    if not os.path.exists(path):
        return f"the input {path} no longer exists (it was deleted after the run was planned)"
    if not os.path.isfile(os.path.join(path, "table.dat")):
        return f"the input {path} is no longer a MeasurementSet (it has no table.dat)"
    return None


def input_changed_since(path: str, fingerprint: str) -> str | None:
    """Whether the input changed while DP3 read it (another program rewrote or replaced it):
    the output would be made from data that no longer exists."""
    try:
        unchanged = input_tree(Path(path)).fingerprint == fingerprint
    except OSError:
        unchanged = False
    if unchanged:
        return None
    return (
        f"input changed while it was processed: a file of {path} changed, appeared or went "
        "away while DP3 ran; nothing was committed. Run again when it is no longer written "
        "to: it is then processed as it is"
    )


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class TaskStart:
    """Where and when a task (a run of the chain, or a join) started, and the result it
    reports until it has an outcome (NOT_PROCESSED)."""

    worker: Any
    key: Any
    threads: int
    memory: int | None
    worker_address: str
    started: float
    result: TaskResult


def start_task(task: Task) -> TaskStart:
    """The start of every task on a worker: which worker, and a refusal (WorkerCannotRun)
    where it runs other code than the batch."""
    worker, key, threads, memory_limit = current_dask_task()
    ensure_home()  # an external worker started without one
    worker_address = getattr(worker, "address", None) or socket.gethostname()
    if worker is not None:  # a worker that dies from now on dies running it (worker_deaths)
        worker.log_event(STARTED_TOPIC, {"key": str(key), "worker": worker_address})
    if task.code_digest is not None:  # a worker that runs other code must not run it
        problem = package_problem(own_package_identity(), {"digest": task.code_digest})
        if problem is not None:
            raise WorkerCannotRun(worker_address, problem)
    result = TaskResult(
        name=task.name,
        input=task.input,
        output=task.output,
        log=str(Path(task.log)),
        worker=worker_address,
        numthreads=threads,
        started=now(),
        status=Status.NOT_PROCESSED,
        size_estimate_bytes=task.size or None,
    )
    return TaskStart(worker, key, threads, memory_limit, worker_address, time.time(), result)


def remove_own_leftovers(output: Path, log_path: Path, batch_id: str | None) -> None:
    """What an earlier attempt of this batch left of `output` (a killed worker's temporary
    copy): the central job removed those of earlier runs once, so the directory (thousands of
    entries) is scanned only when the task's log says this batch tried it before."""
    if _attempted_in_this_batch(log_path, batch_id):
        remove_leftovers(output.parent, {output.name})


def process_measurement_set(task: Task) -> TaskResult:
    """Run the chain on one MS and commit its output; returns a result for the report.

    The output's expected shape is derived from the input and the parameters (see
    output_check). A DP3 failure is a result (status "failed"), not an exception, so dask
    does not retry it; lost workers are retried by the scheduler.
    """
    stages = Stages(task)
    for _ in stages:  # both stages, in this thread
        pass
    assert stages.result is not None
    return stages.result


class Stages:
    """The run of one MS as two stages, for process_group: the first `next` prepares and
    runs DP3 (calling `beside` while DP3 runs), the second checks and commits the output;
    it ends (StopIteration) with `result` set, after the first stage if that ended the run.
    The second stage needs no DP3 slot: it may run while the next MS's DP3 does."""

    def __init__(self, task: Task, beside: Callable[[], None] | None = None):
        self._stages = _stages(task, beside)
        self.result: TaskResult | None = None

    def __iter__(self) -> Stages:
        return self

    def __next__(self) -> None:
        try:
            next(self._stages)
        except StopIteration as end:
            self.result = end.value
            raise StopIteration from None

    def close(self) -> None:
        """Abandon the run between its stages: its temporary output is removed."""
        self._stages.close()


def committed_by_this_batch(task: Task) -> TaskResult | None:
    """The result of an MS whose output an earlier attempt of this batch committed (its
    worker died, or its group's did, before the result got back): not run again."""
    if task.batch_id is None:
        return None
    record = read_record(task.output)
    if record is None or record.batch_id != task.batch_id:
        return None
    return TaskResult.from_record(record, str(Path(task.log)))


def _stages(task: Task, beside: Callable[[], None] | None = None):
    done = committed_by_this_batch(task)
    if done is not None:
        return done
    start = start_task(task)
    worker, key, threads, memory_limit = start.worker, start.key, start.threads, start.memory
    worker_address, started, result = start.worker_address, start.started, start.result
    output = Path(task.output)
    log_path = Path(task.log)
    temporary = temporary_path(output)
    # A worker's share of memory, capped by what this host's limits leave it (an external
    # worker's own limit is dask's guess, blind to a batch job's cgroup).
    host_limit = recent_memory_limit()
    share = task_memory_share(memory_limit, host_limit)
    parameters = task.parameters
    # One spectral window per run: the item's band (an MS of several windows is several
    # items), else the steps' own `msin.band`, if any.
    reading = parameters.with_band(task.band)
    doing = "preparing the run"  # for a failure that is not DP3's: what was being done
    flagging: FlaggingReport | None = None
    try:
        missing = input_gone(task.input)
        if missing:  # deleted (or replaced) after the run was planned
            return failed(result, started, log_path, missing, missing)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_own_leftovers(output, log_path, task.batch_id)
        input_state = input_tree(Path(task.input))
        memory_gb = aoflagger_memory_gb(share)
        run = run_parameters(reading, task.input, str(temporary), threads, memory_gb)
        doing = "writing DP3's log"
        program = dp3_program(task.dp3_executable, task.dp3_version)
        arguments = dp3_command(program, run, log_path.with_suffix(".parset"))
        new_log(
            log_path,
            f"# {task.name}: DP3 on {worker_address} with {threads} thread(s)\n"
            f"# batch {task.batch_id}\n# started {result.started}\n"
            f"# command: {' '.join(arguments)}\n",
        )
        holder = write_lock_holder(task.input) or task.locked_by
        if holder is not None:
            # Also when the lock went after planning: the MS was not inspected then.
            return failed(result, started, log_path, lock_message(task.input, holder), "")

        def read_input() -> tuple[Shape, InputGrid, InputFlags, InputDescription]:
            # While DP3 runs: casacore's first import and the reads of the input cost this
            # task 0.1 s, which would otherwise pass between two DP3 runs of its worker.
            with held_open(task.input, INPUT_SUBTABLES):
                if row_count(task.input) == 0:  # DP3 crashes on it (SIGSEGV): stopped now
                    raise NoRows("the input MS has no rows: there is nothing to process")
                shape, input_flags = read_input_flags(task.input, reading)
                grid = read_input_grid(task.input, reading)
                described = InputDescription(
                    windows_record(task.input),
                    read_telescope_name(task.input),
                    tuple(read_station_names(task.input)),
                )
            if beside is not None:  # the previous MS's second stage (see process_group)
                beside()
            return shape, grid, input_flags, described

        doing = "running DP3"
        dp3_started = time.monotonic()
        exited, (shape_in, grid, input_flags, described) = run_dp3(
            arguments, log_path, worker, key, read_input
        )
        result = replace(
            result,
            peak_memory_bytes=exited.peak_memory_bytes,
            dp3_cpu_seconds=exited.cpu_seconds,
        )
        if exited.code != 0 and (problem := dp3_start_problem(exited.code, _log_tail(log_path))):
            raise DP3DidNotStart(problem)
        if exited.code != 0:
            reason = dp3_failure(exited.code, output.parent, log_path)
            if exited.code == -signal.SIGKILL:  # DP3 had no say: its last line is progress
                reason += ": " + possibly_out_of_memory(share, host_limit, result.peak_memory_bytes)
                return failed(result, started, log_path, reason, reason)
            return failed(result, started, log_path, reason)
        yield  # DP3 is done: what follows needs no DP3 slot (see process_group)
        doing = "checking the output"
        with held_open(temporary, OUTPUT_SUBTABLES):
            shape_out = read_shape(str(temporary), with_flags=True)
            dp3_output = log_path.read_text(errors="replace")  # read once, parsed three times
            expected, problems = check_output(grid, reading, dp3_output, shape_out)
            required_files = parameters.required_output_files()
            problems += [
                f"DP3 wrote no {name} into the output"
                for name in required_files
                if not (temporary / name).exists()
            ]
            if problems:
                problem = "output check failed: " + "; ".join(problems)
                return failed(result, started, log_path, problem, problem)
            flagging = flagging_report(
                task, temporary, dp3_output, input_flags, log_path, time.monotonic() - dp3_started
            )
        doing = f"writing {PARSET_NAME}"
        finished = now()
        final_run = run_parameters(reading, task.input, task.output, threads, memory_gb)
        rerun = hand_rerun_command(
            task.dp3_executable, task.output, str(output / PARSET_NAME), reading
        )
        header = (
            f"DP3 parset of {task.output}, made {finished} by DP3 {task.dp3_version}.\n"
            "Rerun by hand (with the environment activated) into a new MS, keeping this one:\n"
            f"  {rerun}\n"
            "(Writing msout itself would replace this output and its completion record. The "
            "run itself wrote to a temporary path that was renamed to msout on success.)"
        )
        write_parset(temporary / PARSET_NAME, final_run, header)
        doing = "writing the completion record"
        # After every read of the output: a damaged output no longer matches it.
        output_state = output_tree(temporary)
        record = CompletionRecord(
            name=task.name,
            input=task.input,
            output=task.output,
            input_fingerprint=input_state.fingerprint,
            band=task.band,
            windows=described.windows,
            parameters=tuple(parameters.pairs()),
            parameters_fingerprint=task.parameters_fingerprint,
            extra_inputs_fingerprint=task.extra_inputs_fingerprint,
            dp3_version=task.dp3_version,
            telescope=described.telescope,
            stations=described.stations,
            aoflagger_strategies=parameters.aoflagger_strategies(),
            dp3_executable=task.dp3_executable,
            dp3_arguments=tuple(arguments[1:]),
            worker=worker_address,
            numthreads=threads,
            started=str(result.started),
            finished=finished,
            duration_seconds=round(time.time() - started, 3),
            size_estimate_bytes=task.size or None,
            shape_before=shape_in.as_dict(),
            shape_after=shape_out.as_dict(),
            shape_expected=expected.as_dict() if expected else None,
            required_files=tuple(required_files),
            output_bytes=output_state.total_bytes,
            step_seconds=parse_step_times(dp3_output),
            flags_by_step=parse_flag_counts(dp3_output),
            output_fingerprint=output_state.fingerprint,
            input_files=input_state.files,
            output_files=output_state.files,
            batch_id=task.batch_id,
            peak_memory_bytes=exited.peak_memory_bytes,
            dp3_cpu_seconds=exited.cpu_seconds,
            flag_statistics=flagging.statistics if flagging else None,
        )
        # Last, after every read of the input: what DP3 read is what the record describes.
        changed = input_changed_since(task.input, input_state.fingerprint)
        if changed:
            return failed(result, started, log_path, changed, changed)
        write_record(temporary, record)
        doing = "committing the output"
        commit(temporary, output, task.guard, None if key is None else str(key))
        if flagging:
            flagging.publish()
    except (TaskCancelled, BatchStopped):
        raise  # the temporary output goes in `finally`
    except DP3DidNotStart as error:
        # Not the MS's fault: the central job gives it to another worker.
        with contextlib.suppress(OSError):
            with open(log_path, "a") as log:
                log.write(f"# {error} on {worker_address}: given to another worker\n")
        raise WorkerCannotRun(worker_address, str(error)) from None
    except (NoRows, RowsOutOfTimeOrder) as error:
        return failed(result, started, log_path, str(error), str(error))
    except InputLocked as error:
        reason = lock_message(task.input, write_lock_holder(task.input) or 0)
        return failed(result, started, log_path, reason, str(error))
    except Exception as error:  # not DP3's failure: DP3's last line would mislead
        problem = unexpected_problem(error, output.parent)
        reason = f"while {doing}: {problem}"
        return failed(result, started, log_path, reason, reason)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
        if flagging:
            flagging.discard()  # unless published
    return TaskResult.from_record(record, result.log)


def read_input_flags(path: str, reading: DP3Parameters) -> tuple[Shape, InputFlags]:
    """The input's shape and the flags it already has (per antenna and per channel, of the
    channels DP3 reads): its FLAG column is read once for both."""
    band = reading.selected_band()
    startchan, nchan = (_plain_integer(reading.msin.get(key)) for key in ("startchan", "nchan"))
    whole_window = not startchan and not nchan
    counts = count_input_flags(path, band, startchan or 0, nchan or 0)
    shape = read_shape(path, with_flags=not whole_window, band=band)
    if whole_window:
        shape = replace(shape, flagged_fraction=counts.fraction)
    return shape, counts


def _plain_integer(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None  # an expression DP3 evaluates: all channels are counted


# Under `qa.flagging_report: auto`, outputs whose DP3 run took at least this long get the
# report's files: their ~0.7 s of CPU is then under 5 % of the task.
FLAGGING_FILES_MIN_DP3_SECONDS = 20.0


def wants_flagging_files(task: Task, dp3_seconds: float) -> Callable[[Mapping[str, Any]], bool]:
    """Whether an output gets its flagging report's files (config `qa.flagging_report`),
    judged from its statistics: under `auto`, when they are cheap beside the task or the
    output is suspect (where an operator looks first)."""

    def decide(statistics: Mapping[str, Any]) -> bool:
        if task.flagging_report == "always":
            return True
        if task.flagging_report == "never":
            return False
        if dp3_seconds >= FLAGGING_FILES_MIN_DP3_SECONDS:
            return True
        return qa_verdict(statistics, QALimits.from_config(task.qa)).suspect

    return decide


def flagging_report(
    task: Task,
    output: Path,
    dp3_output: str,
    input_flags: InputFlags,
    log_path: Path,
    dp3_seconds: float,
) -> FlaggingReport | None:
    """The output's flagging report (published after the commit), or None when it could not
    be made: the output is fine all the same, and the MS's log says why."""
    try:
        return prepare_flagging_report(
            output,
            OutputLayout(Path(task.output).parent).qa_dir,
            task.name,
            dp3_output,
            input_flags,
            wants_flagging_files(task, dp3_seconds),
            final=task.output,
        )
    except Exception as error:  # the report must never cost the MS its output
        with contextlib.suppress(OSError), open(log_path, "a") as log:
            log.write(f"# flagging report failed: {type(error).__name__}: {error}\n")
        return None


# Above this many bytes of arguments, DP3 gets a parset file instead: Linux refuses an argument
# list over ~2 MB, or a single argument over 128 KiB ("Argument list too long").
ARGUMENTS_LIMIT_BYTES = 32 * 1024


def dp3_command(executable: str, run: list[tuple[str, str]], parset_path: Path) -> list[str]:
    """DP3's command line: `key=value` arguments, or for a long chain `DP3 <parset>` with the
    run's parset written to `parset_path` (beside the MS's log)."""
    arguments = arguments_for_dp3(run)
    if sum(len(argument) + 1 for argument in arguments) <= ARGUMENTS_LIMIT_BYTES:
        return [executable, *arguments]
    write_parset(parset_path, run, "The DP3 run of this MS (too long for arguments).")
    return [executable, str(parset_path)]


def failed(
    result: TaskResult, started: float, log_path: Path, reason: str, error: str | None = None
) -> TaskResult:
    """A failed result. `error` is the line to show beside the reason; by default DP3's most
    telling line (not for failures DP3 had no part in, such as the output check)."""
    error_line = last_error_line(log_path) if error is None else error
    with contextlib.suppress(OSError):  # a full disk must not hide the failure itself
        with open(log_path, "a") as log:
            log.write(f"# FAILED: {reason}\n")
    return replace(
        result,
        status=Status.FAILED,
        reason=reason,
        error=error_line,
        finished=now(),
        duration_seconds=round(time.time() - started, 3),
    )
