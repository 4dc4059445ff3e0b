"""Start a dask scheduler here whose workers are Slurm or PBS jobs, for the workflow.

    python scripts/start_jobqueue_cluster.py slurm --jobs 4 --cores 16 --processes 4 \\
        --memory 64GB --queue normal --account myproject --walltime 08:00:00

prints the scheduler's address and the `snakemake --config scheduler=...` command to run in
another terminal, then keeps the scheduler up until Ctrl-C (which cancels the jobs). With
Slurm, a job that Slurm refuses or will never start (unknown partition, walltime above the
partition's limit, ...) ends it at once with Slurm's reason and what to change. Each job
runs PROCESSES dask workers of CORES/PROCESSES threads, each holding `process=1` (one DP3 at
a time per worker). `--print-job-script` shows the job script and submits nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp3batch.dask_stage.cluster import ClusterError  # noqa: E402
from dp3batch.scaleout import slurm  # noqa: E402
from dp3batch.scaleout.jobqueue import SYSTEMS, jobqueue_cluster, worker_threads  # noqa: E402

# How long dask-jobqueue may take to submit the jobs, and how often Slurm is asked about them.
SUBMIT_SECONDS = 60
WATCH_SECONDS = 5


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("system", choices=sorted(SYSTEMS), help="the batch system")
    parser.add_argument("--jobs", type=int, default=1, help="number of batch jobs (default 1)")
    parser.add_argument("--cores", type=int, required=True, help="cores per job")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="dask workers per job, one DP3 each; each gets cores/processes threads",
    )
    parser.add_argument("--memory", required=True, help="memory per job, e.g. 64GB")
    parser.add_argument("--queue", help="partition (Slurm) or queue (PBS)")
    parser.add_argument("--account", help="account or project to charge")
    parser.add_argument("--walltime", help="job time limit, e.g. 08:00:00")
    parser.add_argument("--interface", help="network interface of scheduler and workers (ib0)")
    parser.add_argument("--local-directory", help="node-local scratch for the workers")
    parser.add_argument("--log-directory", help="where the jobs' output files go")
    parser.add_argument(
        "--job-directive",
        action="append",
        default=[],
        help="an extra #SBATCH/#PBS directive, e.g. --job-directive=--constraint=skylake",
    )
    parser.add_argument(
        "--prologue",
        action="append",
        default=[],
        help="a shell line the job runs first, e.g. 'module load DP3' (repeatable)",
    )
    parser.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786)")
    parser.add_argument("--dashboard-port", type=int, default=8787, help="default 8787")
    parser.add_argument(
        "--print-job-script", action="store_true", help="print the job script, submit nothing"
    )
    return parser.parse_args(argv)


def submitted_job_ids(cluster: Any, jobs: int, stop: threading.Event) -> list[str]:
    """The batch system's ids of the `jobs` jobs, once all are submitted. dask-jobqueue
    submits in the background and only logs a refused submission, so wait for the ids (with
    a deadline) instead of announcing workers that will never come."""
    deadline = time.monotonic() + SUBMIT_SECONDS
    while True:
        ids = [job.job_id for job in list(cluster.workers.values()) if job.job_id]
        if len(ids) >= jobs or stop.is_set():
            return ids
        if time.monotonic() > deadline:
            raise ClusterError(
                f"only {len(ids)} of {jobs} job(s) were submitted within {SUBMIT_SECONDS} s: "
                "the submission command's error is above; fix the options it names"
            )
        time.sleep(0.2)


def watch_slurm_jobs(job_ids: list[str], stop: threading.Event) -> None:
    """Until `stop`: raise as soon as a job pends for a reason that never clears (instead of
    waiting for it forever), and say when a job ends (walltime, scancel): its workers are
    gone and their running MSs are retried on the others."""
    reported: set[str] = set()
    while not stop.wait(WATCH_SECONDS):
        states = slurm.job_states()
        blocked = slurm.blocked_jobs_error(states, set(job_ids))
        if blocked:
            raise slurm.SlurmError(blocked)
        for job_id, state in slurm.ended_jobs(states, set(job_ids) - reported).items():
            print(f"Slurm job {job_id} ended ({state}); its workers are gone", flush=True)
            reported.add(job_id)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        threads = worker_threads(arguments.cores, arguments.processes)
        cluster = jobqueue_cluster(
            arguments.system,
            cores=arguments.cores,
            processes=arguments.processes,
            memory=arguments.memory,
            queue=arguments.queue,
            account=arguments.account,
            walltime=arguments.walltime,
            interface=arguments.interface,
            local_directory=arguments.local_directory,
            log_directory=arguments.log_directory,
            job_directives=arguments.job_directive,
            prologue=arguments.prologue,
            scheduler_port=arguments.port,
            dashboard_port=arguments.dashboard_port,
        )
    except ClusterError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    with cluster:
        if arguments.print_job_script:
            print(cluster.job_script())
            return 0
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            run(cluster, arguments, threads, stop)
        except (ClusterError, slurm.SlurmError) as error:
            print(f"Error: {error}\nstopping: cancelling any submitted jobs", file=sys.stderr)
            return 2
        print("stopping: cancelling the jobs", flush=True)
    return 0


def run(cluster: Any, arguments: argparse.Namespace, threads: int, stop: threading.Event) -> None:
    """Submit the jobs, print the command to run, and watch the jobs until `stop`."""
    is_slurm = arguments.system == "slurm"
    if is_slurm:
        slurm.check_submission(cluster.job_script())
    cluster.scale(jobs=arguments.jobs)
    job_ids = submitted_job_ids(cluster, arguments.jobs, stop)
    print(
        f"dask scheduler: {cluster.scheduler_address} (dashboard {cluster.dashboard_link})\n"
        f"{arguments.jobs} {arguments.system} job(s) submitted ({', '.join(job_ids)}), each "
        f"running {arguments.processes} worker(s) x {threads} thread(s) holding process=1.\n"
        "Run the workflow (from a host that reaches the scheduler) with:\n"
        f"    snakemake --cores 1 --config scheduler={cluster.scheduler_address}\n"
        "Ctrl-C here stops the scheduler and cancels the jobs.",
        flush=True,
    )
    if is_slurm:
        watch_slurm_jobs(job_ids, stop)
    else:
        stop.wait()


if __name__ == "__main__":
    sys.exit(main())
