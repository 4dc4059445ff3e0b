"""The batch-system recipe against a real Slurm (the `slurm` fixture: slurmctld, slurmd and
munged from Debian's slurm-wlm, on this machine): `start_jobqueue_cluster.py slurm ...` as
docs/clusters.md gives it submits real jobs, the workflow runs on their workers, and a cancelled
job, a job Slurm can never start and a job that reaches its walltime are each handled."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, REPO, dp3_processes, free_port, make_inputs, wait_until
from dp3batch.dp3.install import find_dp3_executable, wheel_aoflagger_strategy

SCRIPT = str(REPO / "scripts" / "start_jobqueue_cluster.py")
# DP3 takes about two seconds on each of these: long enough to act while it runs.
SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}
STARTER_SECONDS = 60


class Starter:
    """`start_jobqueue_cluster.py slurm ...` running in its own session, its output in a file."""

    def __init__(self, slurm, directory: Path, *options: str):
        self.slurm = slurm
        self.output = directory / "start_jobqueue_cluster.out"
        self.job_log_directory = directory / "slurm-jobs"
        self.arguments = [
            sys.executable,
            SCRIPT,
            "slurm",
            *options,
            "--interface",
            "lo",
            "--log-directory",
            str(self.job_log_directory),
            "--port",
            str(free_port()),
            "--dashboard-port",
            str(free_port()),
        ]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Starter:
        self.process = subprocess.Popen(
            self.arguments,
            stdout=open(self.output, "w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.slurm.environment},
        )
        return self

    def __exit__(self, *_) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Whatever the test did, no job of it outlives it.
        for job_id in self.job_ids():
            self.slurm.command("scancel", job_id)

    def text(self) -> str:
        return self.output.read_text()

    def scheduler(self) -> str:
        """The address the script tells the user to run the workflow with."""
        found = wait_until(
            lambda: re.search(r"--config scheduler=(\S+)", self.text()) or self.process.poll(),
            timeout=STARTER_SECONDS,
        )
        assert isinstance(found, re.Match), self.text()
        return found.group(1)

    def job_ids(self) -> list[str]:
        found = re.search(r"job\(s\) submitted \(([\d, ]+)\)", self.text())
        return found.group(1).split(", ") if found else []


def live_jobs(slurm) -> dict[str, str]:
    """Slurm's running and pending jobs: job id → state."""
    listing = slurm.command("squeue", "-h", "-o", "%i %T").stdout.split()
    return dict(zip(listing[::2], listing[1::2], strict=True))


def job_state(slurm, job_id: str) -> str:
    found = re.search(r"JobState=(\w+)", slurm.command("scontrol", "show", "job", job_id).stdout)
    return found.group(1) if found else "unknown"


WORKER_JOBS = """
import json, os, sys
from distributed import Client
with Client(sys.argv[1], timeout="10s") as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=60)
    jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
    workers = client.scheduler_info()["workers"]
    print(json.dumps({address: {"job": jobs[address], "threads": info["nthreads"],
                                "resources": info["resources"]}
                      for address, info in workers.items()}))
"""


def worker_jobs(scheduler: str, count: int) -> dict[str, dict]:
    """Once `count` workers have joined: worker address → its Slurm job, threads, resources
    (asked in a child process: a dask client in the test process was seen to hang)."""
    result = subprocess.run(
        [sys.executable, "-c", WORKER_JOBS, scheduler, str(count)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@contextlib.contextmanager
def slurm_workers(slurm, tmp_path: Path, jobs: int) -> Iterator[tuple[Starter, str, dict]]:
    """The command of docs/clusters.md with `jobs` one-core jobs, once their workers have joined:
    the script, the scheduler's address, and worker address → job (see `worker_jobs`)."""
    with Starter(
        slurm,
        tmp_path,
        *("--jobs", str(jobs), "--cores", "1", "--processes", "1", "--memory", "2GB"),
        *("--queue", "debug", "--account", "dp3test", "--walltime", "00:10:00"),
        *("--prologue", f"source {BIN / 'activate'}"),
        # Workers import this checkout's dp3batch, as the workflow does (pre-flight checks).
        *("--prologue", f"export PYTHONPATH={REPO / 'scripts'}"),
    ) as starter:
        scheduler = starter.scheduler()
        yield starter, scheduler, worker_jobs(scheduler, jobs)


def test_workflow_runs_on_workers_of_real_slurm_jobs(slurm, workflow, tmp_path):
    make_inputs(workflow.directory / "inputs", 3)
    with slurm_workers(slurm, tmp_path, jobs=2) as (starter, scheduler, workers):
        job_ids = starter.job_ids()
        assert len(job_ids) == 2, starter.text()
        # Each job runs one worker: one thread, process=1, in that very job.
        assert sorted(worker["job"] for worker in workers.values()) == sorted(job_ids)
        assert all(w["threads"] == 1 and w["resources"] == {"process": 1} for w in workers.values())
        assert all(live_jobs(slurm).get(job) == "RUNNING" for job in job_ids)
        workflow.config["scheduler"] = scheduler
        result = workflow.run()
        assert result.returncode == 0, result.output
        for name in ("obs_0", "obs_1", "obs_2"):
            record = workflow.record(name)
            assert record is not None, name
            assert record["worker"] in workers and record["numthreads"] == 1, record
        # Ctrl-C on the script cancels the jobs.
        starter.process.send_signal(signal.SIGINT)
        assert starter.process.wait(timeout=30) == 0, starter.text()
        assert wait_until(lambda: not set(job_ids) & set(live_jobs(slurm)), timeout=30)
        assert {job_state(slurm, job) for job in job_ids} == {"CANCELLED"}


def _running_dp3(marker: str) -> psutil.Process | None:
    """A DP3 of this test that runs inside a Slurm job."""
    for process in dp3_processes(marker):
        try:
            if "msin=" in " ".join(process.cmdline()) and process.environ().get("SLURM_JOB_ID"):
                return process
        except psutil.NoSuchProcess:
            continue
    return None


def _ms_name(process: psutil.Process) -> str:
    # Its command line as `dp3_processes` found it (it may have ended since).
    msin = next(arg for arg in process.info["cmdline"] if arg.startswith("msin="))
    return Path(msin.split("=", 1)[1]).name.removesuffix(".ms")


def test_a_cancelled_job_s_ms_is_retried_on_another_worker(slurm, workflow, tmp_path):
    make_inputs(workflow.directory / "inputs", 4, **SLOW_MS)
    names = [f"obs_{index}" for index in range(4)]
    marker = str(workflow.directory)
    with slurm_workers(slurm, tmp_path, jobs=2) as (starter, scheduler, workers):
        workflow.config["scheduler"] = scheduler
        snakemake = workflow.start()
        try:
            dp3 = wait_until(lambda: _running_dp3(marker), timeout=120, interval=0.05)
            assert dp3, (workflow.directory / "snakemake.out").read_text()
            cancelled_job, cancelled_ms = dp3.environ()["SLURM_JOB_ID"], _ms_name(dp3)
            assert slurm.command("scancel", cancelled_job).returncode == 0
            assert wait_until(lambda: not dp3.is_running(), timeout=30), "DP3 outlived its job"
            assert snakemake.wait(timeout=180) == 0, (
                workflow.directory / "snakemake.out"
            ).read_text()
        finally:
            if snakemake.poll() is None:
                os.killpg(snakemake.pid, signal.SIGKILL)
        assert job_state(slurm, cancelled_job) == "CANCELLED"
        assert not dp3_processes(marker), "DP3 left running"
        assert all(workflow.record(name) for name in names)
        survivor = next(a for a, w in workers.items() if w["job"] != cancelled_job)
        assert workflow.record(cancelled_ms)["worker"] == survivor
        assert wait_until(lambda: f"Slurm job {cancelled_job} ended" in starter.text(), 15)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--queue", "nosuch"], r"Slurm refuses the worker job: .*Invalid partition name"),
        # The partition allows 5 minutes: the job would pend forever.
        (["--queue", "short", "--walltime", "00:30:00"], r"pends with reason Partition\w+: "),
    ],
    ids=["unknown-partition", "walltime-above-partition-limit"],
)
def test_a_job_slurm_can_never_start_is_a_quick_clear_error(slurm, tmp_path, options, message):
    started = time.monotonic()
    arguments = ["--jobs", "1", "--cores", "1", "--memory", "1GB", *options]
    with Starter(slurm, tmp_path, *arguments) as starter:
        assert starter.process.wait(timeout=STARTER_SECONDS) == 2, starter.text()
        elapsed = time.monotonic() - started
        assert elapsed < 30, elapsed
        assert re.search(message, starter.text()), starter.text()
        assert "--queue" in starter.text() and "Traceback" not in starter.text()
        assert not live_jobs(slurm), "a job was left in the queue"


FREEZING_WRAPPER = """#!/bin/bash
# The real DP3, except in the Slurm job named in {job_file}: there DP3 is stopped a second
# into its run, as a DP3 still busy when the job's walltime strikes.
if [[ "$*" == *msin=* && "${{SLURM_JOB_ID:-}}" == "$(cat {job_file} 2>/dev/null)" ]]; then
    (sleep 1; kill -STOP $$) &
fi
exec {dp3} "$@"
"""


def test_an_ms_cut_by_the_walltime_is_retried_and_its_partial_output_discarded(
    slurm, workflow, tmp_path
):
    make_inputs(workflow.directory / "inputs", 2, **SLOW_MS)
    job_file, wrapper = tmp_path / "frozen-job", tmp_path / "dp3-wrapper.sh"
    real_dp3 = find_dp3_executable()
    wrapper.write_text(FREEZING_WRAPPER.format(job_file=job_file, dp3=real_dp3))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    workflow.config["dp3_executable"] = str(wrapper)
    workflow.config["steps"] = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": wheel_aoflagger_strategy(real_dp3)}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]
    marker = str(workflow.directory)
    with slurm_workers(slurm, tmp_path, jobs=2) as (starter, scheduler, workers):
        # One job gets a one-minute walltime (Slurm's smallest); the other keeps its ten.
        short_job = starter.job_ids()[0]
        assert (
            slurm.command("scontrol", "update", f"JobId={short_job}", "TimeLimit=1").returncode == 0
        )
        job_file.write_text(short_job)
        workflow.config["scheduler"] = scheduler
        snakemake = workflow.start()
        try:
            frozen = wait_until(lambda: _stopped_dp3(marker), timeout=60, interval=0.1)
            assert frozen, (workflow.directory / "snakemake.out").read_text()
            frozen_ms = _ms_name(frozen)
            partial = list(workflow.output_dir.glob(f".{frozen_ms}.ms.tmp-*"))
            assert partial and (partial[0] / "table.dat").exists(), "no partial output"
            assert snakemake.wait(timeout=150) == 0, (
                workflow.directory / "snakemake.out"
            ).read_text()
        finally:
            if snakemake.poll() is None:
                os.killpg(snakemake.pid, signal.SIGKILL)
        assert job_state(slurm, short_job) == "TIMEOUT"
        survivor = next(a for a, w in workers.items() if w["job"] != short_job)
        assert workflow.record(frozen_ms)["worker"] == survivor
        assert not partial[0].exists(), "partial output left behind"
        assert not list(workflow.output_dir.glob(".*.tmp-*"))
        assert not dp3_processes(marker), "DP3 left running"
        assert wait_until(lambda: f"Slurm job {short_job} ended (TIMEOUT)" in starter.text(), 15)


def _stopped_dp3(marker: str) -> psutil.Process | None:
    process = _running_dp3(marker)
    return process if process and process.status() == psutil.STATUS_STOPPED else None


LATE_WORKER_JOB = """#!/bin/bash
#SBATCH --partition=debug --account=dp3test --ntasks=1 --cpus-per-task=1 --mem=2G
#SBATCH --time=00:10:00
source {activate}
export PYTHONPATH={scripts}
exec dask worker {scheduler} --nthreads 1 --resources process=1 --no-dashboard \\
    --memory-limit 2GB --name late-job-$SLURM_JOB_ID
"""


def test_a_worker_job_that_starts_late_joins_the_batch_once_checked(slurm, workflow, tmp_path):
    """A batch job whose worker joins mid-batch (the queue was busy): it is asked the
    pre-flight check when it joins, then gets work; no MS waits for it, none is lost."""
    names = [f"obs_{index}" for index in range(6)]
    make_inputs(workflow.directory / "inputs", 6, **SLOW_MS)
    marker = str(workflow.directory)
    with slurm_workers(slurm, tmp_path, jobs=1) as (starter, scheduler, workers):
        workflow.config["scheduler"] = scheduler
        script = tmp_path / "late-worker.sh"
        script.write_text(
            LATE_WORKER_JOB.format(
                activate=BIN / "activate", scripts=REPO / "scripts", scheduler=scheduler
            )
        )
        snakemake = workflow.start()
        late_job = None
        try:
            assert wait_until(lambda: dp3_processes(marker), timeout=120, interval=0.1)
            submitted = slurm.command(
                "sbatch", "--parsable", f"--output={tmp_path / 'late-%j.out'}", str(script)
            )
            assert submitted.returncode == 0, submitted.stderr
            late_job = submitted.stdout.strip().split(";")[0]
            assert snakemake.wait(timeout=240) == 0, (
                workflow.directory / "snakemake.out"
            ).read_text()
        finally:
            if snakemake.poll() is None:
                os.killpg(snakemake.pid, signal.SIGKILL)
            if late_job:
                slurm.command("scancel", late_job)
        output = (workflow.directory / "snakemake.out").read_text()
        assert all(workflow.record(name) for name in names)
        by_worker = {workflow.record(name)["worker"] for name in names}
        late = by_worker - set(workers)
        assert late, f"the late job's worker got no MS: {by_worker} ({output})"
        assert f"worker(s) joined and can run DP3: {next(iter(late))}" in output
        assert "Traceback" not in output
        assert not dp3_processes(marker), "DP3 left running"
