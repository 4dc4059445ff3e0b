"""Workers as Slurm/PBS jobs through dask-jobqueue (scripts/start_jobqueue_cluster.py).

There is no Slurm here: the job scripts are checked as dask-jobqueue writes them, and one
test replaces `sbatch`/`scancel` with stand-ins that run the job script on this machine, so
that the workflow runs on workers started exactly as the job script says."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, make_inputs, wait_for_dask_workers, wait_until
from dp3batch.cluster import ClusterError
from dp3batch.jobqueue import cluster_class, job_options, jobqueue_cluster

SCRIPT = str(REPO / "scripts" / "start_jobqueue_cluster.py")
SCHEDULER = "tcp://10.0.0.1:8786"
SETTINGS = {
    "cores": 8,
    "processes": 4,
    "memory": "16GB",
    "queue": "short",
    "account": "radio42",
    "walltime": "02:00:00",
    "interface": "lo",
}


def _worker_line(script: str) -> str:
    return next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)


def _job_script(system: str, **options) -> str:
    """The job script dask-jobqueue writes for these options (no scheduler is started: one
    in the test process would share it with every other test's threads)."""
    job_class = cluster_class(system).job_cls
    return job_class(scheduler=SCHEDULER, name="job", **job_options(**options)).job_script()


@pytest.mark.parametrize(
    "system, directives",
    [
        ("slurm", ["#SBATCH -p short", "#SBATCH -A radio42", "#SBATCH --cpus-per-task=8"]),
        ("pbs", ["#PBS -q short", "#PBS -A radio42", "#PBS -l select=1:ncpus=8:mem=15GB"]),
    ],
)
def test_job_script_starts_workers_with_one_process_slot_and_their_share_of_threads(
    system, directives
):
    script = _job_script(system, **SETTINGS)
    for directive in directives:
        assert directive in script.splitlines()
    worker = _worker_line(script)
    assert f" {SCHEDULER} " in worker
    assert "--resources process=1" in worker
    assert re.search(r"--nthreads 2( |$)", worker)  # 8 cores / 4 workers
    assert "--nworkers 4" in worker
    assert "--memory-limit 3.73GiB" in worker  # 16 GB / 4 workers
    assert "--interface lo" in worker


def test_cores_must_divide_among_the_workers_of_a_job():
    with pytest.raises(ClusterError, match="8 cores do not divide among 3 worker"):
        job_options(cores=8, processes=3, memory="8GB")
    with pytest.raises(ClusterError, match="unknown batch system 'lsf'"):
        jobqueue_cluster("lsf", cores=8, processes=2, memory="8GB")


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_the_recipe_script_prints_the_job_script(system):
    """The script builds the real cluster (SLURMCluster / PBSCluster) and prints its script."""
    result = subprocess.run(
        [sys.executable, SCRIPT, system, "--cores", "4", "--processes", "2", "--memory", "8GB"]
        + ["--interface", "lo", "--port", "0", "--dashboard-port", "0", "--print-job-script"]
        + ["--prologue", "module load DP3", "--job-directive=--comment=dp3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    prefix = {"slurm": "#SBATCH", "pbs": "#PBS"}[system]
    assert f"{prefix} --comment=dp3" in lines and "module load DP3" in lines
    worker = _worker_line(result.stdout)
    assert re.search(r"tcp://127\.0\.0\.1:\d+ ", worker)
    assert "--resources process=1" in worker and "--nthreads 2" in worker


FAKE_SBATCH = """#!{python}
# Stand-in for Slurm's sbatch: run the job script here, in its own session (= the job id).
import os, shutil, subprocess, sys
jobs = os.environ["FAKE_SLURM_DIR"]
copy = shutil.copy(sys.argv[-1], os.path.join(jobs, f"job-{{len(os.listdir(jobs))}}.sh"))
with open(copy + ".out", "w") as out:
    job = subprocess.Popen(["bash", copy], stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)
with open(os.path.join(jobs, "ids"), "a") as ids:
    ids.write(f"{{job.pid}}\\n")
print(f"Submitted batch job {{job.pid}}")
"""
FAKE_SCANCEL = """#!{python}
# Stand-in for Slurm's scancel: stop the job's session.
import os, signal, sys
for job in sys.argv[1:]:
    try:
        os.killpg(int(job), signal.SIGTERM)
    except ProcessLookupError:
        pass
"""


def _job_ids(jobs: Path) -> list[int]:
    ids = jobs / "ids"
    return [int(line) for line in ids.read_text().split()] if ids.is_file() else []


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workflow_on_workers_started_as_batch_jobs(workflow, tmp_path):
    make_inputs(workflow.directory / "inputs", 2)
    fake_bin, jobs = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm-jobs"
    fake_bin.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake_bin / name).write_text(text.format(python=sys.executable))
        (fake_bin / name).chmod(0o755)
    port = free_port()
    out = tmp_path / "start_jobqueue_cluster.out"
    starter = subprocess.Popen(
        [sys.executable, SCRIPT, "slurm", "--jobs", "1", "--cores", "2", "--processes", "2"]
        + ["--memory", "4GB", "--interface", "lo", "--port", str(port)]
        + ["--dashboard-port", str(free_port()), "--walltime", "00:10:00"],
        stdout=open(out, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_DIR": str(jobs),
        },
    )
    try:
        command = wait_until(
            lambda: re.search(r"snakemake --cores 1 --config scheduler=(\S+)", out.read_text()),
            timeout=30,
        )
        assert command, out.read_text()
        scheduler = command.group(1)
        assert scheduler == f"tcp://127.0.0.1:{port}"
        wait_for_dask_workers(scheduler, 2)
        workflow.config["scheduler"] = scheduler
        result = workflow.run()
        assert result.returncode == 0, result.output
        for name in ("obs_0", "obs_1"):
            record = workflow.record(name)
            assert record is not None and record["numthreads"] == 1, name
        (job,) = _job_ids(jobs)
        # Ctrl-C on the starter cancels the job (through scancel) and stops the scheduler.
        starter.send_signal(signal.SIGINT)
        assert starter.wait(timeout=30) == 0, out.read_text()
        assert "stopping: cancelling the jobs" in out.read_text()
        assert wait_until(lambda: _gone(job), timeout=30)
    finally:
        for job in _job_ids(jobs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
