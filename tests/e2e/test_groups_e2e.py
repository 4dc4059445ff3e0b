"""Small MSs several to a dask task (dask_stage.groups), with real DP3: each MS's output as
its own task would commit it, an MS that fails fails alone, what a group committed is never
run again, and a group whose worker is killed loses nothing."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
from casacore import tables
from conftest import dp3_processes, make_inputs, wait_until
from dp3batch.books.status import Status
from dp3batch.dask_stage.central_job import task_for
from dp3batch.dask_stage.execution import process_measurement_set
from dp3batch.dask_stage.groups import process_group
from dp3batch.dask_stage.task import Task
from dp3batch.planning.plan import batch_specification, make_plan

# Small (DP3 takes a fraction of a second) but of a real array's width.
SMALL_WIDE = {"n_antennas": 16, "n_times": 10, "n_channels": 8}
STEPS = [{"PreFlagger": {}}, {"AOFlagger": {}}, {"Averager": {"timestep": 2, "freqstep": 4}}]
COLUMNS = ("DATA", "FLAG", "WEIGHT_SPECTRUM", "UVW", "TIME", "ANTENNA1", "ANTENNA2")


def planned_tasks(directory: Path, output_dir: str, batch_id: str) -> list[Task]:
    """The tasks of every MS of `directory`/inputs, planned as the rule layer plans them."""
    config = {"inputs": ["inputs/*.ms"], "output_dir": output_dir, "steps": STEPS}
    batch = batch_specification(make_plan(config, directory), config, batch_id)
    return sorted((task_for(batch, ms) for ms in batch.measurement_sets), key=lambda t: t.name)


def columns(ms: Path) -> dict[str, np.ndarray]:
    with tables.table(str(ms), ack=False) as table:
        return {name: table.getcol(name) for name in COLUMNS}


def test_a_group_commits_each_ms_as_its_own_task_does_and_fails_only_the_bad_one(tmp_path):
    make_inputs(tmp_path / "inputs", 5, **SMALL_WIDE)
    for task in planned_tasks(tmp_path, "alone", "batch-alone"):
        assert process_measurement_set(task).status == Status.DONE
    grouped = planned_tasks(tmp_path, "grouped", "batch-grouped")
    # One MS's input went away after planning, in the middle of the group.
    grouped[2] = replace(grouped[2], input=str(tmp_path / "inputs" / "gone.ms"))

    outcome = process_group(tuple(grouped))

    assert outcome.cannot_run is None and outcome.not_run == ()
    statuses = {result.name: result.status for result in outcome.results}
    assert statuses == {f"obs_{index}": Status.DONE for index in (0, 1, 3, 4)} | {
        "obs_2": Status.FAILED
    }
    failed = next(result for result in outcome.results if result.name == "obs_2")
    assert "no longer exists" in failed.reason
    assert not (tmp_path / "grouped" / "obs_2.ms").exists()
    for index in (0, 1, 3, 4):
        alone = columns(tmp_path / "alone" / f"obs_{index}.ms")
        together = columns(tmp_path / "grouped" / f"obs_{index}.ms")
        for name in COLUMNS:
            assert np.array_equal(alone[name], together[name]), (index, name)
        record = (tmp_path / "grouped" / f"obs_{index}.ms" / "dp3_completion.json").read_text()
        assert '"batch_id": "batch-grouped"' in record
    assert not list((tmp_path / "grouped").glob(".*.ms.tmp-*"))


def test_a_group_run_again_in_its_batch_returns_what_it_committed_without_running_dp3(tmp_path):
    make_inputs(tmp_path / "inputs", 3, **SMALL_WIDE)
    grouped = tuple(planned_tasks(tmp_path, "results", "batch-once"))
    first = process_group(grouped)
    assert [result.status for result in first.results] == [Status.DONE] * 3
    records = {task.name: Path(task.output, "dp3_completion.json") for task in grouped}
    before = {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in records.items()}
    logs = {task.name: Path(task.log).stat().st_mtime_ns for task in grouped}

    # As dask runs a group again on another worker when its worker died after some commits.
    again = process_group(grouped)

    assert [(result.name, result.status) for result in again.results] == [
        (task.name, Status.DONE) for task in grouped
    ]
    assert [result.started for result in again.results] == [r.started for r in first.results]
    after = {name: (path.read_bytes(), path.stat().st_mtime_ns) for name, path in records.items()}
    assert after == before
    assert {task.name: Path(task.log).stat().st_mtime_ns for task in grouped} == logs
    # Another batch's record is no reason to skip an MS: the task runs DP3.
    other = replace(grouped[0], batch_id="batch-twice")
    assert process_measurement_set(other).status == Status.DONE
    assert Path(other.log).stat().st_mtime_ns != logs[other.name]


def batch_log(workflow) -> str:
    return "".join(
        path.read_text() for path in (workflow.output_dir / "logs" / "batches").glob("*.log")
    )


def test_a_batch_of_small_mss_runs_them_in_groups_and_completes_each(workflow):
    make_inputs(workflow.directory / "inputs", 40, **SMALL_WIDE)
    result = workflow.run(timeout=600)
    assert result.returncode == 0, result.output
    names = [f"obs_{index}" for index in range(40)]
    assert [name for name in names if workflow.record(name) is not None] == names
    assert "small MS(s) ran several to a dask task" in batch_log(workflow)
    # One line per MS, as for tasks of one MS.
    assert sum(f"] obs_{index}: done in" in result.output for index in range(40)) == 40


def test_a_killed_worker_s_group_loses_nothing_and_runs_nothing_twice(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 40, **SMALL_WIDE)
    workflow.config["scheduler"] = dask_cluster.start(workers=2, threads=1)
    snakemake = workflow.start()
    marker = str(workflow.directory)
    names = [f"obs_{index}" for index in range(40)]
    try:
        assert wait_until(
            lambda: sum(workflow.record(name) is not None for name in names) >= 6,
            timeout=180,
            interval=0.02,
        ), (workflow.directory / "snakemake.out").read_text()
        running = wait_until(lambda: dp3_processes(marker), timeout=30, interval=0.01)
        assert running, "no DP3 process running"
        worker = running[0].parent()
        assert "DP3" not in " ".join(worker.cmdline())
        os.kill(worker.pid, signal.SIGKILL)
        committed = {
            name: record["started"]
            for name in names
            if (record := workflow.record(name)) is not None
        }
        assert snakemake.wait(timeout=300) == 0, (workflow.directory / "snakemake.out").read_text()
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    assert [name for name in names if workflow.record(name) is None] == []
    # What was committed before the kill stands as it was: not run again.
    assert {name: workflow.record(name)["started"] for name in committed} == committed
    assert "small MS(s) ran several to a dask task" in batch_log(workflow)
    assert not list(workflow.output_dir.glob(".*.ms.tmp-*"))
    assert not dp3_processes(marker)
