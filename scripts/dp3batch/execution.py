"""One DP3 run for one MS, as a dask task: temporary output, DP3 lifecycle, check, commit.

Runs on a dask worker. Each attempt writes to a fresh temporary directory beside the final
output; only a checked output with its completion record is renamed into place. DP3 dies
with the worker (PR_SET_PDEATHSIG) and is stopped when the client cancels the task, so no
orphan keeps running or holding an output.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from dp3batch.completion import PARSET_NAME, input_fingerprint, write_record
from dp3batch.dp3 import (
    as_arguments,
    as_parset,
    dp3_environment,
    required_output_files,
    run_parameters,
)
from dp3batch.dp3_command import hand_rerun_command
from dp3batch.measurement_set import read_shape, shape_problems
from dp3batch.report import parse_step_times

TEMPORARY_MARK = ".tmp-"
REPLACED_MARK = ".old-"
POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


class TaskCancelled(RuntimeError):
    """The client no longer wants this task (it went away or was interrupted)."""


def temporary_path(output: Path) -> Path:
    return output.parent / f".{output.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:12]}"


def _leftover_owner(file_name: str) -> str | None:
    """The output a leftover belongs to (`.X.ms.tmp-0a1b` → `X.ms`), or None."""
    if file_name.startswith("."):
        for mark in (TEMPORARY_MARK, REPLACED_MARK):
            if mark in file_name:
                return file_name[1 : file_name.rindex(mark)]
    return None


def remove_leftovers(output_dir: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary or replaced copies that killed runs left in `output_dir`: of the
    output `name` only, or of every output (the caller then holds the batch lock)."""
    if not output_dir.is_dir():
        return []
    removed = []
    for path in output_dir.iterdir():
        owner = _leftover_owner(path.name)
        if owner is not None and name in (None, owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _die_with_parent() -> None:
    """In the DP3 child: get SIGKILL when the worker thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _current_dask_task() -> tuple[Any, Any, int, int | None]:
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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _commit(temporary: Path, output: Path) -> None:
    """Put the finished output in place; an older output is moved aside first, then removed."""
    replaced = None
    if output.exists():
        replaced = output.parent / f".{output.name}{REPLACED_MARK}{uuid.uuid4().hex[:12]}"
        os.rename(output, replaced)
    os.rename(temporary, output)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _run_dp3(arguments: list[str], log_path: Path, worker: Any, key: Any) -> int:
    environment = dp3_environment()
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            arguments,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            preexec_fn=_die_with_parent,
            # Its own process group: stopping it also stops what a wrapper script started.
            start_new_session=True,
        )
    try:
        while True:
            try:
                return process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if _cancelled(worker, key):
                    raise TaskCancelled(f"task {key} was cancelled") from None
    finally:
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def process_measurement_set(task: dict[str, Any]) -> dict[str, Any]:
    """Run the chain on one MS and commit its output; returns a result for the report.

    `task` holds: name, input, output, log, dp3_executable, dp3_version, parameters,
    parameters_fingerprint, extra_inputs_fingerprint, time_factor, freq_factor,
    rows_may_change. A DP3 failure is a result (status "failed"), not an exception, so dask
    does not retry it; lost workers are retried by the scheduler.
    """
    worker, key, threads, memory_limit = _current_dask_task()
    worker_address = getattr(worker, "address", None) or socket.gethostname()
    output = Path(task["output"])
    log_path = Path(task["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(output.parent, output.name)
    started = time.time()
    result: dict[str, Any] = {
        "name": task["name"],
        "input": task["input"],
        "output": task["output"],
        "log": str(log_path),
        "worker": worker_address,
        "numthreads": threads,
        "started": _now(),
    }
    temporary = temporary_path(output)
    fingerprint = input_fingerprint(Path(task["input"]))
    memory_gb = memory_limit / 1e9 if memory_limit else None
    parameters = [tuple(pair) for pair in task["parameters"]]
    run = run_parameters(parameters, task["input"], str(temporary), threads, memory_gb)
    arguments = [task["dp3_executable"], *as_arguments(run)]
    with open(log_path, "w") as log:
        log.write(f"# {task['name']}: DP3 on {worker_address} with {threads} thread(s)\n")
        log.write(f"# started {result['started']}\n# command: {' '.join(arguments)}\n")
    try:
        shape_in = read_shape(task["input"], with_flags=True)
        exit_code = _run_dp3(arguments, log_path, worker, key)
        if exit_code != 0:
            return _failed(result, started, log_path, f"DP3 exited with code {exit_code}")
        shape_out = read_shape(str(temporary), with_flags=True)
        problems = shape_problems(
            shape_in,
            shape_out,
            task["time_factor"],
            task["freq_factor"],
            task.get("rows_may_change", False),
        )
        required_files = required_output_files(parameters)
        problems += [
            f"DP3 wrote no {name} into the output"
            for name in required_files
            if not (temporary / name).exists()
        ]
        if problems:
            return _failed(result, started, log_path, "output check failed: " + "; ".join(problems))
        finished = _now()
        final_run = run_parameters(parameters, task["input"], task["output"], threads, memory_gb)
        rerun = hand_rerun_command(
            task["dp3_executable"], task["output"], str(output / PARSET_NAME), parameters
        )
        header = (
            f"DP3 parset of {task['output']}, made {finished} by DP3 {task['dp3_version']}.\n"
            "Rerun by hand (with the environment activated) into a new MS, keeping this one:\n"
            f"  {rerun}\n"
            "(Writing msout itself would replace this output and its completion record. The "
            "run itself wrote to a temporary path that was renamed to msout on success.)"
        )
        (temporary / PARSET_NAME).write_text(as_parset(final_run, header))
        record = {
            "name": task["name"],
            "input": task["input"],
            "output": task["output"],
            "input_fingerprint": fingerprint,
            "parameters": [list(pair) for pair in parameters],
            "parameters_fingerprint": task["parameters_fingerprint"],
            "extra_inputs_fingerprint": task["extra_inputs_fingerprint"],
            "dp3_version": task["dp3_version"],
            "dp3_executable": task["dp3_executable"],
            "dp3_arguments": arguments[1:],
            "worker": worker_address,
            "numthreads": threads,
            "started": result["started"],
            "finished": finished,
            "duration_seconds": round(time.time() - started, 3),
            "shape_before": shape_in.as_dict(),
            "shape_after": shape_out.as_dict(),
            # What must sit beside the MS for the output to count as complete.
            "required_files": required_files,
            "output_bytes": _disk_usage(temporary),
            "step_seconds": parse_step_times(log_path.read_text(errors="replace")),
        }
        write_record(temporary, record)
        _commit(temporary, output)
    except TaskCancelled:
        raise  # the temporary output goes in `finally`
    except Exception as error:
        return _failed(result, started, log_path, f"{type(error).__name__}: {error}")
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    result.update(
        status="done",
        finished=record["finished"],
        duration_seconds=record["duration_seconds"],
        shape_before=record["shape_before"],
        shape_after=record["shape_after"],
        output_bytes=record["output_bytes"],
        step_seconds=record["step_seconds"],
        dp3_version=record["dp3_version"],
    )
    return result


def _disk_usage(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _failed(result: dict, started: float, log_path: Path, reason: str) -> dict:
    error_line = last_error_line(log_path)
    with open(log_path, "a") as log:
        log.write(f"# FAILED: {reason}\n")
    result.update(
        status="failed",
        reason=reason,
        error=error_line,
        finished=_now(),
        duration_seconds=round(time.time() - started, 3),
    )
    return result
