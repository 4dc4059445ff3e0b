"""Asking Slurm about the worker jobs: will it accept them, will they ever start, have they
ended. Without this a job Slurm can never run looks like a slow queue and the user waits.

Only Slurm's client commands are used (`sbatch --test-only`, `squeue`), with the
environment as it is (SLURM_CONF included), so it works from any login node."""

from __future__ import annotations

import getpass
import subprocess
import tempfile
from dataclasses import dataclass

COMMAND_SECONDS = 30
# Job states in which the job is still waiting or its workers still run.
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}

# Pending reasons that stay until the job is changed, whatever else happens on the cluster
# (a busy cluster, a node that is down or a held job may clear; these never do). Hints name
# the option of start_jobqueue_cluster.py to change.
NEVER_CLEARING = {
    "PartitionConfig": "the job asks for more than the partition allows "
    "(--cores, --memory, --walltime or --job-directive): see `scontrol show partition`",
    "PartitionTimeLimit": "--walltime exceeds the partition's time limit "
    "(`sinfo -o '%P %l'` shows the limits): choose a shorter --walltime or another --queue",
    "PartitionNodeLimit": "the job needs more nodes than the partition allows: "
    "lower --cores/--memory so that one node holds it, or choose another --queue",
    "BadConstraints": "no node satisfies the job's constraints: check --cores, --memory "
    "and any --job-directive=--constraint",
    "InvalidAccount": "the account is unknown: check --account (`sacctmgr show assoc user=$USER`)",
    "AccountNotAllowed": "the account may not use this partition: change --account or --queue",
    "InvalidQOS": "the QOS is unknown: fix the --job-directive=--qos=...",
    "QOSNotAllowed": "the QOS is not allowed here: change the --qos, --account or --queue",
    "PartitionInactive": "the partition is inactive: choose another --queue (`sinfo`)",
}


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    reason: str


class SlurmError(RuntimeError):
    """Slurm will not run the worker jobs; the message says what to change."""


def never_clearing_hint(reason: str) -> str | None:
    """What to change when a pending job's `reason` can never clear by itself, else None."""
    if reason in NEVER_CLEARING:
        return NEVER_CLEARING[reason]
    # Per-job maxima of an association or QOS (e.g. QOSMaxWallDurationPerJobLimit) hold
    # for this job forever, unlike group limits that clear when other jobs end.
    if reason.startswith(("QOSMax", "AssocMax")) and "PerJob" in reason:
        return (
            f"the job exceeds a per-job limit ({reason}): ask for less (--cores, --memory, "
            "--walltime) or use another --account/--queue"
        )
    return None


def parse_squeue(text: str) -> list[JobState]:
    """`squeue -h -o '%i|%T|%r'` output → job states."""
    states = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            states.append(JobState(*fields))
    return states


def blocked_jobs_error(states: list[JobState], job_ids: set[str]) -> str | None:
    """One message for the jobs among `job_ids` that wait for something that never comes."""
    lines = []
    for job in states:
        hint = never_clearing_hint(job.reason)
        if job.job_id in job_ids and job.state == "PENDING" and hint:
            lines.append(f"  Slurm job {job.job_id} pends with reason {job.reason}: {hint}")
    if not lines:
        return None
    return "\n".join(["Slurm will never start these worker job(s):", *lines])


def ended_jobs(states: list[JobState], job_ids: set[str]) -> dict[str, str]:
    """The jobs among `job_ids` that have ended, with their final state (e.g. TIMEOUT)."""
    return {
        job.job_id: job.state
        for job in states
        if job.job_id in job_ids and job.state not in LIVE_STATES
    }


def _run(arguments: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(arguments, capture_output=True, text=True, timeout=COMMAND_SECONDS)
    except FileNotFoundError as error:
        raise SlurmError(
            f"{arguments[0]} not found: run this on a Slurm login node (or use `pbs`)"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise SlurmError(
            f"`{' '.join(arguments)}` did not answer within {COMMAND_SECONDS} s: is slurmctld up?"
        ) from error


def check_submission(job_script: str) -> None:
    """Let Slurm validate the job (`sbatch --test-only`: nothing is submitted); raise with
    Slurm's own reason when it refuses (unknown partition or account, too many cores...)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="dp3batch-job-") as script:
        script.write(job_script)
        script.flush()
        result = _run(["sbatch", "--test-only", script.name])
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise SlurmError(
            f"Slurm refuses the worker job: {reason}\n"
            "Check --queue (partition: `sinfo`), --account, --cores, --memory and --walltime "
            "against what this cluster offers; `--print-job-script` shows the job script."
        )


def job_states() -> list[JobState]:
    """This user's jobs, including those that ended recently; [] if squeue fails or is slow
    (it is asked again at the next poll: a busy slurmctld must not end a running batch)."""
    try:
        result = _run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
    except SlurmError:
        return []
    return parse_squeue(result.stdout) if result.returncode == 0 else []
