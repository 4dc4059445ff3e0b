"""The workflow's own books under faults: a read-only output_dir, a full disk while a
completion record, the batch's result or its report is written, and `--touch`. Each is one
clear message (never a traceback, never DP3's words for a fault that is not DP3's), and no
good output is lost. Real snakemake, DP3 and dask; real read-only and full filesystems (small
tmpfs mounts, as root)."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, make_inputs

REAL_DP3 = str(BIN / "DP3.py")
COPY = []  # steps: DP3 copies the data (outputs weigh what the inputs do)


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or a small tmpfs needs root")


@contextlib.contextmanager
def tmpfs(mount_point: Path, size_bytes: int, read_only: bool = False):
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes // 1024 + 1}k" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill_all(directory: Path) -> Path:
    """Take every block of `directory`'s filesystem. tmpfs counts its blocks per CPU and sums
    them lazily: a write on one CPU can still succeed after another was refused, so the
    filesystem is filled from each CPU in turn."""
    filler = directory / "filler"
    cpus = os.sched_getaffinity(0)
    try:
        with open(filler, "ab", buffering=0) as handle:
            for cpu in sorted(cpus):
                os.sched_setaffinity(0, {cpu})  # this thread only
                for chunk in (65536, 4096, 512):
                    with contextlib.suppress(OSError):
                        while True:
                            handle.write(b"\0" * chunk)
    finally:
        os.sched_setaffinity(0, cpus)
    return filler


def _summary(output_dir: Path) -> dict[str, dict[str, str]]:
    with open(output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


def test_a_read_only_output_dir_is_refused_up_front(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    with tmpfs(workflow.output_dir, 1 << 20, read_only=True):
        started = time.monotonic()
        result = workflow.run(timeout=120)
        elapsed = time.monotonic() - started
        dry = workflow.run("-n", timeout=120)
    assert result.returncode != 0
    assert elapsed < 60, elapsed
    assert f"Error: output_dir: {workflow.output_dir} is on a read-only filesystem" in (
        result.output
    )
    assert "choose another output_dir" in result.output
    assert "Traceback" not in result.output and "WorkflowError" not in result.output
    assert "to process" not in result.output  # before planning: nothing ran
    # A dry run writes nothing there: it lists what is pending, and warns.
    assert dry.returncode == 0, dry.output
    assert "1 of 1 MS(s) to process" in dry.output
    assert "Warning: output_dir:" in dry.output and "read-only" in dry.output
    assert "Error" not in dry.output


def test_touch_marks_nothing_done_and_says_why(workflow):
    make_inputs(workflow.directory / "inputs", 2)
    touched = workflow.run("--touch", timeout=120)
    assert touched.returncode != 0
    assert "Error: --touch cannot mark MSs as processed: 2 MS(s) are pending" in touched.output
    assert "Run without --touch to process them" in touched.output
    assert "Traceback" not in touched.output
    assert not workflow.output_dir.exists() or not list(workflow.output_dir.glob("*.ms"))
    assert workflow.run().returncode == 0
    again = workflow.run("--touch", timeout=120)
    assert again.returncode == 0, again.output
    assert "are complete and up to date" in again.output


def _filling_wrapper(directory: Path, output_fs: Path, leave_bytes: int) -> Path:
    """A DP3 wrapper that runs the real DP3 and then, for a task's run (its msout is a
    temporary output), fills the output's filesystem: the disk is full from the moment DP3
    is done, when the workflow writes dp3.parset and the completion record."""
    wrapper = directory / "dp3-then-full-disk.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'"{REAL_DP3}" "$@"\n'
        "code=$?\n"
        'if [[ "$*" == *".tmp-"* ]]; then\n'
        f'  dd if=/dev/zero of="{output_fs}/filler" bs=64k 2>/dev/null\n'
        f'  dd if=/dev/zero of="{output_fs}/filler2" bs=512 2>/dev/null\n'
        f'  truncate -s -{leave_bytes} "{output_fs}/filler"\n'
        "fi\n"
        "exit $code\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def test_a_full_disk_while_the_record_is_written_fails_that_ms_clearly(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    disk = workflow.directory / "disk"
    with tmpfs(disk, 64 << 20):
        # One page back: dp3.parset fits, the completion record does not.
        wrapper = _filling_wrapper(workflow.directory, disk, 4096)
        workflow.config.update(
            output_dir=str(disk / "results"), dp3_executable=str(wrapper), steps=COPY
        )
        workflow.config["local_cluster"] = {"n_workers": 1, "threads_per_worker": 1}
        result = workflow.run(timeout=180)
        output = result.output
        assert result.returncode != 0
        failure = next(line for line in output.splitlines() if "obs_0: FAILED" in line)
        assert "while writing the completion record: the filesystem of" in failure
        assert "is full" in failure
        assert "DP3 said" not in failure  # DP3 had exited 0: its lines are not the cause
        assert "Traceback" not in output
        results = disk / "results"
        assert not [entry for entry in os.listdir(results) if ".tmp" in entry]
        assert not (results / "obs_0.ms").exists()
        # Room again: the rerun makes it.
        for name in ("filler", "filler2"):
            (disk / name).unlink()
        wrapper.write_text(f'#!/bin/bash\nexec "{REAL_DP3}" "$@"\n')
        rerun = workflow.run(timeout=180)
        assert rerun.returncode == 0, rerun.output
        assert (results / "obs_0.ms" / "dp3_completion.json").is_file()


def _second_run_waits_wrapper(directory: Path) -> Path:
    """A DP3 wrapper under which a task's second DP3 run waits for the file `go` (at most
    170 s), having made the file `waiting`: a test can hold the batch there."""
    wrapper = directory / "dp3-second-waits.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        'if [[ "$*" == *".tmp-"* ]] && ! mkdir "'
        + str(directory / "first-run")
        + '" 2>/dev/null; then\n'
        f'  touch "{directory}/waiting"\n'
        "  for _ in $(seq 17000); do\n"
        f'    [ -e "{directory}/go" ] && break\n'
        "    sleep 0.01\n"
        "  done\n"
        "fi\n"
        f'exec "{REAL_DP3}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def test_a_full_disk_while_the_batch_result_is_written_loses_no_ms(workflow, dask_cluster):
    """The disk fills after both MSs are committed and before the central job writes the
    batch's result: the central job (a client of an external cluster; an embedded one runs
    its worker inside it) is stopped while the last MS runs, and goes on once the disk is
    full."""
    names = ["obs_0", "obs_1"]
    make_inputs(workflow.directory / "inputs", 2)
    disk = workflow.directory / "disk"
    # Room for both outputs (0.75 MB each, DP3 needs more while it writes) and their logs.
    with tmpfs(disk, 8 << 20):
        results = disk / "results"
        wrapper = _second_run_waits_wrapper(workflow.directory)
        workflow.config.update(output_dir=str(results), steps=COPY, dp3_executable=str(wrapper))
        workflow.config["scheduler"] = dask_cluster.start(workers=1)
        records = [results / f"{name}.ms" / "dp3_completion.json" for name in names]
        filled = threading.Event()

        def fill_once_every_ms_is_committed() -> None:
            deadline = time.monotonic() + 170
            while time.monotonic() < deadline:
                if (workflow.directory / "waiting").exists():
                    break
                time.sleep(0.01)
            pid_files = list((results / "logs" / "batches").glob("*.pid"))
            central_job = int(pid_files[0].read_text())
            os.kill(central_job, signal.SIGSTOP)
            try:
                (workflow.directory / "go").touch()
                while time.monotonic() < deadline and not all(r.is_file() for r in records):
                    time.sleep(0.01)
                # The central job removes its pid file before it writes its result: held
                # by a second link, its page is not given back to the result.
                for entry in pid_files:
                    os.link(entry, disk / f"held-{entry.name}")
                _fill_all(disk)
                filled.set()
            finally:
                os.kill(central_job, signal.SIGCONT)

        filler = threading.Thread(target=fill_once_every_ms_is_committed, daemon=True)
        filler.start()
        result = workflow.run(timeout=180)
        filler.join(10)
        output = result.output
        assert filled.is_set(), output
        assert result.returncode != 0
        assert "Error: could not write the result of this batch" in output
        assert "No space left on device: the filesystem is full" in output
        assert "The MSs done are kept" in output
        assert "Traceback" not in output
        assert all(record.is_file() for record in records)  # nothing done was lost
        (disk / "filler").unlink()
        rerun = workflow.run(timeout=180)
        assert rerun.returncode == 0, rerun.output
        assert "All 2 MS(s)" in rerun.output and "are complete and up to date" in rerun.output
        assert {row["status"] for row in _summary(results).values()} == {"up to date"}


def test_a_full_disk_under_the_report_costs_the_report_not_the_run(workflow):
    """Before: Snakemake removed the batch's outputs as those of a failed job, and the run
    ended 1 although every MS was done."""
    make_inputs(workflow.directory / "inputs", 2)
    report = workflow.output_dir / "report"
    with tmpfs(report, 256 << 10):
        _fill_all(report)
        result = workflow.run(timeout=180)
    output = result.output
    assert result.returncode == 0, output
    assert "Warning: the report of this batch" in output and "is incomplete" in output
    assert "No space left on device" in output
    assert "Removing output files of failed job" not in output
    assert "Traceback" not in output
    assert {row["status"] for row in _summary(workflow.output_dir).values()} == {"done"}
    assert list((workflow.output_dir / "logs" / "batches").glob("*.json"))  # the marker
    assert workflow.record("obs_0") and workflow.record("obs_1")
