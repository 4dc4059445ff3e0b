"""Memory limits: a run inside a memory cgroup (as `sbatch --mem=...` gives a batch job)
sizes its workers and AOFlagger from the cgroup's limit, not from the machine's memory; a DP3
the kernel kills for memory, and a dask worker killed by SIGKILL, are reported as possibly
out of memory with the limit that applied; each DP3's peak memory is in its completion record
and the summary; the kernel ranks every DP3 first for its OOM killer.

Real snakemake, DP3, dask; a real cgroup with a memory limit, and the kernel's own OOM killer."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import psutil
import pytest
from conftest import dp3_processes, make_inputs, wait_until
from memory_cgroup import joining, memory_cgroup, oom_kills, why_not

# 24 stations, 800 time slots, 64 channels: 468 MB. Read whole, AOFlagger's window holds
# every slot and DP3 needs more than the cgroup below; bounded by the workflow, 0.50 GB.
LARGE_MS = {"n_antennas": 24, "n_times": 800, "n_channels": 64}
CGROUP_LIMIT = 768 * 2**20
ONE_WORKER = {"n_workers": 1, "threads_per_worker": 1}
SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}


def _run_in(cgroup, workflow, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        workflow.command(*extra),
        cwd=workflow.directory,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=joining(cgroup),
    )
    completed.output = completed.stdout + completed.stderr
    return completed


def _summary(workflow) -> dict[str, dict[str, str]]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture
def small_cgroup():
    problem = why_not()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI needs a memory cgroup (it runs as root): {problem}")
    if problem:
        pytest.skip(f"no memory cgroup can be made here: {problem}")
    with memory_cgroup(CGROUP_LIMIT) as cgroup:
        yield cgroup


def test_a_run_in_a_memory_cgroup_is_sized_by_its_limit(workflow, small_cgroup):
    make_inputs(workflow.directory / "inputs", 1, **LARGE_MS)
    workflow.config["local_cluster"] = ONE_WORKER
    limit_text = "0.75 GiB (cgroup memory"

    # The operator's own AOFlagger bound, far above the job's memory: the kernel kills DP3,
    # and the run says so with the limit that applied.
    workflow.config["steps"] = [
        {"PreFlagger": None},
        {"AOFlagger": {"memorymax": 20}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]
    for _ in range(2):
        kills = oom_kills(small_cgroup)
        started = time.monotonic()
        killed = _run_in(small_cgroup, workflow)
        assert time.monotonic() - started < 300
        # The kernel's race, not the workflow's: a process that allocates in the moment
        # after DP3 is taken, before DP3's memory is freed, takes the next largest, one of
        # the workflow's own (seen twice in CI on a loaded machine). That death is reported
        # as its own tests show (a killed central job, a killed Snakemake); run again.
        if oom_kills(small_cgroup) - kills < 2:
            break
    assert killed.returncode != 0, killed.output
    assert oom_kills(small_cgroup) - kills == 1  # the kernel's OOM killer did it, to DP3
    assert "obs_0: FAILED" in killed.output
    assert "DP3 was killed by SIGKILL: possibly out of memory (DP3's peak" in killed.output
    assert limit_text in killed.output and str(small_cgroup) in killed.output
    assert "Traceback" not in killed.output
    assert "DP3 said" not in killed.output  # its last line is a progress bar, not a cause
    assert workflow.record("obs_0") is None
    assert int(_summary(workflow)["obs_0"]["peak_memory_bytes"]) > 0  # how far it got

    # The workflow's own bound, from the cgroup's limit (before: from the machine's memory,
    # memorymax=25.28 here, and the same OOM kill): DP3 stays within the job.
    del workflow.config["steps"]
    done = _run_in(small_cgroup, workflow)
    assert done.returncode == 0, done.output
    assert f"of {limit_text}" in done.output  # the embedded cluster's sizing, in its log
    record = workflow.record("obs_0")
    bound = [arg for arg in record["dp3_arguments"] if arg.startswith("aoflagger.memorymax=")]
    assert len(bound) == 1
    assert 0.05 < float(bound[0].split("=")[1]) <= CGROUP_LIMIT / 2 / 1e9
    peak = record["peak_memory_bytes"]
    assert 50 * 2**20 < peak < CGROUP_LIMIT
    assert int(_summary(workflow)["obs_0"]["peak_memory_bytes"]) == peak


def test_the_kernel_ranks_every_dp3_above_the_workflow_s_own_processes(workflow):
    """The kernel's own OOM scores while DP3 runs: DP3's is above Snakemake's and the
    central job's (which holds the embedded workers and may hold more memory than a small
    MS's DP3), so running out of memory costs one MS, not the batch."""
    make_inputs(workflow.directory / "inputs", 1, **SLOW_MS)
    workflow.config["local_cluster"] = ONE_WORKER
    snakemake = workflow.start()
    try:
        running = wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.05)
        assert running
        dp3 = running[0]
        descendants = psutil.Process(snakemake.pid).children(recursive=True)
        ours = [p for p in dp3.parents() if p.pid == snakemake.pid or p in descendants]
        scores = {process.pid: _oom(process.pid) for process in [dp3, *ours]}
        roles = {_role(process) for process in ours}
        snakemake.wait(timeout=300)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
    assert snakemake.returncode == 0
    assert {"process_batch", "snakemake"} <= roles
    assert scores[dp3.pid] == ("1000", scores[dp3.pid][1])
    assert all(scores[p.pid][0] == "0" for p in ours)
    assert all(int(scores[dp3.pid][1]) > int(scores[p.pid][1]) for p in ours), scores


def _oom(pid: int) -> tuple[str, str]:
    """A process's (oom_score_adj, oom_score) as the kernel shows them."""
    proc = f"/proc/{pid}"
    return tuple(open(f"{proc}/{name}").read().strip() for name in ("oom_score_adj", "oom_score"))


def _role(process) -> str:
    command = " ".join(process.cmdline())
    return "process_batch" if "process_batch" in command else "snakemake"


def test_a_worker_killed_by_sigkill_is_named_with_its_memory_limit(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 1, **SLOW_MS)
    # One death is enough for dask to give up on the task (the default allows three).
    dask_cluster.start(workers=1, threads=1, allowed_failures=0)
    workflow.config["scheduler"] = dask_cluster.address
    snakemake = workflow.start()
    try:
        running = wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.05)
        assert running
        worker = running[0].parent()  # the dask worker process that runs the task
        assert "dask" in " ".join(worker.cmdline()) or "python" in worker.name()
        os.kill(worker.pid, signal.SIGKILL)  # what the kernel's OOM killer sends
        snakemake.wait(timeout=120)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
    output = (workflow.directory / "snakemake.out").read_text()
    assert snakemake.returncode != 0
    assert "obs_0: FAILED" in output
    assert "its worker died during every attempt; the last was tcp://" in output
    # The harness starts its workers with --memory-limit 4GB.
    assert "with a memory limit of 3.73 GiB: killed, possibly out of memory" in output
    assert "on None" not in output and "Traceback" not in output
    assert wait_until(lambda: not dp3_processes(str(workflow.directory)), 30)


def test_a_central_job_killed_by_sigkill_is_named_as_possibly_out_of_memory(workflow):
    """With the embedded cluster its workers are threads of the central job: killing it is
    killing them, and every DP3 they started."""
    make_inputs(workflow.directory / "inputs", 2, **SLOW_MS)
    workflow.config["local_cluster"] = ONE_WORKER
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.05)
        central = [
            process
            for process in dp3_processes(str(workflow.directory))[0].parents()
            if "process_batch" in " ".join(process.cmdline())
        ]
        assert len(central) == 1
        os.kill(central[0].pid, signal.SIGKILL)
        snakemake.wait(timeout=120)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
    output = (workflow.directory / "snakemake.out").read_text()
    assert snakemake.returncode != 0
    assert f"Error: the central job (pid {central[0].pid}) (and with it the embedded dask " in (
        output
    )
    assert "possibly out of memory: the memory limit here is " in output
    assert "Traceback" not in output
    assert wait_until(lambda: not dp3_processes(str(workflow.directory)), 30)
    assert {row["status"] for row in _summary(workflow).values()} == {"not processed"}
