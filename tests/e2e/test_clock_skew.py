"""Workers whose clocks are wrong: which batch made a completion record is decided by the
batch id written into it, never by comparing one host's clock with another's.

A real `dask worker` runs with its wall clock a day ahead of (or behind) the host's, through
a small LD_PRELOAD library (skewed_clock.c) built here; real snakemake, real DP3."""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

from conftest import damage_ms, make_inputs, preload_library

DAY = 86_400
HERE = Path(__file__).resolve().parent


def _start_skewed_cluster(dask_cluster, offset_seconds: int, workers: int = 1) -> str:
    library = preload_library(HERE / "skewed_clock.c", dask_cluster.directory)
    dask_cluster.start_scheduler()
    dask_cluster.environment.update(
        LD_PRELOAD=str(library), CLOCK_OFFSET_SECONDS=str(offset_seconds)
    )
    dask_cluster.start_workers(count=workers, threads=1)
    dask_cluster.environment.clear()
    dask_cluster.wait_for_workers(workers)
    return dask_cluster.address


def _summary(workflow) -> dict[str, dict[str, str]]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _finished(workflow, name: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(workflow.record(name)["finished"])


def test_a_worker_whose_clock_runs_behind_still_counts_as_this_batch(workflow, dask_cluster):
    """Its records are stamped a day before the batch was planned: still this batch's work
    (before, the MSs were reported `not processed` and the run ended 1)."""
    make_inputs(workflow.directory / "inputs", 2)
    workflow.config["scheduler"] = _start_skewed_cluster(dask_cluster, -DAY)
    before = datetime.datetime.now(datetime.UTC)
    result = workflow.run(timeout=240)
    assert result.returncode == 0, result.output
    for name in ("obs_0", "obs_1"):
        assert _finished(workflow, name) < before - datetime.timedelta(hours=20)  # really skewed
        assert workflow.record(name)["batch_id"]
        assert _summary(workflow)[name]["status"] == "done"
    assert "2 of 2 MS(s) complete" in result.output


def _first_run_on_a_fast_clock(workflow, dask_cluster) -> list:
    """Two MSs processed by a worker whose clock runs a day ahead: records stamped in the
    future."""
    inputs = make_inputs(workflow.directory / "inputs", 2)
    workflow.config["scheduler"] = _start_skewed_cluster(dask_cluster, DAY)
    first = workflow.run(timeout=240)
    assert first.returncode == 0, first.output
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=20)
    assert _finished(workflow, "obs_0") > ahead  # really stamped in the future
    return inputs


def test_records_stamped_by_a_fast_clock_do_not_skip_a_forced_ms(workflow, dask_cluster):
    """-F: every MS again; none is skipped as "completed by another run meanwhile" because
    its record's stamp lies after this batch's planning (before: both were skipped)."""
    _first_run_on_a_fast_clock(workflow, dask_cluster)
    forced = workflow.run("-F", timeout=240)
    assert forced.returncode == 0, forced.output
    assert "completed by another run meanwhile" not in forced.output
    assert "2 of 2 MS(s) to process" in forced.output
    assert "2 of 2 MS(s) done" in forced.output
    for name in ("obs_0", "obs_1"):
        assert workflow.record(name)["batch_id"] == batch_id_of(forced)  # made again, now


def test_a_record_stamped_by_a_fast_clock_does_not_hide_a_failure(workflow, dask_cluster):
    """This batch fails on obs_1 (its input damaged): the record a former batch stamped in
    the future must not make it `done` with exit 0 (before, it did)."""
    inputs = _first_run_on_a_fast_clock(workflow, dask_cluster)
    kept = (workflow.output("obs_1") / "dp3_completion.json").read_bytes()
    damage_ms(inputs[1])
    failed = workflow.run(timeout=240)
    assert failed.returncode != 0, failed.output
    assert "obs_1: input changed" in failed.output
    summary = _summary(workflow)
    assert summary["obs_1"]["status"] == "failed", summary["obs_1"]
    assert summary["obs_0"]["status"] == "up to date"
    assert "1 of 1 MS(s) failed" in failed.output
    # The good output of the earlier run is kept; it stays pending for its changed input.
    assert (workflow.output("obs_1") / "dp3_completion.json").read_bytes() == kept
    assert "obs_1: input changed" in workflow.run("-n", timeout=120).output


def batch_id_of(result) -> str:
    """The batch id a run printed (`batch <id>: N MS(s), ...`)."""
    for line in result.output.splitlines():
        if " batch " in f" {line}" and "MS(s), output in" in line:
            return line.split("batch ", 1)[1].split(":", 1)[0]
    raise AssertionError(f"no batch line in:\n{result.output}")
