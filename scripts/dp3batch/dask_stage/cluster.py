"""Dask clusters: the embedded local one, connecting to an existing one, and the pre-flight
check that some worker can run DP3 tasks (a task whose resource no worker holds would wait
forever)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from dp3batch.books.batch_spec import BatchSpec, parallel_tasks
from dp3batch.dask_stage.memory import gib, memory_limit, worker_share

log = logging.getLogger("dp3batch")
# `log.info(..., extra=FILE_ONLY)`: for the batch's log file, not the terminal (see
# central_job's logging: dask's own warnings, and an error the run prints again at its end).
FILE_ONLY = {"terminal": False}

PROCESS_RESOURCE = "process"
CONNECT_TIMEOUT_SECONDS = 10
# How long one request to the scheduler may take before it counts as not answering.
SCHEDULER_ANSWER_SECONDS = 15
CLOSE_SECONDS = 10
# Closing a client of a scheduler known not to answer: nothing to wait for.
UNANSWERED_CLOSE_SECONDS = 1
LOCAL_DASHBOARD_LINK = "http://127.0.0.1:{port}/status"
# dask's periodic work that a batch of DP3 child processes has no use for. With its defaults
# the embedded cluster used 0.8 CPU-seconds more per 20 s of batch, taken from DP3 on a
# machine whose every core runs one: the statistical profiler samples each worker's threads
# every 10 ms (a task only waits for DP3), the event loop's blocking check ticks every 20 ms,
# work stealing looks for work to move every 100 ms (the fan-out queues no more tasks than
# free slots, or one more per slot of small MSs), and the memory monitors measure every
# 0.1-0.5 s the memory of this process, not DP3's.
# dask keeps its last 1,000 messages of each connection, transitions and stimuli "for
# developers" (`low-level-log-length`): task specifications and results are in them, tens of
# MB by a few thousand tasks with the embedded cluster in one process, and a scheduler keeps
# 1,000 for each worker's connection. Nothing of the workflow reads them (it hears worker
# deaths as they happen, see worker_deaths).
SHORT_LOG_CONFIG = {"distributed.admin.low-level-log-length": 100}
# The same for an external cluster's scheduler and workers: `quiet_cluster_environment()`.
QUIET_CLUSTER_CONFIG = {
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    **SHORT_LOG_CONFIG,
}


# The embedded workers are threads of one process, and a worker's memory limit is only the
# share of memory its DP3 (a child process, which dask cannot see) may use: dask's own
# reactions to the process's memory (spill, pause, restart) must not act on that share.
EMBEDDED_MEMORY_CONFIG = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": False,
}


def quiet_cluster_environment() -> dict[str, str]:
    """QUIET_CLUSTER_CONFIG as the environment variables dask reads when a `dask scheduler`
    or `dask worker` starts (docs/clusters.md: "Using an existing dask cluster")."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in QUIET_CLUSTER_CONFIG.items()
    }


class ClusterError(RuntimeError):
    """The cluster cannot run the batch; the message says what to do."""


class SchedulerUnresponsive(ClusterError):
    """A request to the scheduler got no answer in time (a stopped or overloaded scheduler)."""


class SchedulerLost(ClusterError):
    """The scheduler stopped answering, closed the connection, or was restarted.

    `unanswered`: it stopped answering (its connection still open): a request to cancel the
    batch's tasks, or a client's goodbye, would only wait out its deadline too."""

    headline = "the dask scheduler was lost"

    def __init__(self, message: str, unanswered: bool = False):
        super().__init__(message)
        self.unanswered = unanswered


def call_with_deadline(function, seconds: float, what: str):
    """`function()`, or SchedulerUnresponsive after `seconds`: dask's synchronous calls wait
    for a scheduler that stopped answering as long as its TCP connection stays open."""
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    caller = threading.Thread(target=call, name=f"dp3batch-{what}", daemon=True)
    caller.start()
    caller.join(seconds)
    if caller.is_alive():
        raise SchedulerUnresponsive(f"no answer to {what} within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    threads: int
    process_slots: float
    memory_limit: int | None
    host: str
    # When the scheduler last heard from it (the scheduler's clock), if it says.
    last_seen: float | None = None
    name: str | None = None


def worker_command(address: str) -> str:
    plain = address.removeprefix("tcp://")
    return f'dask worker {plain} --nworkers N --nthreads T --resources "process=1"'


def local_cluster_size(
    cores: int,
    pending: int,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
) -> tuple[int, int]:
    """Workers and threads for the embedded cluster: never more threads than cores.

    One DP3 per worker; DP3 scales less than linearly with threads, so prefer more workers
    with fewer threads, but never more workers than MSs to process (with fewer MSs than
    cores, each worker gets an equal share of the cores)."""
    cores = max(1, cores)
    if n_workers is None:
        if threads_per_worker is not None:
            n_workers = max(1, cores // threads_per_worker)
        else:
            n_workers = max(1, min(cores, pending))
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // n_workers)
    return n_workers, threads_per_worker


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_workers(client, deadline: float = SCHEDULER_ANSWER_SECONDS) -> list[WorkerInfo]:
    return describe_cluster(client, deadline)[1]


def describe_cluster(
    client, deadline: float = SCHEDULER_ANSWER_SECONDS
) -> tuple[str, list[WorkerInfo]]:
    """The scheduler's id (a new one after a restart) and its workers, in one request."""
    info = call_with_deadline(
        lambda: client.scheduler_info(n_workers=-1), deadline, "a request for the workers"
    )
    return str(info.get("id", "")), _workers_of(info)


def _workers_of(info: dict) -> list[WorkerInfo]:
    workers = []
    for address, worker in info.get("workers", {}).items():
        workers.append(
            WorkerInfo(
                address=address,
                threads=int(worker.get("nthreads", 0)),
                process_slots=float(worker.get("resources", {}).get(PROCESS_RESOURCE, 0)),
                memory_limit=worker.get("memory_limit") or None,
                host=worker.get("host", ""),
                last_seen=worker.get("last_seen"),
                name=None if worker.get("name") is None else str(worker.get("name")),
            )
        )
    return workers


def _unreachable(address: str, cause: str) -> ClusterError:
    plain = address.removeprefix("tcp://")
    return ClusterError(
        f"cannot reach the dask scheduler at {plain} ({cause}).\n"
        "Start one with `dask scheduler` (it listens on port 8786) and its workers with\n"
        f"    {worker_command(address)}\n"
        "or leave `scheduler` empty to use an embedded local cluster."
    )


# A dask scheduler sends its handshake the moment a connection opens (within milliseconds);
# a web server says nothing until it is asked, and then answers within milliseconds too.
SPEAKS_FIRST_SECONDS = 1.0
HTTP_ANSWER_SECONDS = 3.0


def speaks_http(host: str, port: int, timeout: float = CONNECT_TIMEOUT_SECONDS) -> bool:
    """Whether the server at host:port is a web server (dask's dashboard on 8787 is the usual
    mistake) rather than a dask scheduler. Raises OSError if nothing listens there.

    A dask scheduler speaks first, and is never sent anything here. A server that stays
    silent is asked `GET /` and is a web server if it answers `HTTP/`."""
    with socket.create_connection((host, port), timeout=timeout) as probe:
        probe.settimeout(SPEAKS_FIRST_SECONDS)
        try:
            return probe.recv(5) == b"HTTP/"
        except TimeoutError:
            pass  # silent: not a dask scheduler that answers
        probe.settimeout(min(timeout, HTTP_ANSWER_SECONDS))
        try:
            probe.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return probe.recv(5) == b"HTTP/"
        except OSError:
            return False


@contextlib.contextmanager
def connect(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> Iterator:
    """A client of an existing scheduler; a clear error if it does not answer in time."""
    import dask
    from distributed import Client

    plain = address.removeprefix("tcp://")
    host, _, port = plain.rpartition(":")
    try:
        # A refused connection is known at once; dask's client would retry until its timeout.
        web = speaks_http(host.strip("[]"), int(port), timeout)
    except OSError as error:
        raise _unreachable(address, str(error) or "no answer") from error
    if web:
        raise ClusterError(
            f"{plain} answers HTTP: it is a web page (dask's dashboard listens on port 8787), "
            "not the dask scheduler. The scheduler listens on another port, usually 8786: "
            f'scheduler={host}:8786 (`dask scheduler` prints both: "Scheduler at: '
            'tcp://HOST:8786" and "dashboard at: HOST:8787").'
        )
    try:
        # Client(timeout=) does not bound the handshake with a scheduler that accepts the
        # connection and then says nothing (a stopped one, or another program on the port).
        with dask.config.set(SHORT_LOG_CONFIG):  # its connection's log
            client = call_with_deadline(
                lambda: Client(address, timeout=f"{timeout}s", set_as_default=False),
                timeout + 5,
                "the connection handshake",
            )
    except (OSError, TimeoutError, SchedulerUnresponsive) as error:
        raise _unreachable(address, str(error) or f"no answer within {timeout:.0f} s") from error
    unanswered = False
    try:
        yield client
    except SchedulerLost as error:
        unanswered = error.unanswered
        raise
    finally:
        close_quietly(client, UNANSWERED_CLOSE_SECONDS if unanswered else CLOSE_SECONDS)


def close_quietly(closable, seconds: float = CLOSE_SECONDS) -> None:
    """Close a client or cluster within `seconds`, whatever state its scheduler is in."""
    with contextlib.suppress(Exception):
        call_with_deadline(lambda: closable.close(timeout=seconds), seconds + 5, "closing")


@contextlib.contextmanager
def embedded_cluster(n_workers: int, threads_per_worker: int) -> Iterator:
    """A local cluster whose workers each hold process=1, and its client.

    The workers are threads of this process, not processes with nannies: DP3 runs as a child
    process anyway (the GIL is not in its way), and worker processes cost start-up time and
    CPU beside every DP3. When this process ends, every DP3 it started ends with it."""
    import dask
    from distributed import Client, LocalCluster

    limit = memory_limit()
    memory_per_worker = worker_share(limit, n_workers)
    log.info(
        "memory: %s per worker, of %s (%s in use)",
        gib(memory_per_worker),
        limit.describe(),
        gib(limit.in_use_bytes),
    )
    settings = {
        **QUIET_CLUSTER_CONFIG,
        **EMBEDDED_MEMORY_CONFIG,
        "distributed.scheduler.allowed-failures": 2,
    }
    with (
        dask.config.set(settings),
        warnings.catch_warnings(record=True) as dask_warnings,
    ):
        # dask's own warnings ("Port 8787 is already in use": another cluster's dashboard)
        # go to the batch's log; the dashboard's actual address is logged by the pre-flight.
        warnings.simplefilter("always")
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=False,
            # The HTTP server listens from the start; the dashboard joins it (below).
            dashboard_address="127.0.0.1:8787",
            scheduler_kwargs={"dashboard": False},
            resources={PROCESS_RESOURCE: 1},
            memory_limit=memory_per_worker,
            silence_logs=40,
        )
    for warning in dask_warnings:
        log.info("dask: %s", " ".join(str(warning.message).split()), extra=FILE_ONLY)
    _serve_dashboard_when_asked(cluster.scheduler)
    try:
        with dask.config.set(SHORT_LOG_CONFIG):  # its connection's log too
            client = Client(cluster, set_as_default=False)
        try:
            # It listens on this machine only (dask would name the host's outside address).
            with dask.config.set({"distributed.dashboard.link": LOCAL_DASHBOARD_LINK}):
                yield client
        finally:
            close_quietly(client)
    finally:
        close_quietly(cluster)


# The dashboard's pages (bokeh applications, and "/" that leads to /status).
DASHBOARD_PAGES = (
    r"/(status|workers|tasks|system|profile|profile-server|graph|groups|gpu|hardware|"
    r"counters|events|exceptions|shuffle|stealing|individual-[a-z-]+)?/?$"
)


def _serve_dashboard_when_asked(scheduler) -> None:
    """Load dask's dashboard onto the scheduler's HTTP server the first time someone opens
    one of its pages.

    Its plotting library costs about 0.5 CPU-seconds to import and its periodic updates more
    beside every DP3, whether or not anybody looks: a batch nobody watches should not pay for
    it. Until then a dashboard page is answered by loading it (once) and sending the browser
    back to the same address, which the dashboard then serves."""
    from tornado import web
    from tornado.routing import PathMatches, Rule

    loaded = threading.Event()

    class UntilLoaded(PathMatches):
        def match(self, request):
            return None if loaded.is_set() else super().match(request)

    class LoadDashboard(web.RequestHandler):
        def get(self, *_) -> None:
            if not loaded.is_set():
                try:
                    from distributed.dashboard import scheduler as dashboard
                except ImportError:  # no bokeh: the scheduler serves its plain pages only
                    raise web.HTTPError(404) from None
                dashboard.connect(scheduler.http_application, scheduler.http_server, scheduler)
                loaded.set()
            self.redirect(self.request.uri)

    # Before the scheduler's own routes (host rules are tried first); its other pages
    # (/info, /health, /metrics, ...) do not match.
    scheduler.http_application.add_handlers(
        r".*$", [Rule(UntilLoaded(DASHBOARD_PAGES), LoadDashboard)]
    )


@contextlib.contextmanager
def cluster_client(batch: BatchSpec) -> Iterator:
    scheduler = batch.scheduler
    if scheduler:
        with connect(scheduler) as client:
            yield client
        return
    local = batch.local_cluster
    n_workers, threads = local_cluster_size(
        available_cores(),
        parallel_tasks(batch),  # a chunked MS: one per chunk
        local.get("n_workers"),
        local.get("threads_per_worker"),
    )
    log.info("starting an embedded dask cluster: %d worker(s) x %d thread(s)", n_workers, threads)
    with embedded_cluster(n_workers, threads) as client:
        yield client
