"""What every worker holding `process` is asked before it gets work (at pre-flight, and
when it joins mid-batch): which dp3batch it imports, whether its DP3 starts (and which
version it is), and how many cores it may use.

Workers get the workflow's code from their environment, as the scheduler and the
application do (the same Python environment, or `PYTHONPATH=<checkout>/scripts`); nothing
is uploaded. A worker that imports another dp3batch, or another DP3 version, would make
outputs that are not what this batch plans: at pre-flight that stops the run, naming the
workers; a worker that joins mid-batch that way gets no work. A worker whose DP3 does not
start gets no work either, and the batch goes on with the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dp3batch.dask_stage.cluster import (
    ClusterError,
    SchedulerUnresponsive,
    WorkerInfo,
    call_with_deadline,
    describe_workers,
)
from dp3batch.dask_stage.worker_faults import (
    describe_identity,
    package_identity_function,
    package_problem,
)

log = logging.getLogger("dp3batch")

# `DP3 --version` on a worker: a DP3 that has not answered by then does not start.
DP3_START_SECONDS = 60
CHECK_SECONDS = DP3_START_SECONDS + 30


@dataclass(frozen=True)
class WorkerFindings:
    """What the checks found on the workers they asked."""

    # Worker → why it cannot run this batch's code or DP3 (another dp3batch, another DP3
    # version): a setup to fix, not a fault.
    mismatched: dict[str, str] = field(default_factory=dict)
    # Worker → why its DP3 does not start: it gets no work; the batch goes on without it.
    cannot_start: dict[str, str] = field(default_factory=dict)
    # Hosts whose workers hold more threads than the host has cores.
    oversubscribed: list[str] = field(default_factory=list)
    # Workers that did not answer the check at all (silent: frozen, or cut off).
    silent: list[str] = field(default_factory=list)


def _worker_check_function():
    """The check run on each worker, pickled by value (it must also run where dp3batch
    cannot be imported, and say so)."""
    package_identity = package_identity_function()

    def check_worker(dp3_executable: str, timeout: float) -> dict[str, Any]:
        import os
        import re
        import socket
        import subprocess

        answer: dict[str, Any] = {"package": package_identity(), "hostname": socket.gethostname()}
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            cpus = list(range(os.cpu_count() or 1))
        answer["cpus"] = ",".join(map(str, cpus))
        try:
            from dp3batch.dp3.install import dp3_environment

            environment = dp3_environment()
        except Exception:  # no dp3batch here (reported above): DP3's bare needs
            environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        try:
            completed = subprocess.run(
                [dp3_executable, "--version"],
                env=environment,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            answer["dp3"] = {"exit": None, "output": f"no answer within {timeout:.0f} s"}
            return answer
        except OSError as error:
            answer["dp3"] = {"exit": 127, "output": f"{error.strerror}: {dp3_executable}"}
            return answer
        output = (completed.stdout + completed.stderr).strip()
        found = re.search(r"DP3\s+v?(\d+(?:\.\d+)+\S*)", output)
        answer["dp3"] = {
            "exit": completed.returncode,
            "output": "\n".join(output.splitlines()[-5:]),
            "version": found.group(1) if found else None,
        }
        return answer

    async def check_worker_beside_the_event_loop(
        dp3_executable: str, timeout: float
    ) -> dict[str, Any]:
        import asyncio

        # `client.run` calls a plain function in the worker's event loop: a `DP3 --version`
        # that hangs would stop its heartbeats, and the worker would be taken for frozen.
        return await asyncio.to_thread(check_worker, dp3_executable, timeout)

    return check_worker_beside_the_event_loop


def judge_workers(
    answers: dict[str, Any],
    workers: list[WorkerInfo],
    expected_package: dict[str, Any],
    dp3_version: str,
) -> WorkerFindings:
    """The findings from each worker's answer (an exception if its check failed)."""
    findings = WorkerFindings()
    for address in sorted(answers):
        answer = answers[address]
        if isinstance(answer, BaseException):
            findings.cannot_start[address] = (
                f"the check failed there: {type(answer).__name__}: {answer}"
            )
            continue
        problem = package_problem(answer["package"], expected_package)
        if problem is not None:
            findings.mismatched[address] = problem
            continue
        dp3 = answer["dp3"]
        if dp3["exit"] != 0 or not dp3.get("version"):
            said = dp3["output"].splitlines()[-1] if dp3["output"] else "it printed nothing"
            code = "did not end" if dp3["exit"] is None else f"exited {dp3['exit']}"
            findings.cannot_start[address] = f"`DP3 --version` {code}: {said}"
        elif dp3["version"] != dp3_version:
            findings.mismatched[address] = (
                f"its DP3 is version {dp3['version']}, not {dp3_version} (the version this "
                "batch was planned with, and that its completion records will name)"
            )
    findings.oversubscribed.extend(oversubscribed_hosts(answers, workers))
    return findings


def oversubscribed_hosts(answers: dict[str, Any], workers: list[WorkerInfo]) -> list[str]:
    """Hosts (or a batch job's cores on a host) whose workers holding `process` hold more
    threads than there are cores: each DP3 gets `numthreads` = its worker's threads, so
    they compete for the cores."""
    groups: dict[tuple[str, str], list[WorkerInfo]] = defaultdict(list)
    names: dict[tuple[str, str], str] = {}
    for worker in workers:
        answer = answers.get(worker.address)
        if worker.process_slots < 1 or not isinstance(answer, dict) or "cpus" not in answer:
            continue
        key = (worker.host, answer["cpus"])
        groups[key].append(worker)
        names[key] = answer.get("hostname") or worker.host
    warnings = []
    for key, members in sorted(groups.items()):
        cores = len(key[1].split(",")) if key[1] else 1
        threads = sum(worker.threads * int(worker.process_slots) for worker in members)
        if threads > cores:
            host = names[key] if names[key] == key[0] else f"{names[key]} ({key[0]})"
            per_worker = max(1, cores // len(members))
            warnings.append(
                f"host {host}: {len(members)} worker(s) holding process hold {threads} "
                f"thread(s) for its {cores} core(s), so their DP3s compete for the cores. "
                f"Start them with --nthreads so that workers x threads = cores (here "
                f"--nworkers {min(len(members), cores)} --nthreads {per_worker})."
            )
    return warnings


def check_workers(
    client,
    workers: list[WorkerInfo],
    dp3_executable: str,
    expected_package: dict[str, Any],
    dp3_version: str,
    timeout: float = CHECK_SECONDS,
) -> WorkerFindings:
    """Ask `workers` (those holding `process`) the check; workers that never answer (frozen:
    the whole request would wait for them) are named as silent."""
    addresses = [worker.address for worker in workers]
    answers, silent = run_on_answering_workers(
        client, _worker_check_function(), (dp3_executable, DP3_START_SECONDS), addresses, timeout
    )
    findings = judge_workers(answers, workers, expected_package, dp3_version)
    findings.silent.extend(silent)
    return findings


def run_on_answering_workers(
    client, function, arguments: tuple, addresses: list[str], timeout: float
) -> tuple[dict[str, Any], list[str]]:
    """`client.run(function, *arguments)` on `addresses` with a deadline; a worker that is
    frozen makes the whole request wait, so after a request that ran out of time the workers
    the scheduler has not heard from since it began are left out, and the others asked once
    more. Returns the answers and the workers left out."""

    def run(on: list[str]) -> dict[str, Any]:
        return call_with_deadline(
            lambda: client.run(function, *arguments, workers=on, on_error="return"),
            timeout,
            "the check of the workers",
        )

    if not addresses:
        return {}, []
    before = {worker.address: worker.last_seen for worker in describe_workers(client)}
    try:
        return run(addresses), []
    except SchedulerUnresponsive:
        pass
    after = {worker.address: worker.last_seen for worker in describe_workers(client)}
    silent = [a for a in addresses if after.get(a) is None or after.get(a) == before.get(a)]
    answering = [address for address in addresses if address not in silent]
    if silent and answering:
        try:
            return run(answering), silent
        except SchedulerUnresponsive:
            pass
    raise ClusterError(
        f"the workers did not answer within {timeout:.0f} s when asked which dp3batch and DP3 "
        "they run: is a worker frozen, or a shared filesystem hanging on one of their hosts?"
    )


def describe_expected(expected_package: dict[str, Any]) -> str:
    return describe_identity(expected_package)
