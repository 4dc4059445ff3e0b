"""Workers as Slurm/PBS jobs through dask-jobqueue (scripts/start_jobqueue_cluster.py): the
job scripts dask-jobqueue writes, and how Slurm's answers about the jobs are read. The runs
on a real Slurm are in test_slurm.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO
from dp3batch.dask_stage.cluster import QUIET_CLUSTER_CONFIG, ClusterError
from dp3batch.scaleout.jobqueue import cluster_class, job_options, jobqueue_cluster
from dp3batch.scaleout.slurm import (
    JobState,
    blocked_jobs_error,
    ended_jobs,
    never_clearing_hint,
    parse_squeue,
)

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


SQUEUE = """\
101|RUNNING|None
102|PENDING|Resources
103|PENDING|PartitionTimeLimit
104|PENDING|QOSMaxWallDurationPerJobLimit
105|TIMEOUT|TimeLimit
garbage line
"""


def test_squeue_lines_become_job_states():
    states = parse_squeue(SQUEUE)
    assert [job.job_id for job in states] == ["101", "102", "103", "104", "105"]
    assert states[2] == JobState("103", "PENDING", "PartitionTimeLimit")


def test_only_pending_reasons_that_never_clear_are_an_error():
    states = parse_squeue(SQUEUE)
    # A busy cluster (Resources) is a wait, not an error.
    assert blocked_jobs_error(states, {"101", "102"}) is None
    message = blocked_jobs_error(states, {"102", "103", "104"})
    assert message.splitlines()[0] == "Slurm will never start these worker job(s):"
    assert "Slurm job 103 pends with reason PartitionTimeLimit: --walltime exceeds" in message
    assert "Slurm job 104 pends with reason QOSMaxWallDurationPerJobLimit" in message
    assert "102" not in message
    # Other users' jobs are none of our business.
    assert blocked_jobs_error(states, {"999"}) is None
    assert never_clearing_hint("AssocGrpCpuLimit") is None  # clears when other jobs end
    assert "--account" in never_clearing_hint("InvalidAccount")


def test_ended_jobs_are_those_no_longer_pending_or_running():
    assert ended_jobs(parse_squeue(SQUEUE), {"101", "102", "105"}) == {"105": "TIMEOUT"}


def test_job_script_workers_leave_out_dasks_periodic_work_before_the_users_prologue():
    script = _job_script("slurm", **SETTINGS, prologue=["module load DP3"]).splitlines()
    exports = [line for line in script if line.startswith("export DASK_")]
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in exports
    assert len(exports) == len(QUIET_CLUSTER_CONFIG)
    assert script.index(exports[-1]) < script.index("module load DP3")
