"""Small MSs several to a dask task: each MS's checks and commit run while the next one's DP3
does.

A small MS's DP3 takes a fraction of a second, and what its task does beside it (read the
output, its flag statistics, write the record, commit; dask's round trip to the next task)
took a fifth as long again on the DP3 slot, between two DP3 runs. In a group, MS i's second
stage (see execution.Stages) runs once MS i+1's DP3 has started, in the same worker thread:
one DP3 at a time per worker as before, the slot's time between two DP3 runs only MS i+1's
preparation. Each MS keeps its own result, record and commit; the group ends with the
result of every MS that ran (see GroupResult).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage.execution import Stages
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.worker_faults import WorkerCannotRun

# Of MSs up to this size (bytes of the main table, `Task.size`), several go into one task.
GROUP_MAX_BYTES = 64 * 1024**2
# At most this many MSs, and this many bytes in all, in one group: its results come back
# together, and the batch's progress moves by a group at a time.
GROUP_MAX_MSS = 8
GROUP_MAX_TOTAL_BYTES = 64 * 1024**2
# Groups shrink as the queue does, to at most 1 / TAIL_SHARE of the queued small MSs per
# slot, so that the slots finish together rather than one waiting on a large last group.
TAIL_SHARE = 4


@dataclass(frozen=True)
class GroupResult:
    """What a group's task returns: the result of each MS that ran, and, when a worker
    could not run one (`WorkerCannotRun`), why and the MSs it did not start (that one and
    those after it), for the central job to give to another worker."""

    results: tuple[TaskResult, ...]
    cannot_run: WorkerCannotRun | None = None
    not_run: tuple[Task, ...] = ()


def groupable(task: Task) -> bool:
    """A DP3 run of a small MS (not a join of frequency chunks)."""
    return task.chunks is None and 0 < task.size <= GROUP_MAX_BYTES


def take_group(queue: list[Task], slots: int, singles: Iterable[str] = ()) -> list[Task]:
    """Pops the next task from `queue` and, if it is a small MS, the small MSs after it
    that go into the same task (see TAIL_SHARE): never one named in `singles` (an MS whose
    group met a fault runs alone)."""
    first = queue.pop(0)
    alone = set(singles)
    if not groupable(first) or first.name in alone:
        return [first]
    group, total = [first], first.size
    queued_small = sum(1 for task in queue if groupable(task)) + 1
    size = max(1, min(GROUP_MAX_MSS, queued_small // (TAIL_SHARE * max(1, slots))))
    while queue and len(group) < size:
        following = queue[0]
        if (
            not groupable(following)
            or following.name in alone
            or total + following.size > GROUP_MAX_TOTAL_BYTES
        ):
            break
        group.append(queue.pop(0))
        total += following.size
    return group


def process_group(tasks: tuple[Task, ...]) -> GroupResult:
    """Run the chain on each MS of `tasks` in turn, each one's second stage beside the next
    one's DP3. TaskCancelled and BatchStopped end the group (what it committed stays
    committed: the central job reads it from the records)."""
    results: list[TaskResult] = []
    pending: list[Stages] = []  # the MS whose DP3 ended and whose output is not committed
    raised: list[BaseException] = []  # what the previous MS's second stage raised

    def finish_previous() -> None:
        while pending:
            stages = pending.pop()
            try:
                for _ in stages:
                    pass
            except BaseException as error:  # noqa: BLE001 - raised in the group's thread, after
                raised.append(error)
                return
            assert stages.result is not None
            results.append(stages.result)

    try:
        for index, task in enumerate(tasks):
            stages = Stages(task, finish_previous if pending else None)
            try:
                next(stages)
            except StopIteration:  # ended before its second stage (failed, or done before)
                assert stages.result is not None
                finish_previous()
                results.append(stages.result)
            except WorkerCannotRun as error:
                finish_previous()
                _raise_first(raised)
                return GroupResult(tuple(results), error, tasks[index:])
            else:
                finish_previous()  # when DP3's start did not reach `beside`
                pending.append(stages)
            _raise_first(raised)
        finish_previous()
        _raise_first(raised)
    finally:
        for stages in pending:  # interrupted between its stages: nothing committed
            stages.close()
    return GroupResult(tuple(results))


def _raise_first(raised: list[BaseException]) -> None:
    if raised:
        raise raised[0]
