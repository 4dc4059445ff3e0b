"""Before anything is submitted: some worker holds the `process` resource (a task whose
resource no worker holds would wait forever), every worker that does runs this batch's code
and DP3 (worker_checks), and sees the batch's paths as this machine does."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp3batch.books.batch_spec import BatchSpec
from dp3batch.dask_stage.cluster import (
    PROCESS_RESOURCE,
    SCHEDULER_ANSWER_SECONDS,
    ClusterError,
    SchedulerUnresponsive,
    WorkerInfo,
    call_with_deadline,
    describe_cluster,
    describe_workers,
    worker_command,
)
from dp3batch.dask_stage.watchdog import first_silences, silence_bound
from dp3batch.dask_stage.worker_checks import check_workers
from dp3batch.dask_stage.worker_faults import describe_identity

log = logging.getLogger("dp3batch")

WORKER_WAIT_SECONDS = 15


JOINING_GRACE_SECONDS = 3


PATH_CHECK_SECONDS = 30


PROBE_PREFIX = ".dp3batch-probe-"


def wait_for_process_workers(
    client, address: str, timeout: float = WORKER_WAIT_SECONDS
) -> list[WorkerInfo]:
    """Every worker of the scheduler, once one holds the `process` resource (waiting up to
    `timeout` for it)."""
    deadline = time.monotonic() + timeout
    # Workers that are up will not grow a resource: once some are seen, wait only briefly
    # for others that may still be joining.
    grace_deadline = None
    while True:
        workers = describe_workers(client)
        if any(worker.process_slots >= 1 for worker in workers):
            return workers
        if workers and grace_deadline is None:
            grace_deadline = time.monotonic() + JOINING_GRACE_SECONDS
        now = time.monotonic()
        if now >= deadline or (grace_deadline is not None and now >= grace_deadline):
            break
        time.sleep(0.5)
    if not workers:
        problem = f"the dask scheduler at {address} has no workers"
    else:
        problem = (
            f"none of the {len(workers)} worker(s) of the dask scheduler at {address} holds "
            f'the "{PROCESS_RESOURCE}" resource, so no DP3 task could ever start'
        )
    raise ClusterError(
        f"{problem}. Start workers with:\n    {worker_command(address)}\n"
        'The "process=1" resource makes each worker run one DP3 at a time.'
    )


def check_worker_paths(
    client,
    workers: list[str],
    paths: list[tuple[str, str, str]],
    timeout: float = PATH_CHECK_SECONDS,
) -> None:
    """Every worker must see `paths` as this machine does, before anything is submitted.

    `paths` are (what, absolute path, need) with need "read", "run" or "write" (a directory
    that the worker must be able to write, and that must be the same directory as here: a
    probe file written here must be visible there). Raises ClusterError naming each worker
    and path it cannot use, or if the workers do not answer within `timeout` (a hung
    filesystem blocks a worker)."""
    token = f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    probes = []
    try:
        for _, path, need in paths:
            if need == "write":
                probe = os.path.join(path, token)
                with open(probe, "w"):
                    probes.append(probe)
        checks = [(what, path, need, token) for what, path, need in paths]
        answers = _run_on_workers(client, _path_problems_function(), workers, checks, timeout)
    finally:
        for probe in probes:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    info = call_with_deadline(
        lambda: client.scheduler_info(n_workers=-1),
        SCHEDULER_ANSWER_SECONDS,
        "a request for the workers",
    )
    names = {address: worker.get("name") for address, worker in info.get("workers", {}).items()}
    lines = []
    bad = 0
    for address in sorted(answers):
        answer = answers[address]
        name = names.get(address)
        who = f"worker {address}" + (f" ({name})" if name not in (None, address) else "")
        if isinstance(answer, BaseException):
            answer = [("the check", "", f"failed: {type(answer).__name__}: {answer}")]
        bad += bool(answer)
        lines += [f"  {who}: " + " ".join(filter(None, problem)) for problem in answer]
    if lines:
        raise ClusterError(
            f"{bad} worker(s) cannot use the paths of this batch:\n"
            + "\n".join(lines)
            + "\nEvery worker must see the inputs, the output directory and DP3 at the same "
            "absolute paths as this machine (a shared filesystem, mounted at the same place on "
            "every host). Fix the mounts on those hosts, or stop those workers."
        )


def _run_on_workers(client, function, workers: list[str], checks, timeout: float) -> dict:
    """`client.run` with a deadline: a worker stuck on a hung filesystem must not hang us."""
    try:
        return call_with_deadline(
            lambda: client.run(function, checks, workers=workers, on_error="return"),
            timeout,
            "the path check",
        )
    except SchedulerUnresponsive:
        raise ClusterError(
            f"the workers did not finish checking the input and output paths within "
            f"{timeout:.0f} s: is the shared filesystem hanging on one of their hosts?"
        ) from None
    except Exception as error:
        raise ClusterError(f"cannot check the paths on the workers: {error}") from error


def _path_problems_function():
    """The check that runs on each worker, as a function defined here so that dask pickles it
    by value: workers of an external cluster cannot import dp3batch before it is uploaded."""

    def path_problems(checks):
        import os
        import tempfile

        problems = []
        for what, path, need, token in checks:
            if not os.path.exists(path):
                problems.append((what, path, "does not exist there"))
            elif need == "read" and not os.access(path, os.R_OK):
                problems.append((what, path, "is not readable there"))
            elif need == "run" and not os.access(path, os.X_OK):
                problems.append((what, path, "is not executable there"))
            elif need == "write":
                if not os.path.exists(os.path.join(path, token)):
                    problems.append(
                        (what, path, "is another directory there (not the shared filesystem)")
                    )
                    continue
                try:
                    handle, probe = tempfile.mkstemp(dir=path, prefix=token)
                    os.close(handle)
                    os.unlink(probe)
                except OSError as error:
                    problems.append((what, path, f"is not writable there ({error.strerror})"))
        return problems

    return path_problems


def shared_paths(batch: BatchSpec) -> list[tuple[str, str, str]]:
    """What every worker must see at the same absolute path as this machine, as (what, path,
    need) for `check_worker_paths`: a sample of the inputs (the first and the last), the
    files the steps read, DP3, and the output and log directories."""
    # Of those still here: an input deleted since planning fails its own task, not the batch.
    inputs = [ms.input for ms in batch.measurement_sets if os.path.exists(ms.input)]
    paths = [("input MS", path, "read") for path in dict.fromkeys(inputs[:1] + inputs[-1:])]
    files = batch.parameters.file_parameters()
    paths += [(f"{key} file", path, "read") for key, path in files]
    paths.append(("DP3 executable", batch.dp3_executable, "run"))
    paths.append(("output directory", batch.output_dir, "write"))
    paths.append(("log directory", batch.log_dir, "write"))
    return paths


@dataclass(frozen=True)
class ClusterStart:
    """The cluster as pre-flight found it: what the batch may use and what it may not."""

    # The scheduler's id (another one at the same address means it was restarted).
    scheduler_id: str
    # Every worker of the scheduler, and those that hold `process` and passed the checks.
    workers: list[WorkerInfo]
    eligible: list[WorkerInfo]
    # Worker → why it gets no work in this batch (named in the failure report).
    excluded: dict[str, str] = field(default_factory=dict)
    # Those of them left out for their silence, unchecked: heard again, they are checked.
    silent: list[str] = field(default_factory=list)


def preflight(
    client,
    batch: BatchSpec,
    expected_package: dict[str, Any] | None = None,
    silence_seconds: float = float("inf"),
) -> ClusterStart:
    """Before anything is submitted. For an external cluster (`expected_package`: the code
    this batch runs) every worker holding `process` is also asked which dp3batch it imports
    and whether its DP3 starts (worker_checks): another dp3batch or DP3 version stops the
    run; a DP3 that does not start, or a silent worker, keeps that worker out of the batch."""
    address = batch.scheduler or client.scheduler.address
    wait_for_process_workers(client, address)
    scheduler_id, all_workers = describe_cluster(client)
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
    excluded: dict[str, str] = {}
    silent: list[str] = []
    if expected_package is not None:
        excluded, silent = _check_external_workers(
            client, batch, workers, expected_package, silence_seconds
        )
    eligible = [worker for worker in workers if worker.address not in excluded]
    for worker_address, why in excluded.items():
        if worker_address in silent:
            log.error(
                "worker %s gets no DP3 task while it is silent: %s; heard from again, it is "
                "checked, then used",
                worker_address,
                why,
            )
        else:
            log.error("worker %s gets no DP3 task in this batch: %s", worker_address, why)
    if not eligible:
        raise ClusterError(
            f"none of the {len(workers)} worker(s) holding process can run this batch's DP3:\n"
            + "\n".join(f"  worker {where}: {why}" for where, why in excluded.items())
            + "\nFix DP3 on those hosts (run `DP3 --version` there as the worker does), or "
            f"start other workers:\n    {worker_command(address)}"
        )
    dashboard = getattr(client, "dashboard_link", None)
    if not batch.scheduler:
        dashboard = f"{dashboard} (loaded when first opened)"
    log.info(
        "%d worker(s) can run DP3, %d thread(s) in all; dashboard: %s",
        len(eligible),
        sum(worker.threads for worker in eligible),
        dashboard,
    )
    # Workers on other hosts must see the same files at the same paths (a shared filesystem).
    check_worker_paths(client, [worker.address for worker in eligible], shared_paths(batch))
    return ClusterStart(scheduler_id, all_workers, eligible, excluded, silent)


def _check_external_workers(
    client,
    batch: BatchSpec,
    workers: list[WorkerInfo],
    expected_package: dict[str, Any],
    silence_seconds: float,
) -> tuple[dict[str, str], list[str]]:
    """Worker → why it is left out of the batch, and those left out for their silence;
    ClusterError for a setup to fix."""
    excluded: dict[str, str] = {}
    silences = first_silences(workers, 0.0)
    bound = silence_bound(silence_seconds, len(workers))
    for worker in workers:
        lag = silences[worker.address].seconds(0.0)
        if lag > bound:
            excluded[worker.address] = (
                f"the scheduler has not heard from it for {lag:.0f} s (frozen, paused or cut off?)"
            )
    asked = [worker for worker in workers if worker.address not in excluded]
    findings = check_workers(
        client, asked, batch.dp3_executable, expected_package, batch.dp3_version
    )
    for warning in findings.oversubscribed:
        log.warning("Warning: %s", warning)
    if findings.mismatched:
        raise ClusterError(mismatch_message(findings.mismatched, expected_package, batch))
    excluded.update(findings.cannot_start)
    for worker_address in findings.silent:
        excluded[worker_address] = "it did not answer the pre-flight check (frozen?)"
    silent = [address for address in excluded if address not in findings.cannot_start]
    return excluded, silent


def mismatch_message(
    mismatched: dict[str, str], expected_package: dict[str, Any], batch: BatchSpec
) -> str:
    """One message naming every worker that runs other code or another DP3, and what to do."""
    scripts = str(Path(expected_package.get("path", "scripts/dp3batch")).parent)
    address = (batch.scheduler or "HOST:8786").removeprefix("tcp://")
    lines = [
        f"{len(mismatched)} worker(s) do not run this batch's code and DP3 "
        f"({describe_identity(expected_package)}, DP3 {batch.dp3_version}):"
    ]
    lines += [f"  worker {where}: {why}" for where, why in sorted(mismatched.items())]
    lines.append(
        "Workers run the workflow's code and DP3 from their own environment (nothing is "
        "uploaded to them), so they must share the environment Snakemake runs in. Restart "
        "those workers from it, with this checkout's code first on their path:\n"
        f"    PYTHONPATH={scripts} dask worker {address} --nworkers N --nthreads T "
        '--resources "process=1"\n'
        "or stop them."
    )
    return "\n".join(lines)
