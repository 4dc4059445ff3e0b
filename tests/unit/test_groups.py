"""Small MSs several to a dask task (dask_stage.groups): which MSs go together, and what the
fan-out makes of a group's outcome (its results, a worker that cannot run it, its worker's
death)."""

from __future__ import annotations

from dataclasses import replace

from contract_examples import make_spec
from dp3batch.books.batch_spec import PendingMS
from dp3batch.books.status import Status
from dp3batch.dask_stage.dispatch import Dispatch, _handle_group_done, lost_result
from dp3batch.dask_stage.groups import (
    GROUP_MAX_BYTES,
    GROUP_MAX_MSS,
    GROUP_MAX_TOTAL_BYTES,
    GroupResult,
    take_group,
)
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.worker_faults import WorkerCannotRun

SMALL = 800_000


def tasks(count: int, size: int = SMALL, prefix: str = "obs") -> list[Task]:
    batch = make_spec()
    return [
        Task.of(
            batch,
            PendingMS(
                name=f"{prefix}_{index}",
                input=f"/in/{prefix}_{index}.ms",
                output=f"/out/{prefix}_{index}.ms",
                band=None,
                reason="",
                size=size,
            ),
        )
        for index in range(count)
    ]


def names(group: list[Task]) -> list[str]:
    return [task.name for task in group]


def test_a_long_queue_of_small_mss_goes_in_groups_of_the_largest_size():
    queue = tasks(100)
    group = take_group(queue, slots=2)
    assert names(group) == [f"obs_{index}" for index in range(GROUP_MAX_MSS)]
    assert len(queue) == 100 - GROUP_MAX_MSS


def test_groups_shrink_with_the_queue_so_that_the_slots_end_together():
    # 2 slots: at most a quarter of the queued small MSs per slot in one group.
    assert len(take_group(tasks(24), slots=2)) == 3
    assert len(take_group(tasks(16), slots=2)) == 2
    assert len(take_group(tasks(15), slots=2)) == 1
    assert len(take_group(tasks(40), slots=4)) == 2
    # Before any worker is known (0 slots): as for one slot.
    assert len(take_group(tasks(12), slots=0)) == 3


def test_a_large_ms_a_join_and_an_ms_that_runs_alone_are_never_grouped():
    large = tasks(1, size=GROUP_MAX_BYTES + 1, prefix="large")
    queue = large + tasks(40)
    assert names(take_group(queue, slots=1)) == ["large_0"]
    # A group stops before a large MS.
    queue = tasks(3) + tasks(1, size=GROUP_MAX_BYTES + 1, prefix="large") + tasks(40, prefix="b")
    assert names(take_group(queue, slots=1)) == ["obs_0", "obs_1", "obs_2"]
    assert queue[0].name == "large_0"
    # Unknown size (0): it may be large.
    assert len(take_group(tasks(40, size=0), slots=1)) == 1
    join = [replace(task, chunks=()) for task in tasks(1, prefix="join")]
    assert names(take_group(join + tasks(40), slots=1)) == ["join_0"]
    queue = tasks(40)
    assert names(take_group(queue, slots=1, singles={"obs_0"})) == ["obs_0"]
    assert names(take_group(queue, slots=1, singles={"obs_3"})) == ["obs_1", "obs_2"]


def test_a_group_holds_at_most_its_share_of_bytes():
    size = GROUP_MAX_TOTAL_BYTES // 3
    assert len(take_group(tasks(100, size=size), slots=1)) == 3


# --- the fan-out's side -------------------------------------------------------------------


class Done:
    """A finished future, as the fan-out reads it: a result, or an exception."""

    def __init__(self, result=None, error: BaseException | None = None):
        self.status = "error" if error is not None else "finished"
        self._result, self._error = result, error

    def exception(self, timeout=None):
        return self._error

    def result(self, timeout=None):
        if self._error is not None:
            raise self._error
        return self._result


class Watch:
    """What the fan-out asks ClusterWatch about a group's outcome."""

    def __init__(self, committed: set[str] = frozenset(), may_run_elsewhere: bool = True):
        self._committed = committed
        self._may_run_elsewhere = may_run_elsewhere
        self.ran_on: list[str] = []
        self.cannot_run_calls: list[str] = []

    def committed(self, task: Task):
        if task.name not in self._committed:
            return None
        return replace(lost_result(task, ""), status=Status.DONE, reason="")

    def ran(self, result) -> None:
        self.ran_on.append(result.name)

    def cannot_run(self, fault, task: Task) -> bool:
        self.cannot_run_calls.append(task.name)
        return self._may_run_elsewhere


class KilledWorker(Exception):
    """dask's exception of that name (the fan-out knows it by its name)."""


def dispatch_collecting() -> tuple[Dispatch, list]:
    results: list = []
    dispatch = Dispatch(
        tasks=[], batch_id="b", scheduler_address="", worker_grace=1.0, on_result=results.append
    )
    return dispatch, results


def done_result(task: Task):
    return replace(lost_result(task, ""), status=Status.DONE, reason="", worker="w")


def test_each_result_of_a_group_is_reported():
    group = tuple(tasks(3))
    dispatch, results = dispatch_collecting()
    watch, queue = Watch(), []
    outcome = GroupResult(tuple(done_result(task) for task in group))
    _handle_group_done(Done(outcome), group, dispatch, watch, queue)
    assert [result.name for result in results] == ["obs_0", "obs_1", "obs_2"]
    assert watch.ran_on == ["obs_0", "obs_1", "obs_2"] and queue == []


def test_the_mss_a_worker_could_not_run_go_to_another_counted_as_one_start_failure():
    group = tuple(tasks(4))
    fault = WorkerCannotRun("tcp://w:1", "DP3 could not start")
    outcome = GroupResult((done_result(group[0]),), fault, group[1:])
    dispatch, results = dispatch_collecting()
    watch, queue = Watch(), tasks(2, prefix="later")
    _handle_group_done(Done(outcome), group, dispatch, watch, queue)
    assert [result.name for result in results] == ["obs_0"]
    assert watch.cannot_run_calls == ["obs_1"]
    assert names(queue) == ["obs_1", "obs_2", "obs_3", "later_0", "later_1"]
    # The MS that met too many such workers fails; the others still run.
    dispatch, results = dispatch_collecting()
    watch, queue = Watch(may_run_elsewhere=False), []
    _handle_group_done(Done(outcome), group, dispatch, watch, queue)
    assert [(result.name, result.status) for result in results] == [
        ("obs_0", Status.DONE),
        ("obs_1", Status.FAILED),
    ]
    assert results[1].reason == "DP3 could not start"
    assert names(queue) == ["obs_2", "obs_3"]


def test_a_group_whose_workers_died_gives_what_it_committed_and_its_other_mss_run_alone():
    group = tuple(tasks(4))
    dispatch, results = dispatch_collecting()
    watch, queue = Watch(committed={"obs_0", "obs_1"}), []
    _handle_group_done(Done(error=KilledWorker("obs_0")), group, dispatch, watch, queue)
    assert [(result.name, result.status) for result in results] == [
        ("obs_0", Status.DONE),
        ("obs_1", Status.DONE),
    ]
    assert names(queue) == ["obs_2", "obs_3"]
    assert dispatch.singles == {"obs_2", "obs_3"}
    # Alone from then on, although the queue is long.
    assert names(take_group(queue + tasks(40, prefix="b"), 1, dispatch.singles)) == ["obs_2"]


def test_a_group_that_erred_otherwise_fails_its_uncommitted_mss_with_the_error():
    group = tuple(tasks(2))
    dispatch, results = dispatch_collecting()
    watch, queue = Watch(committed={"obs_0"}), []
    error = RuntimeError("something broke")
    _handle_group_done(Done(error=error), group, dispatch, watch, queue)
    assert [(result.name, result.status) for result in results] == [
        ("obs_0", Status.DONE),
        ("obs_1", Status.FAILED),
    ]
    assert results[1].reason == "RuntimeError: something broke"
    assert queue == []
