"""Dask workers as batch jobs (Slurm or PBS), through dask-jobqueue.

The workflow itself only connects to a scheduler (`--config scheduler=HOST:PORT`); this
starts one whose workers are batch jobs (see `scripts/start_jobqueue_cluster.py`). Each job
runs `processes` dask workers with `cores / processes` threads each (dask-jobqueue passes
`--nthreads`), every worker holding `process=1`, so that each runs one DP3 at a time with
all of its threads.
"""

from __future__ import annotations

from typing import Any

from dp3batch.dask_stage.cluster import (
    PROCESS_RESOURCE,
    QUIET_CLUSTER_CONFIG,
    ClusterError,
    quiet_cluster_environment,
)

SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
WORKER_ARGUMENTS = ["--resources", f"{PROCESS_RESOURCE}=1"]


def worker_threads(cores: int, processes: int) -> int:
    """Threads per dask worker (= DP3 numthreads): the job's cores shared out evenly."""
    if cores < 1 or processes < 1:
        raise ClusterError("jobqueue: cores and processes must be at least 1")
    if cores % processes:
        raise ClusterError(
            f"jobqueue: {cores} cores do not divide among {processes} worker(s) per job; "
            "choose processes that divides cores (each worker gets cores/processes threads)"
        )
    return cores // processes


def job_options(
    *,
    cores: int,
    processes: int,
    memory: str,
    queue: str | None = None,
    account: str | None = None,
    walltime: str | None = None,
    interface: str | None = None,
    local_directory: str | None = None,
    job_directives: list[str] | tuple[str, ...] = (),
    prologue: list[str] | tuple[str, ...] = (),
    log_directory: str | None = None,
) -> dict[str, Any]:
    """dask-jobqueue's job settings: `cores` and `memory` are per job; each of the job's
    `processes` workers gets `cores/processes` threads and `memory/processes` of memory, and
    holds process=1. `interface` (e.g. ib0) is the network the scheduler and the workers
    use; `job_directives` are extra `#SBATCH`/`#PBS` lines, `prologue` shell lines run
    before the workers start (e.g. `source /shared/venv/bin/activate`, `module load ...`).
    The workers leave out dask's periodic work a DP3 batch has no use for (see cluster)."""
    worker_threads(cores, processes)
    quiet = [f"export {name}={value}" for name, value in quiet_cluster_environment().items()]
    return {
        "cores": cores,
        "processes": processes,
        "memory": memory,
        "queue": queue,
        "account": account,
        "walltime": walltime,
        "interface": interface,
        "local_directory": local_directory,
        "job_extra_directives": list(job_directives),
        "job_script_prologue": [*quiet, *prologue],
        "worker_extra_args": list(WORKER_ARGUMENTS),
        "log_directory": log_directory,
    }


def cluster_class(system: str) -> Any:
    """dask-jobqueue's cluster class for a batch system (its `job_cls` writes the scripts)."""
    if system not in SYSTEMS:
        raise ClusterError(
            f"jobqueue: unknown batch system {system!r}; choose one of {', '.join(SYSTEMS)}"
        )
    import dask_jobqueue

    return getattr(dask_jobqueue, SYSTEMS[system])


def jobqueue_cluster(
    system: str, scheduler_port: int = 8786, dashboard_port: int = 8787, **options: Any
) -> Any:
    """A dask-jobqueue cluster: its scheduler runs here, its workers start as jobs once it is
    scaled (`cluster.scale(jobs=N)`). `options` are those of `job_options`."""
    import dask

    settings = job_options(**options)
    # Imported first: dask-jobqueue imports distributed, whose defaults join dask's config;
    # set() restores the config as it was on entry when it ends.
    cluster = cluster_class(system)
    with dask.config.set(QUIET_CLUSTER_CONFIG):  # its scheduler, which starts here
        return cluster(
            **settings,
            scheduler_options={"port": scheduler_port, "dashboard_address": f":{dashboard_port}"},
        )
