"""Resumable batches: reruns process exactly the pending MSs and never lose a finished one.

Real snakemake, real DP3, embedded dask cluster.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from casacore import tables
from conftest import damage_ms, make_inputs, make_ms


def _snapshot(workflow, names):
    """Record contents and modification times: proof that an output was not redone."""
    snapshot = {}
    for name in names:
        record = workflow.output(name) / "dp3_completion.json"
        snapshot[name] = (record.read_bytes(), record.stat().st_mtime_ns)
    return snapshot


def _processed(result) -> list[str]:
    """Names of the MSs the central job reported as done."""
    return sorted(
        line.split("] ", 1)[1].split(":", 1)[0]
        for line in result.output.splitlines()
        if "] " in line and ": done in " in line
    )


@pytest.fixture
def completed(workflow):
    """A workflow whose three MSs were all processed once."""
    make_inputs(workflow.directory / "inputs", 3)
    first = workflow.run()
    assert first.returncode == 0, first.output
    assert _processed(first) == ["obs_0", "obs_1", "obs_2"]
    return workflow


NAMES = ["obs_0", "obs_1", "obs_2"]


def test_noop_rerun_runs_no_dp3_and_touches_nothing(completed):
    before = _snapshot(completed, NAMES)
    tables_before = {
        name: (completed.output(name) / "table.f1").stat().st_mtime_ns for name in NAMES
    }
    rerun = completed.run()
    assert rerun.returncode == 0, rerun.output
    assert "All 3 MS(s)" in rerun.output and "complete and up to date" in rerun.output
    assert "Nothing to be done" in rerun.output
    assert _processed(rerun) == []
    assert _snapshot(completed, NAMES) == before
    assert {
        name: (completed.output(name) / "table.f1").stat().st_mtime_ns for name in NAMES
    } == tables_before


def test_deleted_output_is_the_only_one_redone(completed):
    before = _snapshot(completed, ["obs_0", "obs_2"])
    shutil.rmtree(completed.output("obs_1"))
    rerun = completed.run()
    assert rerun.returncode == 0, rerun.output
    assert "obs_1: missing" in rerun.output
    assert _processed(rerun) == ["obs_1"]
    assert _snapshot(completed, ["obs_0", "obs_2"]) == before
    assert completed.record("obs_1") is not None


def test_changed_step_parameter_redoes_all(completed):
    completed.config["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 4}}]
    dry = completed.run("-n")
    assert dry.returncode == 0, dry.output
    assert all(f"{name}: steps changed" in dry.output for name in NAMES)
    rerun = completed.run()
    assert rerun.returncode == 0, rerun.output
    assert _processed(rerun) == NAMES
    for name in NAMES:
        with tables.table(str(completed.output(name)), ack=False) as table:
            assert table.getcell("INTERVAL", 0) == 4 * 2.0
        assert "averager.timestep=4" in (completed.output(name) / "dp3.parset").read_text()


def test_modified_input_redoes_only_it(completed):
    before = _snapshot(completed, ["obs_0", "obs_1"])
    with tables.table(
        str(completed.directory / "inputs" / "obs_2.ms"), readonly=False, ack=False
    ) as table:
        data = table.getcol("DATA")
        table.putcol("DATA", data * np.complex64(2))
    rerun = completed.run()
    assert rerun.returncode == 0, rerun.output
    assert "obs_2: input changed" in rerun.output
    assert _processed(rerun) == ["obs_2"]
    assert _snapshot(completed, ["obs_0", "obs_1"]) == before


def test_checks_kept_between_reruns_still_see_a_damaged_output_and_a_changed_input(completed):
    """A rerun keeps what it checks of each record (`.record-checks.json`), and the next one
    trusts that while the record's file is unchanged: the files of every output and input
    are still checked."""
    for name in NAMES:  # records of an earlier run: only settled records are kept
        record = completed.output(name) / "dp3_completion.json"
        status = record.stat()
        os.utime(record, ns=(status.st_atime_ns, status.st_mtime_ns - 60_000_000_000))
    for _ in range(2):
        noop = completed.run()
        assert noop.returncode == 0 and _processed(noop) == [], noop.output
    checks = json.loads((completed.output_dir / ".record-checks.json").read_text())
    assert sorted(checks["entries"]) == [
        str(completed.output(name) / "dp3_completion.json") for name in NAMES
    ]
    before = _snapshot(completed, ["obs_1"])
    os.truncate(completed.output("obs_0") / "table.f1", 100)
    with tables.table(
        str(completed.directory / "inputs" / "obs_2.ms"), readonly=False, ack=False
    ) as table:
        table.putcol("DATA", table.getcol("DATA") * np.complex64(2))
    rerun = completed.run()
    assert rerun.returncode == 0, rerun.output
    assert "obs_0: output changed" in rerun.output
    assert "obs_2: input changed" in rerun.output
    assert _processed(rerun) == ["obs_0", "obs_2"]
    assert _snapshot(completed, ["obs_1"]) == before


def test_dry_run_lists_pending_with_reasons_and_changes_nothing(completed):
    shutil.rmtree(completed.output("obs_0"))
    (completed.output("obs_1") / "dp3_completion.json").write_text("{damaged")
    dry = completed.run("-n")
    assert dry.returncode == 0, dry.output
    assert "2 of 3 MS(s) to process" in dry.output
    assert "obs_0: missing" in dry.output
    assert "obs_1: incomplete" in dry.output
    assert "obs_2" not in dry.output.split("to process")[1].split("\n\n")[0]
    assert not completed.output("obs_0").exists()
    assert (completed.output("obs_1") / "dp3_completion.json").read_text() == "{damaged"


def test_output_without_record_is_never_taken_for_done_nor_replaced(workflow):
    """An MS at an output's path without a completion record (another tool's, in an
    output_dir used before; a copy by hand) was not made by the workflow, which commits
    every output with its record: it is never taken for done, and never replaced (before, it
    was deleted as `incomplete`). Once it is moved away, its MS is processed."""
    make_inputs(workflow.directory / "inputs", 2)
    workflow.output_dir.mkdir()
    theirs = workflow.output("obs_0")
    shutil.copytree(workflow.directory / "inputs" / "obs_0.ms", theirs)
    (theirs / "their notes.txt").write_text("made by another tool\n")
    before = {path: path.read_bytes() for path in theirs.rglob("*") if path.is_file()}
    for dry_run in (["-n"], []):
        result = workflow.run(*dry_run)
        assert result.returncode != 0, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert errors == [
            f"Error: output_dir: 1 output path(s) in {workflow.output_dir} already hold "
            "something without a completion record, which this workflow did not make (or "
            f"whose record was deleted), and processing would replace it: {theirs}. Nothing is "
            "deleted that the workflow did not make: move them away (or delete them), or "
            "choose another output_dir"
        ], result.output
        assert "Traceback" not in result.output
        assert {path: path.read_bytes() for path in theirs.rglob("*") if path.is_file()} == before
        assert not workflow.output("obs_1").exists()  # nothing ran

    shutil.move(theirs, workflow.directory / "theirs.ms")
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "obs_0: missing" in result.output
    assert workflow.record("obs_0") is not None and workflow.record("obs_1") is not None


def test_an_output_whose_record_is_damaged_is_redone_as_incomplete(workflow):
    """A record that cannot be read is the workflow's own, damaged: the output is replaced."""
    make_inputs(workflow.directory / "inputs", 1)
    assert workflow.run().returncode == 0
    (workflow.output("obs_0") / "dp3_completion.json").write_text("{not json")
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "obs_0: incomplete" in result.output
    assert workflow.record("obs_0") is not None


def test_failing_ms_keeps_the_good_ones_and_rerun_does_only_it(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 3)
    damage_ms(inputs[1])
    result = workflow.run()
    assert result.returncode != 0
    assert _processed(result) == ["obs_0", "obs_2"]
    assert "1 of 3 MS(s) failed" in result.output
    failed_log = workflow.output_dir / "logs" / "obs_1.log"
    assert f"log: {failed_log}" in result.output
    assert not workflow.output("obs_1").exists()  # no partial MS at the final path
    assert not list(workflow.output_dir.glob(".obs_1.ms.*"))  # nor a temporary one
    good = _snapshot(workflow, ["obs_0", "obs_2"])

    shutil.rmtree(inputs[1])
    make_ms(inputs[1], seed=1)
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    assert "1 of 3 MS(s) to process" in rerun.output
    assert _processed(rerun) == ["obs_1"]
    assert _snapshot(workflow, ["obs_0", "obs_2"]) == good


def test_leftovers_of_killed_runs_are_removed(completed):
    temporary = completed.output_dir / ".obs_0.ms.tmp-0123456789ab"
    replaced = completed.output_dir / ".obs_1.ms.old-0123456789ab"
    for leftover in (temporary, replaced):
        leftover.mkdir()
        (leftover / "table.dat").write_text("partial")
    shutil.rmtree(completed.output("obs_2"))
    result = completed.run()
    assert result.returncode == 0, result.output
    assert not temporary.exists() and not replaced.exists()
    assert "left behind by an interrupted run" in result.output
