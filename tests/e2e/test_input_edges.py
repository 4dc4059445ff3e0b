"""Inputs at the edges a filesystem allows: shorter than the averaging, channels the averaging
does not divide, rows out of time order, every row flagged by FLAG_ROW, an input deleted
before its task starts, one replaced while its DP3 runs, inputs on read-only storage
without lock files, and a TaQL selection saved as a reference table. Real snakemake, DP3
and dask."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from casacore import tables
from conftest import dp3_processes, make_inputs, make_ms, wait_until
from dp3batch.testing.harness import run_snakemake

SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}
ONE_WORKER = {"n_workers": 1, "threads_per_worker": 1}


def _summary(workflow) -> dict[str, dict[str, str]]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


def test_an_ms_shorter_than_the_averaging_is_capped_as_dp3_caps_it(workflow):
    """2 time slots with timestep 4, 16 channels with freqstep 32: DP3 averages what there is
    (before, the output check refused it on every run: `DP3 planned 2.0 interval ...`)."""
    make_ms(workflow.directory / "inputs" / "short.ms", n_times=2, n_channels=16)
    workflow.config["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 4, "freqstep": 32}}]
    result = workflow.run()
    assert result.returncode == 0, result.output
    record = workflow.record("short")
    assert record["shape_after"]["times"] == 1
    assert record["shape_after"]["channels"] == 1
    assert record["shape_after"]["interval"] == 2 * record["shape_before"]["interval"]
    assert record["shape_expected"]["times"] == 1
    again = workflow.run()
    assert again.returncode == 0 and "are complete and up to date" in again.output


def test_a_freqstep_that_does_not_divide_the_channels_is_refused_up_front(workflow):
    make_ms(workflow.directory / "inputs" / "obs_16.ms", n_channels=16)
    make_ms(workflow.directory / "inputs" / "obs_18.ms", n_channels=18)
    workflow.config["steps"] = [{"Averager": {"timestep": 1, "freqstep": 3}}]
    started = time.monotonic()
    result = workflow.run(timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "steps: DP3 cannot average the channels of 1 pending MS(s):" in result.output
    assert "obs_16.ms: averager freqstep 3 does not divide its 16 channels" in result.output
    assert "obs_18.ms" not in result.output.split("Error:")[1]  # it divides: not named
    assert "Traceback" not in result.output
    # Refused before anything ran: no DP3, no output, no log.
    assert not (workflow.output_dir / "logs").exists() or not any(
        (workflow.output_dir / "logs").glob("obs_*.log")
    )
    assert workflow.record("obs_18") is None


def _shuffle_time_slots(ms, first: int, second: int) -> None:
    """Swap the rows of two time slots: every row is there, but not in time order."""
    with tables.table(str(ms), ack=False) as table:
        times = table.getcol("TIME")
        slots = np.unique(times)
        order = np.arange(table.nrows())
        one = order[times == slots[first]].copy()
        other = order[times == slots[second]].copy()
        order[times == slots[first]], order[times == slots[second]] = other, one
        shuffled = table.selectrows(order.tolist())
        shuffled.copy(str(ms) + ".shuffled", deep=True)
        shuffled.close()
    shutil.rmtree(ms)
    os.rename(str(ms) + ".shuffled", ms)


def test_rows_out_of_time_order_fail_alone_naming_the_cause(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 2)
    _shuffle_time_slots(inputs[1], 3, 10)
    result = workflow.run(timeout=180)
    assert result.returncode != 0
    assert workflow.record("obs_0") is not None
    assert workflow.record("obs_1") is None
    assert f"the rows of {inputs[1]} are not in time order (row " in result.output
    assert "orderby TIME" in result.output  # what to do
    assert "output check failed" not in result.output
    assert _summary(workflow)["obs_1"]["status"] == "failed"


def test_every_row_flagged_by_flag_row_counts_as_flagged(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 1)
    with tables.table(str(inputs[0]), readonly=False, ack=False) as table:
        table.putcol("FLAG_ROW", np.ones(table.nrows(), dtype=bool))
        assert not table.getcol("FLAG").any()
    result = workflow.run()
    assert result.returncode == 0, result.output
    row = _summary(workflow)["obs_0"]
    assert float(row["flagged_input_pct"]) == 100.0  # was 0.0: FLAG alone is all false
    assert float(row["flagged_output_pct"]) == 100.0  # DP3 reads FLAG_ROW so


def _msin_of(process) -> str:
    for argument in process.cmdline():
        if argument.startswith("msin="):
            return argument.split("=", 1)[1]
    return ""


def test_a_reference_table_is_refused_before_anything_runs_and_its_plain_copy_runs(workflow):
    """A TaQL selection saved with GIVING is a reference table: DP3 reads it, but its data
    are in the parent MS, which its fingerprint and lock check do not cover. Before: its task
    failed with `FileNotFoundError: … /DATA_DESCRIPTION` on every run."""
    parent, _ = make_inputs(workflow.directory / "inputs", 2)
    selection = workflow.directory / "inputs" / "selection.ms"
    tables.taql(f"SELECT FROM '{parent}' WHERE ANTENNA1 != 0 GIVING '{selection}'").close()
    before = {path: path.stat().st_mtime_ns for path in parent.rglob("*")}
    result = workflow.run(timeout=120)
    assert result.returncode != 0
    assert f"Error: inputs: {selection} is a reference table" in result.output, result.output
    assert "give that table as the input" in result.output
    assert "Traceback" not in result.output
    assert not workflow.output_dir.exists()  # nothing ran, the good MSs included
    assert {path: path.stat().st_mtime_ns for path in parent.rglob("*")} == before

    # The message's fix: a plain copy, processed as any MS.
    with tables.table(str(selection), ack=False) as table:
        table.copy(str(workflow.directory / "inputs" / "plain.ms"), deep=True).close()
    shutil.rmtree(selection)
    rerun = workflow.run(timeout=120)
    assert rerun.returncode == 0, rerun.output
    assert "3 of 3 MS(s) done" in rerun.output
    with tables.table(str(workflow.output("plain")), ack=False) as table:
        assert not (table.getcol("ANTENNA1") == 0).any()


def test_an_input_deleted_before_its_task_starts_fails_alone_clearly(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 2, **SLOW_MS)
    workflow.config["local_cluster"] = ONE_WORKER
    snakemake = workflow.start()
    try:
        running = wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.05)
        assert running
        first = _msin_of(running[0])
        waiting = next(path for path in inputs if str(path) not in first)
        shutil.rmtree(waiting)  # the other MS, whose task has not started yet
        snakemake.wait(timeout=180)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
    output = (workflow.directory / "snakemake.out").read_text()
    name = waiting.name.removesuffix(".ms")
    assert snakemake.returncode != 0
    assert f"{name}: FAILED after" in output
    assert f"the input {waiting} no longer exists (it was deleted after the run was planned)" in (
        output
    )
    assert "on None" not in output and "FileNotFoundError" not in output
    assert "Traceback" not in output
    assert _summary(workflow)[name]["status"] == "failed"
    done = {path.name.removesuffix(".ms") for path in inputs} - {name}
    assert all(workflow.record(other) is not None for other in done)


def test_an_input_replaced_while_its_dp3_runs_is_not_counted_done(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 1, **SLOW_MS)
    # What a transfer tool puts in its place: another MS, renamed over it.
    replacement = make_ms(workflow.directory / "staging" / "obs_0.ms", seed=7, **SLOW_MS)
    workflow.config["local_cluster"] = ONE_WORKER
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.02)
        os.rename(inputs[0], workflow.directory / "staging" / "old.ms")
        os.rename(replacement, inputs[0])
        still_running = bool(dp3_processes(str(workflow.directory)))
        snakemake.wait(timeout=180)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
    assert still_running, "DP3 ended before the input was replaced: the test proves nothing"
    output = (workflow.directory / "snakemake.out").read_text()
    assert snakemake.returncode != 0, output
    assert "obs_0: FAILED" in output
    assert "input changed while it was processed" in output
    assert workflow.record("obs_0") is None  # nothing committed from data that is gone
    assert "Traceback" not in output
    rerun = subprocess.run(
        workflow.command(), cwd=workflow.directory, capture_output=True, text=True, timeout=240
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert workflow.record("obs_0") is not None  # made from the MS that is there now


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only bind mount (an archive's storage) of a directory; unmounted at the end."""
    source, mount = tmp_path / "archive-disk", tmp_path / "archive"
    source.mkdir()
    mount.mkdir()
    yield source, mount
    subprocess.run(["umount", str(mount)], capture_output=True, check=False, timeout=60)


def _mount_read_only(source, mount) -> None:
    steps = (["mount", "--bind", source, mount], ["mount", "-o", "remount,bind,ro", mount])
    for step in steps:
        completed = subprocess.run(step, capture_output=True, text=True, check=False, timeout=60)
        if completed.returncode != 0:
            problem = f"cannot make a read-only mount here: {completed.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI needs it (it runs as root): {problem}")
            pytest.skip(problem)


def test_inputs_on_read_only_storage_without_lock_files_are_processed(workflow, read_only_mount):
    """MSs on a read-only filesystem, copied there without their `table.lock` files (casacore
    cannot make them): processed into what the same MSs give on a writable disk, bit for bit,
    and up to date on a rerun. The MSs are DP3's own outputs, as an archive holds them."""
    source, mount = read_only_mount
    make_inputs(workflow.directory / "inputs", 2)
    workflow.config["steps"] = [{"PreFlagger": None}]
    made = workflow.run()
    assert made.returncode == 0, made.output
    for name in ("obs_0", "obs_1"):
        shutil.copytree(
            workflow.output(name),
            source / f"{name}.ms",
            ignore=shutil.ignore_patterns("table.lock", "dp3_completion.json", "dp3.parset"),
        )
        shutil.copytree(source / f"{name}.ms", workflow.directory / "writable" / f"{name}.ms")
    _mount_read_only(source, mount)
    assert not list(mount.rglob("table.lock"))

    workflow.config["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 2}}]
    results = {}
    for where in ("archive", "writable"):
        workflow.config["inputs"] = [f"{where}/*.ms"]
        workflow.config["output_dir"] = f"from-{where}"
        run = workflow.run()
        assert run.returncode == 0, run.output
        assert "2 of 2 MS(s) complete" in run.output
        results[where] = {name: _columns(workflow.output(name)) for name in ("obs_0", "obs_1")}
    for name, columns in results["archive"].items():
        for column, values in columns.items():
            assert np.array_equal(values, results["writable"][name][column]), (name, column)
    assert not list(mount.rglob("table.lock"))

    workflow.config["inputs"] = ["archive/*.ms"]
    workflow.config["output_dir"] = "from-archive"
    again = workflow.run()
    assert again.returncode == 0 and "are complete and up to date" in again.output, again.output


def _columns(path) -> dict[str, np.ndarray]:
    with tables.table(str(path), ack=False) as table:
        return {column: table.getcol(column) for column in ("DATA", "FLAG", "TIME", "UVW")}


def test_a_run_from_a_read_only_directory_is_refused_before_anything_runs(
    workflow, read_only_mount
):
    """`cd` into an archive's read-only data directory and run there: Snakemake keeps its
    state in `.snakemake/` of its working directory and used to end with a traceback
    (`Read-only file system: '…/.snakemake'`) after the workflow had planned and made its
    run's files. One line says where to run instead; nothing is made."""
    source, mount = read_only_mount
    make_ms(source / "obs_0.ms")
    _mount_read_only(source, mount)
    config = workflow.directory / "archive.yaml"
    output_dir = workflow.directory / "results"
    config.write_text(f"inputs: ['*.ms']\noutput_dir: '{output_dir}'\n")
    result = run_snakemake(config, mount, timeout=120)
    output = result.output
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [
        f"Error: Snakemake's working directory {mount} (its state is kept in .snakemake/ "
        "there) is on a read-only filesystem: run from a writable directory (cd to one "
        "first), with inputs and output_dir as absolute paths or relative to it"
    ], output
    assert "Traceback" not in output
    assert not output_dir.exists()

    config.write_text(f"inputs: ['{mount}/*.ms']\noutput_dir: '{output_dir}'\n")
    result = run_snakemake(config, workflow.directory, timeout=120)
    assert result.returncode == 0, result.output
    assert (output_dir / "obs_0.ms" / "dp3_completion.json").is_file()
