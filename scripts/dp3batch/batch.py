"""The fan-out: one dask task per pending MS, results as they arrive, a clear end report.

Runs in the central Snakemake job. It holds a lock on the output directory for the whole
batch, cleans leftovers of killed runs, checks the cluster before submitting anything, and
stops every DP3 when it is interrupted or its parent (Snakemake) disappears.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dp3batch.cluster import (
    PROBE_PREFIX,
    ClusterError,
    available_cores,
    check_worker_paths,
    connect,
    embedded_cluster,
    local_cluster_size,
    wait_for_process_workers,
)
from dp3batch.completion import ms_log_file
from dp3batch.dp3 import file_parameters
from dp3batch.execution import process_measurement_set, remove_leftovers
from dp3batch.report import dask_performance_report, dask_report_path
from dp3batch.task_keys import task_keys

log = logging.getLogger("dp3batch")

LOCK_NAME = ".dp3batch.lock"
LOCK_WAIT_SECONDS = 30
FAILURES_NAME = "failed.txt"


class BatchError(RuntimeError):
    """The batch cannot start; the message says why and what to do."""


@contextlib.contextmanager
def output_dir_lock(output_dir: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One batch at a time per output directory. The kernel drops the lock when its holder
    dies, so a killed run never blocks the next one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir / LOCK_NAME
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise BatchError(
                        f"{output_dir} is being processed by another run ({holder}); wait for "
                        "it to finish or stop it, then run again"
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Interrupted(KeyboardInterrupt):
    pass


@contextlib.contextmanager
def interruptible() -> Iterator[threading.Event]:
    """Turn SIGTERM into KeyboardInterrupt, and yield an event that is set when our parent
    process (Snakemake) dies: a killed Snakemake must not leave DP3s running."""
    parent = os.getppid()
    orphaned = threading.Event()
    stop = threading.Event()

    def watch_parent() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                log.error("Snakemake (pid %d) has gone: stopping the batch", parent)
                orphaned.set()
                return

    def on_sigterm(signum, frame):
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    watcher = threading.Thread(target=watch_parent, daemon=True)
    watcher.start()
    try:
        yield orphaned
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)


def _package_zip(directory: Path) -> Path:
    """This package as a zip, for workers of an external cluster that do not have it."""
    package = Path(__file__).resolve().parent
    archive = directory / "dp3batch.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for source in sorted(package.glob("*.py")):
            bundle.write(source, f"dp3batch/{source.name}")
    return archive


@contextlib.contextmanager
def cluster_client(batch: dict[str, Any]) -> Iterator:
    scheduler = batch.get("scheduler")
    if scheduler:
        with connect(scheduler) as client:
            yield client
        return
    local = batch.get("local_cluster") or {}
    n_workers, threads = local_cluster_size(
        available_cores(),
        len(batch["measurement_sets"]),
        local.get("n_workers"),
        local.get("threads_per_worker"),
    )
    log.info("starting an embedded dask cluster: %d worker(s) x %d thread(s)", n_workers, threads)
    with embedded_cluster(n_workers, threads) as client:
        yield client


# What every task of a batch shares (see execution.process_measurement_set).
SHARED_TASK_KEYS = (
    "dp3_executable",
    "dp3_version",
    "parameters",
    "parameters_fingerprint",
    "extra_inputs_fingerprint",
    "time_factor",
    "freq_factor",
    "rows_may_change",
)


def task_for(batch: dict[str, Any], ms: dict[str, Any]) -> dict[str, Any]:
    """The plain-data task of one MS of a batch (what a worker receives)."""
    return {
        **{key: batch[key] for key in SHARED_TASK_KEYS},
        "name": ms["name"],
        "input": ms["input"],
        "output": ms["output"],
        "log": ms_log_file(batch["log_dir"], ms["name"]),
    }


def shared_paths(batch: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What every worker must see at the same absolute path as this machine, as (what, path,
    need) for `check_worker_paths`: a sample of the inputs (the first and the last), the
    files the steps read, DP3, and the output and log directories."""
    inputs = [ms["input"] for ms in batch["measurement_sets"]]
    paths = [("input MS", path, "read") for path in dict.fromkeys(inputs[:1] + inputs[-1:])]
    paths += [(f"{key} file", path, "read") for key, path in file_parameters(batch["parameters"])]
    paths.append(("DP3 executable", batch["dp3_executable"], "run"))
    paths.append(("output directory", batch["output_dir"], "write"))
    paths.append(("log directory", batch["log_dir"], "write"))
    return paths


def _preflight(client, batch: dict[str, Any]) -> None:
    address = batch.get("scheduler") or client.scheduler.address
    all_workers = wait_for_process_workers(client, address)
    workers = [worker for worker in all_workers if worker.process_slots >= 1]
    for worker in all_workers:
        slots = f"{worker.process_slots:g} DP3 slot(s)" if worker.process_slots else "NO process"
        log.info("  worker %s: %d thread(s), %s", worker.address, worker.threads, slots)
    ignored = len(all_workers) - len(workers)
    if ignored:
        log.warning('%d worker(s) without the "process" resource will get no DP3 task', ignored)
    if any(worker.process_slots > 1 for worker in workers):
        log.warning(
            'a worker holds "process" > 1: it may run several DP3s at once, each with all of '
            'its threads (oversubscription); start workers with --resources "process=1"'
        )
    dashboard = getattr(client, "dashboard_link", None)
    log.info(
        "%d worker(s) can run DP3, %d thread(s) in all; dashboard: %s",
        len(workers),
        sum(worker.threads for worker in workers),
        dashboard,
    )
    # Workers on other hosts must see the same files at the same paths (a shared filesystem).
    check_worker_paths(client, [worker.address for worker in workers], shared_paths(batch))


def _progress(done: int, total: int, elapsed: float) -> str:
    """`[n/N]`, an ETA from the pace so far, and a bar when a person is watching."""
    remaining = (total - done) * elapsed / done if done else 0.0
    eta = f"ETA {datetime.timedelta(seconds=round(remaining))}" if done < total else "last"
    bar = ""
    if sys.stderr.isatty():
        filled = round(20 * done / total)
        bar = "|" + "#" * filled + "." * (20 - filled) + "| "
    return f"{bar}[{done}/{total}, {eta}]"


def _report_line(done: int, total: int, elapsed: float, result: dict[str, Any]) -> str:
    duration = result.get("duration_seconds", 0.0)
    where = f"on {result.get('worker')} ({result.get('numthreads')} thread(s))"
    progress = _progress(done, total, elapsed)
    if result["status"] == "done":
        return f"{progress} {result['name']}: done in {duration:.1f} s {where}"
    return (
        f"{progress} {result['name']}: FAILED after {duration:.1f} s {where}: "
        f"{result.get('reason')}; DP3 said: {result.get('error')}; log: {result['log']}"
    )


def run_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Process every MS of the batch; return one result per MS (status done/failed)."""
    output_dir = Path(batch["output_dir"])
    Path(batch["log_dir"]).mkdir(parents=True, exist_ok=True)
    with output_dir_lock(output_dir), interruptible() as orphaned:
        for leftover in remove_leftovers(output_dir):
            log.info("removed %s, left behind by an interrupted run", leftover)
        for directory in (output_dir, Path(batch["log_dir"])):
            for probe in directory.glob(f"{PROBE_PREFIX}*"):  # of a path check cut short
                probe.unlink(missing_ok=True)
        with cluster_client(batch) as client, tempfile.TemporaryDirectory() as scratch:
            _preflight(client, batch)
            if batch.get("scheduler"):
                client.upload_file(str(_package_zip(Path(scratch))), load=True)
            report = dask_report_path(batch["output_dir"], batch["batch_id"])
            with dask_performance_report(client, report):
                return _fan_out(client, batch, orphaned)


def _fan_out(client, batch: dict[str, Any], orphaned: threading.Event) -> list[dict[str, Any]]:
    from distributed import as_completed

    measurement_sets = batch["measurement_sets"]
    total = len(measurement_sets)
    futures = {}
    keys = task_keys([ms["name"] for ms in measurement_sets], batch["batch_id"])
    for ms in measurement_sets:
        future = client.submit(
            process_measurement_set,
            task_for(batch, ms),
            key=keys[ms["name"]],
            resources={"process": 1},
            pure=False,
        )
        futures[future] = ms
    log.info("submitted %d DP3 task(s)", total)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        # Poll rather than block, so that an orphaned batch notices within a second.
        arrivals = as_completed(list(futures), loop=client.loop)
        while not arrivals.is_empty():
            if orphaned.is_set():
                raise KeyboardInterrupt
            if not arrivals.has_ready():
                time.sleep(0.2)
                continue
            for future in arrivals.next_batch(block=False):
                result = _result_of(future, futures[future], batch)
                results.append(result)
                line = _report_line(len(results), total, time.monotonic() - started, result)
                (log.info if result["status"] == "done" else log.error)(line)
    except KeyboardInterrupt:
        log.error("interrupted: stopping %d running DP3 task(s)", total - len(results))
        client.cancel(list(futures), force=True)
        time.sleep(1.0)  # workers poll for cancellation twice a second
        raise
    return results


def _result_of(future, ms: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as error:  # a lost worker (KilledWorker) or an internal error
        lost = type(error).__name__ == "KilledWorker"
        return {
            "name": ms["name"],
            "input": ms["input"],
            "output": ms["output"],
            "log": ms_log_file(batch["log_dir"], ms["name"]),
            "status": "failed",
            "reason": "its worker died during every attempt" if lost else type(error).__name__,
            "error": str(error),
        }


def failure_report(results: list[dict[str, Any]]) -> str:
    failed = [result for result in results if result["status"] != "done"]
    lines = [f"{len(failed)} of {len(results)} MS(s) failed:"]
    for result in failed:
        lines.append(f"  {result['name']} ({result['input']}): {result.get('reason')}")
        lines.append(f"      DP3: {result.get('error')}")
        lines.append(f"      log: {result['log']}")
    lines.append("Fix the cause and run again: only the failed MSs will be processed.")
    return "\n".join(lines)


def write_batch_result(path: Path, results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    temporary.replace(path)


def _configure_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
    log.handlers[:] = handlers
    log.setLevel(logging.INFO)
    log.propagate = False
    # dask's own chatter (worker start-up, lost connections) adds nothing to our report.
    logging.getLogger("distributed").setLevel(logging.ERROR)


def main(batch: dict[str, Any], marker: str, log_file: str | None = None) -> int:
    """Entry point of the central job; returns the process exit code.

    Failed MSs do not fail this job: their results go into the marker with the others, so
    that the report covers them; the `check_batch` rule then fails the run."""
    _configure_logging(log_file)
    total = len(batch["measurement_sets"])
    log.info("batch %s: %d MS(s), output in %s", batch["batch_id"], total, batch["output_dir"])
    started = time.monotonic()
    failures = Path(batch["log_dir"]) / FAILURES_NAME
    failures.unlink(missing_ok=True)
    try:
        results = run_batch(batch)
    except (ClusterError, BatchError) as error:
        log.error("Error: %s", error)
        failures.write_text(f"Error: {error}\n")
        return 2
    except KeyboardInterrupt:
        log.error(
            "Interrupted: no partial output was kept; run again to process the remaining MSs."
        )
        return 130
    done = sum(1 for result in results if result["status"] == "done")
    log.info(
        "%d of %d MS(s) done in %.1f s; outputs in %s",
        done,
        total,
        time.monotonic() - started,
        batch["output_dir"],
    )
    if done < total:
        report = failure_report(results)
        log.error(report)
        failures.write_text(report + "\n")
    write_batch_result(Path(marker), results)
    return 0


def check_batch(marker: str, log_file: str | None = None) -> int:
    """Exit code of the run: non-zero, with the failure report, if any MS of the batch failed."""
    results = json.loads(Path(marker).read_text())
    report = "" if all(r["status"] == "done" for r in results) else failure_report(results)
    if log_file:
        Path(log_file).write_text(report + "\n" if report else "all MSs done\n")
    if report:
        print(report, file=sys.stderr)
        return 1
    return 0


CENTRAL_SCRIPT = "process_batch.py"


def forward_sigterm_to_batch() -> None:
    """In the Snakemake process: pass SIGTERM on to the central job before Snakemake's own
    handler, which would otherwise wait for the whole batch to finish."""
    import psutil

    snakemake_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(CENTRAL_SCRIPT in part for part in child.cmdline()):
                    child.terminate()
        if callable(snakemake_handler):
            snakemake_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
