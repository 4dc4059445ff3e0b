"""The fan-out: one dask task per MS (small MSs several to a task, see groups), largest
first, never more in flight than DP3 slots (and one more per slot while the MSs are small).

Dask sends a task that needs a resource straight to a worker (it is never queued on the
scheduler) and runs equal-priority tasks last in, first out there, so submitting a whole
batch at once runs the MSs in no useful order and leaves the largest for last. Here the
next-largest MS is submitted only when a `process` slot is free, which keeps every slot
busy and the tail short. The same loop watches the cluster: a scheduler that stops
answering, or no worker holding `process` for `worker_grace` seconds, ends the batch with
what finished kept and the rest named.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage.cluster import (
    SCHEDULER_ANSWER_SECONDS,
    ClusterError,
    SchedulerLost,
    call_with_deadline,
    worker_command,
)
from dp3batch.dask_stage.execution import process_measurement_set
from dp3batch.dask_stage.groups import GroupResult, process_group, take_group
from dp3batch.dask_stage.interrupts import Interrupted, StopRequest
from dp3batch.dask_stage.join import join_chunks
from dp3batch.dask_stage.memory import gib
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.task_keys import TaskKeys
from dp3batch.dask_stage.watchdog import ClusterWatch
from dp3batch.dask_stage.worker_faults import WorkerCannotRun

__all__ = ["Dispatch", "SchedulerLost", "WorkersLost", "fan_out", "lost_result", "stop_running"]

log = logging.getLogger("dp3batch")

WAIT_SECONDS = 0.5
HEALTH_CHECK_SECONDS = 2.0
# Up to this size (bytes of the main table, `Task.size`), an MS's DP3 takes a few seconds
# at most, and the round trip from one task's end to the next one's start on that worker
# (the worker tells the scheduler, which tells this loop, which submits the next MS, which
# the scheduler sends to a worker: 18 ms a task on 2 busy cores, measured) is a share of it
# worth saving. So one such task more per slot of the workers that have returned a result
# waits on those workers, and a worker starts it the moment its slot frees (then 5 ms).
# Every slot keeps one task open to any worker besides, so that a worker that joins or
# comes back still gets work. The price: a waiting task may wait on the busier
# worker at the end (one small MS's time at most). dask charges it with the death of a
# worker it waited on as if it ran there; the batch does not (see worker_deaths).
# A larger MS waits here for a free slot, and goes to the worker that is free.
PREFETCH_MAX_BYTES = 64 * 1024**2
STOP_SECONDS = 15.0


class WorkersLost(ClusterError):
    """No worker has held the `process` resource for the whole grace period."""

    headline = "no worker that can run DP3 is left"


@dataclass
class Dispatch:
    """What the fan-out needs besides the client: the tasks, how to name and size them."""

    tasks: list[Task]
    batch_id: str
    scheduler_address: str
    worker_grace: float
    on_result: Callable[[TaskResult], None]
    # Set by a signal or when Snakemake has gone (see interrupts.interruptible).
    stop: StopRequest = field(default_factory=StopRequest)
    # Submitted and not finished: what to stop when the batch ends early.
    in_flight: dict[Any, Task] = field(default_factory=dict)
    # The cluster as the batch sees it: silent and excluded workers, the scheduler's id.
    watch: ClusterWatch | None = None
    # Tasks that became ready during the batch (a join, once its chunks are done): `on_result`
    # appends them; they are submitted before the rest.
    ready: list[Task] = field(default_factory=list)
    # The in-flight futures that run a group of small MSs (see groups), and their MSs; and
    # the MSs whose group met a fault, which run alone from then on.
    groups: dict[Any, tuple[Task, ...]] = field(default_factory=dict)
    singles: set[str] = field(default_factory=set)
    # How many groups were submitted, with how many MSs in all (for the batch log).
    group_tasks: int = 0
    grouped_mss: int = 0


def largest_first(tasks: list[Task]) -> list[Task]:
    """The order of submission: by estimated cost (`size`), largest first; stable."""
    return sorted(tasks, key=lambda task: -task.size)


class Submission(Enum):
    """Where the next task may go."""

    OPEN = "open"  # to any eligible worker, which the scheduler picks
    WAITING = "waiting"  # to the proven workers, where it waits for a slot to free


def next_submission(
    next_task: Task, open_tasks: int, waiting_tasks: int, slots: int, proven_slots: int
) -> Submission | None:
    """Whether `next_task` may be submitted now, and how: open while fewer tasks than
    slots are open; when small (see PREFETCH_MAX_BYTES), waiting while fewer tasks than
    the proven workers' slots wait; else not now. Counting the two apart keeps a slot of a
    worker that joined since from starving behind tasks waiting on the others."""
    if open_tasks < slots:
        return Submission.OPEN
    if 0 < next_task.size <= PREFETCH_MAX_BYTES and waiting_tasks < proven_slots:
        return Submission.WAITING
    return None


def lost_result(task: Task, reason: str, error: str = "") -> TaskResult:
    """The result of a task that returned none (its worker died, the batch ended)."""
    return TaskResult(
        name=task.name,
        input=task.input,
        output=task.output,
        log=task.log,
        status=Status.FAILED,
        reason=reason,
        error=error,
        size_estimate_bytes=task.size or None,
    )


def fan_out(client, dispatch: Dispatch) -> None:
    """Run every task; each result goes to `dispatch.on_result` as it arrives.

    Raises Interrupted (signal or lost parent), WorkersLost or SchedulerLost; the caller
    then stops what runs (`stop_running`)."""
    queue = largest_first(dispatch.tasks)
    keys = TaskKeys([task.name for task in dispatch.tasks], dispatch.batch_id)
    finished = threading.Event()  # set by a future's callback when it completes
    in_flight = dispatch.in_flight
    watch = dispatch.watch or ClusterWatch(
        client, dispatch.batch_id, dispatch.scheduler_address, "", float("inf"), None
    )
    slots = 0
    waiting: set[Any] = set()  # the in-flight futures submitted to wait on proven workers
    no_worker_since: float | None = None
    next_check = 0.0
    while queue or in_flight or dispatch.ready:
        if dispatch.ready:  # joins whose chunks are all done: they finish an MS
            queue[:0] = dispatch.ready
            dispatch.ready.clear()
        if (cause := dispatch.stop.cause) is not None:
            raise Interrupted(cause)
        now = time.monotonic()
        if now >= next_check:
            watch.look()
            # Tasks of silent workers, and tasks whose allowed workers all left, run again.
            taken, committed = watch.take_from_silent(in_flight, dispatch.groups)
            for result in committed:
                dispatch.on_result(result)
            done_names = {result.name for result in committed}
            for future in [*taken, *watch.stranded(in_flight)]:
                task = in_flight.pop(future)
                watch.finished(future)
                members = dispatch.groups.pop(future, None)
                if members is not None:
                    _run_alone(members, done_names, dispatch, watch, queue)
                elif task.name not in done_names:
                    queue.insert(0, task)
            slots = watch.slots()
            next_check = now + HEALTH_CHECK_SECONDS
            if slots:
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = now
                log.error(watch.no_slots_message(dispatch.worker_grace))
            elif now - no_worker_since > dispatch.worker_grace:
                raise WorkersLost(
                    f"no dask worker holding the process resource was left for "
                    f"{dispatch.worker_grace:.0f} s. Start workers with:\n    "
                    f"{worker_command(dispatch.scheduler_address)}"
                )
        restriction = watch.restriction()
        proven = watch.proven_workers()
        proven_slots = watch.slots(proven)
        waiting.intersection_update(in_flight)
        while queue:
            submission = next_submission(
                queue[0], len(in_flight) - len(waiting), len(waiting), slots, proven_slots
            )
            if submission is None:
                break
            workers = restriction if submission is Submission.OPEN else proven
            group = take_group(queue, slots, dispatch.singles)
            task = group[0]
            function, argument = (
                (process_group, tuple(group))
                if len(group) > 1
                else (join_chunks if task.chunks else process_measurement_set, task)
            )
            future = client.submit(
                function,
                argument,
                key=watch.key(task, keys.of(task.name)),
                resources={"process": 1},
                priority=task.size,
                pure=False,
                workers=workers,
            )
            in_flight[future] = task
            if len(group) > 1:
                dispatch.groups[future] = tuple(group)
                dispatch.group_tasks += 1
                dispatch.grouped_mss += len(group)
            if submission is Submission.WAITING:
                waiting.add(future)
            watch.submitted(future, workers)
            future.add_done_callback(lambda _: finished.set())
        finished.wait(WAIT_SECONDS)
        finished.clear()
        done = [future for future in in_flight if future.done()]
        if any(future.cancelled() for future in done):
            # The client cancels every future when its connection to the scheduler breaks.
            watch.raise_if_scheduler_lost()
            watch.look()  # reconnected already: to another scheduler?
        for future in done:
            task = in_flight.pop(future)
            members = dispatch.groups.pop(future, None)
            if members is None:
                _handle_done(future, task, dispatch, watch, queue)
            else:
                _handle_group_done(future, members, dispatch, watch, queue)
            watch.finished(future)


def _handle_done(
    future: Any, task: Task, dispatch: Dispatch, watch: ClusterWatch, queue: list[Task]
) -> None:
    """A finished future: its result to `dispatch.on_result`, or its task back on `queue`
    (its worker could not run it, or died of something else than it)."""
    fault = _error_of(future)
    if isinstance(fault, WorkerCannotRun):
        if watch.cannot_run(fault, task):
            queue.insert(0, task)  # to another worker
        else:
            dispatch.on_result(lost_result(task, fault.problem, str(fault)))
        return
    if type(fault).__name__ == "KilledWorker":
        if watch.survives_deaths(task, fault):
            queue.insert(0, task)  # its workers died together, or it only waited there
        else:
            dispatch.on_result(lost_result(task, killed_worker_reason(fault)))
        return
    result = _result_of(future, task)
    watch.ran(result)
    dispatch.on_result(result)


def _handle_group_done(
    future: Any,
    members: tuple[Task, ...],
    dispatch: Dispatch,
    watch: ClusterWatch,
    queue: list[Task],
) -> None:
    """A finished group: each MS's result to `dispatch.on_result`; the MSs a worker could not
    run go to another, as a task would. A group that erred (its workers died, or an internal
    error) gives what it committed, and its other MSs run again alone: an MS that kills its
    worker then meets dask's count of deaths alone, and fails alone."""
    fault = _error_of(future)
    try:
        outcome = None if fault is not None else future.result(timeout=SCHEDULER_ANSWER_SECONDS)
    except Exception as error:  # noqa: BLE001 - named below, as for a task
        fault = error
        outcome = None
    if isinstance(outcome, GroupResult):
        for result in outcome.results:
            watch.ran(result)
            dispatch.on_result(result)
        if outcome.cannot_run is not None and outcome.not_run:
            first, *rest = outcome.not_run
            # One start failure of the worker (as for a task), for the MS it failed on.
            if watch.cannot_run(outcome.cannot_run, first):
                queue[:0] = [first, *rest]
            else:
                queue[:0] = rest
                fault_text = str(outcome.cannot_run)
                dispatch.on_result(lost_result(first, outcome.cannot_run.problem, fault_text))
        return
    if type(fault).__name__ == "KilledWorker" or isinstance(fault, WorkerCannotRun):
        _run_alone(members, set(), dispatch, watch, queue)
        return
    reason = f"{type(fault).__name__}: {fault}" if fault is not None else "no result"
    for task in members:
        done = watch.committed(task) if watch.committed else None
        dispatch.on_result(done or lost_result(task, reason, str(fault or "")))


def _run_alone(
    members: tuple[Task, ...],
    reported: set[str],
    dispatch: Dispatch,
    watch: ClusterWatch,
    queue: list[Task],
) -> None:
    """A group taken back (its worker died or fell silent): the result of each MS it
    committed (unless in `reported`) to `dispatch.on_result`, the others back on `queue`,
    to run alone."""
    again = []
    for task in members:
        if task.name in reported:
            continue
        done = watch.committed(task) if watch.committed else None
        if done is not None:
            dispatch.on_result(done)
        else:
            dispatch.singles.add(task.name)
            again.append(task)
    queue[:0] = again


def _error_of(future) -> BaseException | None:
    """The exception of a task that raised one (a worker that cannot run it, dask's
    KilledWorker, an internal error), or None."""
    if future.status != "error":
        return None
    try:
        return future.exception(timeout=SCHEDULER_ANSWER_SECONDS)
    except Exception:  # noqa: BLE001 - no exception to read: `_result_of` names the problem
        return None


def _result_of(future, task: Task) -> TaskResult:
    try:
        return future.result(timeout=SCHEDULER_ANSWER_SECONDS)
    except Exception as error:  # an internal error (KilledWorker was read by `_error_of`)
        return lost_result(task, f"{type(error).__name__}: {error}", str(error))


def killed_worker_reason(error: BaseException) -> str:
    """dask's KilledWorker: each worker that ran the task died (a worker is killed with
    SIGKILL by the kernel's out-of-memory killer, by a batch system, or by hand), with the
    memory limit of the last one."""
    worker = getattr(error, "last_worker", None)
    address = getattr(worker, "address", None)
    limit = getattr(worker, "memory_limit", None)
    last = f"; the last was {address}" if address else ""
    if limit:
        last += f", with a memory limit of {gib(limit)}"
    return (
        f"its worker died during every attempt{last}: killed, possibly out of memory (give each "
        "DP3 more memory: fewer workers per host, more memory per worker or job) or by its "
        "batch system; see the worker's log"
    )


def stop_running(client, dispatch: Dispatch, seconds: float = STOP_SECONDS) -> None:
    """Cancel the batch's tasks and wait (at most `seconds`) until no worker runs one: each
    task stops its DP3 within half a second of noticing."""
    if not dispatch.in_flight:
        return
    try:
        call_with_deadline(
            lambda: client.cancel(list(dispatch.in_flight), force=True),
            SCHEDULER_ANSWER_SECONDS,
            "cancel",
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            running = call_with_deadline(
                lambda: client.run(_executing_function(), dispatch.batch_id),
                SCHEDULER_ANSWER_SECONDS,
                "a request for the running tasks",
            )
            if not any(running.values()):
                return
            time.sleep(WAIT_SECONDS)
        log.error("some DP3 task(s) did not stop within %.0f s", seconds)
    except Exception as error:  # the scheduler is gone: its workers cannot be told
        log.error("could not stop the running tasks: %s", error)


def _executing_function():
    """Runs on each worker (pickled by value: external workers may lack this package)."""

    def executing(batch_id, dask_worker=None):
        return [str(task.key) for task in dask_worker.state.executing if batch_id in str(task.key)]

    return executing
