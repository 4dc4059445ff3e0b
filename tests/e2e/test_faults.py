"""Faults inflicted on real processes: every one ends in bounded time with a clear message,
no DP3 left running, nothing lost that finished, and a summary that tells the truth.

Real `snakemake`, real DP3, real `dask scheduler` / `dask worker` processes."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import dp3_processes, make_inputs, preload_library, wait_until

# DP3 takes a few seconds on each of these: long enough to inflict a fault mid-task.
SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}


def _summary(workflow) -> dict[str, dict[str, str]]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _complete(workflow, names) -> list[str]:
    return [name for name in names if workflow.record(name) is not None]


def _finish(process: subprocess.Popen, timeout: float) -> float:
    """Wait for `process`; return how long it took. Kill its group if it overruns."""
    started = time.monotonic()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the run did not end within {timeout} s")
    return time.monotonic() - started


def _output(workflow) -> str:
    return (workflow.directory / "snakemake.out").read_text()


def test_losing_every_worker_ends_the_run_keeping_what_finished(workflow, dask_cluster):
    names = [f"obs_{index}" for index in range(4)]
    make_inputs(workflow.directory / "inputs", 4, **SLOW_MS)
    dask_cluster.start(workers=2, threads=1)
    workflow.config.update(scheduler=dask_cluster.address, worker_wait_seconds=3)
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: dp3_processes(str(workflow.directory)), 120, 0.05)
        for worker in dask_cluster.processes[1:]:  # the whole `dask worker` process tree
            os.killpg(worker.pid, signal.SIGKILL)
        elapsed = _finish(snakemake, 90)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode != 0
    assert elapsed < 60, elapsed
    assert "no dask worker holding the process resource was left for 3 s" in output
    assert not dp3_processes(str(workflow.directory))
    summary = _summary(workflow)
    assert sorted(summary) == names
    for name in names:
        expected = "done" if workflow.record(name) else "not processed"
        assert summary[name]["status"] == expected, (name, summary[name])
    assert any(row["status"] == "not processed" for row in summary.values())


def _silent_listener() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never says a word (a stopped scheduler)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_a_scheduler_that_never_answers_is_a_clear_error_within_seconds(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    listener, port = _silent_listener()
    try:
        workflow.config["scheduler"] = f"127.0.0.1:{port}"
        started = time.monotonic()
        result = workflow.run(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert result.returncode != 0
    assert elapsed < 40, elapsed
    assert f"cannot reach the dask scheduler at 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


def test_a_scheduler_stopped_mid_batch_ends_the_run_and_the_report_stays_true(
    workflow, dask_cluster
):
    # Six MSs on two workers: the two tasks in flight when the first output appears (DP3
    # takes as long on each, so both pairs finish together) can still finish, the last two
    # can never start; with four, all of them sometimes finished before the scheduler stopped.
    names = [f"obs_{index}" for index in range(6)]
    make_inputs(workflow.directory / "inputs", 6, **SLOW_MS)
    dask_cluster.start(workers=2, threads=1)
    workflow.config["scheduler"] = dask_cluster.address
    scheduler = psutil.Process(dask_cluster.processes[0].pid)
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: _complete(workflow, names), 120, 0.05)
        scheduler.suspend()
        elapsed = _finish(snakemake, 120)
    finally:
        scheduler.resume()
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode != 0
    assert elapsed < 90, elapsed
    assert f"the dask scheduler at tcp://{dask_cluster.address} stopped answering" in output
    summary = _summary(workflow)
    complete = _complete(workflow, names)
    assert complete, "nothing finished before the scheduler stopped"
    for name in names:
        assert summary[name]["status"] == ("done" if name in complete else "not processed")


def _hold_write_lock(ms) -> subprocess.Popen:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom casacore import tables\n"
            "t = tables.table(sys.argv[1], readonly=False, lockoptions='permanent', ack=False)\n"
            "print('locked', flush=True)\ntime.sleep(600)\n",
            str(ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_input_fails_alone_and_a_dry_run_never_blocks(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 3)
    holder = _hold_write_lock(inputs[1])
    try:
        dry = workflow.run("-n", timeout=60)
        assert dry.returncode == 0, dry.output
        assert f"obs_1: missing; LOCKED by another process (pid {holder.pid})" in dry.output
        result = workflow.run(timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    assert f"locked by another process (pid {holder.pid})" in result.output
    assert _complete(workflow, ["obs_0", "obs_1", "obs_2"]) == ["obs_0", "obs_2"]
    rerun = workflow.run(timeout=120)
    assert rerun.returncode == 0, rerun.output
    assert "1 of 3 MS(s) to process" in rerun.output


def test_a_damaged_output_is_reprocessed(workflow):
    make_inputs(workflow.directory / "inputs", 2)
    assert workflow.run().returncode == 0
    untouched = (workflow.output("obs_1") / "dp3_completion.json").read_bytes()
    damaged = workflow.output("obs_0")
    biggest = max(damaged.glob("table.f*"), key=lambda path: path.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
    dry = workflow.run("-n")
    assert "1 of 2 MS(s) to process" in dry.output and "obs_0: output changed" in dry.output
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    from casacore import tables

    with tables.table(str(damaged), ack=False) as table:
        assert table.nrows() == workflow.record("obs_0")["shape_after"]["rows"]
    assert (workflow.output("obs_1") / "dp3_completion.json").read_bytes() == untouched


def _slow_start_wrapper(directory, seconds: float):
    """A DP3 wrapper that waits `seconds` before a task's run (its msout is a temporary
    output), not before `DP3 --version`: a batch that surely lasts while another run plans,
    however loaded the machine."""
    from dp3batch.dp3.install import find_dp3_executable

    wrapper = directory / "slow-start-dp3.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [[ "$*" == *".tmp-"* ]]; then sleep {seconds}; fi\n'
        f'exec "{find_dp3_executable(None)}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_two_runs_on_one_output_dir_process_each_ms_once(workflow, tmp_path):
    names = [f"obs_{index}" for index in range(3)]
    make_inputs(workflow.directory / "inputs", 3)
    workflow.config["inputs"] = [str(workflow.directory / "inputs" / "*.ms")]
    workflow.config["output_dir"] = str(workflow.directory / "results")
    # The second run plans while the first's DP3 runs wait: it finds them all pending.
    workflow.config["dp3_executable"] = str(_slow_start_wrapper(tmp_path, 8))
    workflow.config["steps"] = []  # DP3 copies: no AOFlagger strategy to name
    # One worker per MS: the three waits overlap (they use no CPU), so the first run lasts
    # one wait, not two.
    workflow.config["local_cluster"] = {"n_workers": 3, "threads_per_worker": 1}
    first = workflow.start()
    time.sleep(0.3)
    other_directory = tmp_path / "elsewhere"
    other_directory.mkdir()
    second = subprocess.run(
        [*workflow.command(), "--directory", str(other_directory)],
        cwd=other_directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _finish(first, 300)
    assert first.returncode == 0, _output(workflow)
    assert second.returncode == 0, second.stdout + second.stderr
    records = {name: workflow.record(name) for name in names}
    assert all(records.values())
    # Each MS ran once: the run that took the lock second (either may) found them done,
    # reported them complete and up to date, and succeeded.
    outputs = [_output(workflow), second.stdout + second.stderr]
    waited = [output for output in outputs if "completed by another run meanwhile" in output]
    assert len(waited) == 1, outputs
    assert "0 of 3 MS(s) done (3 more by another run)" in waited[0], waited[0]
    assert "3 of 3 MS(s) complete" in waited[0], waited[0]
    assert {row["status"] for row in _summary(workflow).values()} <= {"done", "up to date"}
    assert len({record["batch_id"] for record in records.values()}) == 1
    for name in names:
        assert (workflow.directory / "results" / "logs" / f"{name}.log").read_text().count(
            "# started"
        ) == 1


def test_unrelated_hidden_entries_in_output_dir_are_never_touched(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    results = workflow.output_dir
    unrelated = [results / ".config.old-2023" / "app", results / ".git.old-backup"]
    unrelated.append(results / ".cache.tmp-abc")
    for path in unrelated:
        path.mkdir(parents=True)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert all(path.is_dir() for path in unrelated)
    assert "left behind" not in result.output


def _run_processes(workflow, session: int) -> list[psutil.Process]:
    """Live processes of a run: in Snakemake's session, or working in its directory."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(process.pid) == session or Path(process.cwd()).is_relative_to(
                workflow.directory
            ):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def test_ctrl_c_returns_only_when_every_dp3_has_stopped(workflow):
    names = [f"obs_{index}" for index in range(6)]
    make_inputs(workflow.directory / "inputs", 6, **SLOW_MS)
    workflow.config["local_cluster"] = {"n_workers": 2, "threads_per_worker": 1}
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: _complete(workflow, names), 120, 0.05)
        assert wait_until(lambda: dp3_processes(str(workflow.directory)), 30, 0.02)
        os.killpg(snakemake.pid, signal.SIGINT)
        _finish(snakemake, 60)
        # Control is back: nothing may run or be committed any more.
        assert not dp3_processes(str(workflow.directory))
        committed = _complete(workflow, names)
        # A late commit could only come from a process of the run: give them 3 s to end.
        wait_until(lambda: not _run_processes(workflow, snakemake.pid), 3)
        assert _complete(workflow, names) == committed
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert "Traceback" not in output, output
    assert "Interrupted (SIGINT)" in output
    leftovers = [entry.name for entry in workflow.output_dir.iterdir() if ".tmp-" in entry.name]
    assert not leftovers
    assert "no partial output was kept" in output
    summary = _summary(workflow)
    assert {name for name, row in summary.items() if row["status"] == "done"} == set(committed)


def test_a_no_op_run_rewrites_the_summary(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    assert workflow.run().returncode == 0
    summary = workflow.output_dir / "summary.tsv"
    summary.unlink()
    rerun = workflow.run()
    assert rerun.returncode == 0
    assert _summary(workflow)["obs_0"]["status"] == "up to date"


def _mount_tmpfs(mount_point, size_bytes: int) -> None:
    mount_point.mkdir()
    size = f"size={size_bytes // 1024 + 1}k"
    subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount_point)], check=True)


def test_a_full_disk_is_named_and_loses_nothing(workflow):
    from dp3batch.dp3.install import dp3_environment, find_dp3_executable

    inputs = make_inputs(workflow.directory / "inputs", 5)
    copy = workflow.directory / "copy.ms"  # what one output weighs: DP3's copy of an input
    subprocess.run(
        [find_dp3_executable(), f"msin={inputs[0]}", f"msout={copy}", "steps=[]"],
        env=dp3_environment(),
        capture_output=True,
        check=True,
    )
    size = sum(path.stat().st_size for path in copy.rglob("*") if path.is_file())
    # Room for two outputs (a copy each: no steps) and the logs, not for five.
    small_tmpfs = workflow.directory / "small"
    _mount_tmpfs(small_tmpfs, int(2.6 * size))
    workflow.config.update(output_dir=str(small_tmpfs / "results"), steps=[])
    workflow.config["local_cluster"] = {"n_workers": 1, "threads_per_worker": 1}
    try:
        result = workflow.run(timeout=240)
        _check_full_disk_run(workflow, result, small_tmpfs)
    finally:
        subprocess.run(["umount", "-l", str(small_tmpfs)], check=False)


def _check_full_disk_run(workflow, result, small_tmpfs) -> None:
    names = [f"obs_{index}" for index in range(5)]
    complete = _complete(workflow, names)
    assert result.returncode != 0
    assert 0 < len(complete) < 5, result.output
    assert f"the filesystem of {small_tmpfs / 'results'} is full" in result.output
    assert "Traceback" not in result.output
    # No partial MS anywhere, and nothing left half-written.
    leftovers = [path.name for path in (small_tmpfs / "results").iterdir() if ".tmp" in path.name]
    assert not leftovers
    for name in complete:
        from casacore import tables

        with tables.table(str(small_tmpfs / "results" / f"{name}.ms"), ack=False) as table:
            assert table.nrows() == workflow.record(name)["shape_after"]["rows"]


def _files_under(directory: Path) -> int:
    return 1 + sum(1 for _ in directory.rglob("*"))


def test_a_filesystem_out_of_inodes_is_named_and_costs_neither_the_report_nor_the_done(
    workflow,
):
    """A filesystem that can hold no more files (HPC scratch has inode quotas; tmpfs and ext4
    a fixed count) fails DP3 with `No space left on device` while `df -h` shows space. The
    failed MSs say why; the batch's report, whose empty files it could no longer make at its
    end, still exists (before: Snakemake's MissingOutputException, and the batch's marker
    deleted as the output of a failed job); a rerun with room finishes the rest."""
    names = [f"obs_{index}" for index in range(5)]
    make_inputs(workflow.directory / "inputs", 5)
    # What one run of one MS makes: its output and the run's books (logs, report, summary).
    workflow.config.update(inputs=["inputs/obs_0.ms"], output_dir="probe")
    assert workflow.run(timeout=120).returncode == 0
    one_run = _files_under(workflow.directory / "probe")
    one_output = _files_under(workflow.output("obs_0"))
    shutil.rmtree(workflow.directory / "probe")
    # Room for that and half an output more: at least one MS is done, not five.
    small = workflow.directory / "few_inodes"
    small.mkdir()
    inodes = one_run + one_output // 2
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=256m,nr_inodes={inodes}", "tmpfs", str(small)],
        check=True,
        timeout=30,
    )
    try:
        workflow.config.update(inputs=["inputs/*.ms"], output_dir=str(small / "results"))
        workflow.config["local_cluster"] = {"n_workers": 1, "threads_per_worker": 1}
        result = workflow.run(timeout=240)
        output = result.output
        complete = _complete(workflow, names)
        assert result.returncode != 0
        assert 0 < len(complete) < 5, output
        assert shutil.disk_usage(small).free > 200 << 20  # space was never short
        assert (
            f"the filesystem of {small / 'results'} has no free inodes left (" in output
            and "it can hold no more files, whatever space `df -h` shows" in output
        ), output
        assert "MissingOutputException" not in output
        assert "Removing output files of failed job" not in output
        assert "Traceback" not in output
        [report] = (small / "results" / "report").iterdir()
        assert (report / "summary.tsv").stat().st_size > 0
        assert list((small / "results" / "logs" / "batches").glob("*.json"))  # the marker
        summary = _summary(workflow)
        assert {name for name, row in summary.items() if row["status"] == "done"} == set(complete)
        assert not [path.name for path in (small / "results").iterdir() if ".tmp" in path.name]

        subprocess.run(
            ["mount", "-o", "remount,nr_inodes=20000", str(small)], check=True, timeout=30
        )
        rerun = workflow.run(timeout=240)
        assert rerun.returncode == 0, rerun.output
        assert f"{5 - len(complete)} of 5 MS(s) to process" in rerun.output
        assert sorted(_complete(workflow, names)) == names
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, timeout=30)


def test_a_used_up_disk_quota_is_named_with_what_to_do_and_loses_nothing(workflow):
    """HPC scratch fails a write over the user's quota with EDQUOT while the filesystem has
    room: inflicted with an LD_PRELOAD library (tests/e2e/disk_quota.c) that fails the
    creation of files under the output directory whose path holds a mark, in every process
    of a real run. First DP3's own output (the MS said only `DP3 exited with code 1`), then
    the completion record (it said `OSError: [Errno 122] …`); then a run with room finishes."""
    names = ["obs_0", "obs_1"]
    make_inputs(workflow.directory / "inputs", 2)
    library = preload_library(Path(__file__).resolve().parent / "disk_quota.c", workflow.directory)
    advice = (
        "Disk quota exceeded: your disk quota there is used up (see `quota -s`, on Lustre "
        "`lfs quota -h -u $USER MOUNT`): free space or ask for more, then run again"
    )
    for mark, said in (
        (".tmp-", f"writing under {workflow.output_dir}: {advice}"),
        (
            ".dp3_completion.json.tmp",
            f"while writing the completion record: {workflow.output_dir}/",
        ),
    ):
        environment = {
            "LD_PRELOAD": str(library),
            "QUOTA_UNDER": str(workflow.output_dir),
            "QUOTA_MARK": mark,
        }
        result = workflow.run(environment=environment)
        output = result.output
        assert result.returncode != 0, output
        assert "2 of 2 MS(s) failed" in output, output
        for name in names:
            assert f"  {name} ({workflow.directory}/inputs/{name}.ms): {said}" in output, output
        assert advice in output
        assert "Traceback" not in output and "OSError" not in output
        assert not _complete(workflow, names)
        assert not list(workflow.output_dir.glob(".*.ms.tmp-*"))

    done = workflow.run()
    assert done.returncode == 0, done.output
    assert "2 of 2 MS(s) complete" in done.output


def test_record_checks_on_a_full_disk_leave_no_partial_file_and_no_error(tmp_path):
    """The checks kept between runs are a cache: a full filesystem costs the next run time,
    not an error, and leaves no half-written copy taking space."""
    from contract_examples import make_record
    from dp3batch.books.layout import RECORD_CHECKS_NAME, RECORD_NAME
    from dp3batch.books.records import RecordStore, write_record

    small_tmpfs = tmp_path / "small"
    _mount_tmpfs(small_tmpfs, 64 * 1024)
    try:
        output = small_tmpfs / "a.ms"
        output.mkdir()
        write_record(output, make_record())
        record = output / RECORD_NAME
        status = record.stat()
        os.utime(record, ns=(status.st_atime_ns, status.st_mtime_ns - 60_000_000_000))
        # Every block the tmpfs has left (unbuffered: nothing is left to flush at close).
        with open(small_tmpfs / "filler", "wb", buffering=0) as filler:
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 512)
        RecordStore().keep_checks(small_tmpfs / RECORD_CHECKS_NAME, [output], "digest-1")
        assert sorted(path.name for path in small_tmpfs.iterdir()) == ["a.ms", "filler"]
        (small_tmpfs / "filler").unlink()
        RecordStore().keep_checks(small_tmpfs / RECORD_CHECKS_NAME, [output], "digest-1")
        assert (small_tmpfs / RECORD_CHECKS_NAME).is_file()  # with room, it is written
    finally:
        subprocess.run(["umount", "-l", str(small_tmpfs)], check=False)


def test_an_empty_input_fails_alone_with_a_clear_reason(workflow):
    from casacore import tables

    inputs = make_inputs(workflow.directory / "inputs", 2)
    full = inputs[1].with_name("full.ms")
    inputs[1].rename(full)
    with tables.table(str(full), ack=False) as table:  # a 0-row MS: DP3 crashes on it
        table.copy(str(inputs[1]), deep=True, copynorows=True).close()
    shutil.rmtree(full)
    result = workflow.run(timeout=120)
    assert result.returncode != 0
    assert workflow.record("obs_0") is not None
    assert "obs_1" in result.output
    assert "obs_1" in result.output and "the input MS has no rows" in result.output
    assert "Traceback" not in result.output


def test_an_output_dir_without_file_locks_is_named_and_runs_once_it_has_them(workflow):
    """The output directory on a filesystem whose flock() fails (ENOSYS, as Lustre mounted
    `noflock` answers; inflicted with LD_PRELOAD on every process of the run): one message
    naming the lock file, the cause and what to do, no DP3 run, no traceback. The same
    directory on a filesystem with locks then runs as usual."""
    make_inputs(workflow.directory / "inputs", 2)
    library = preload_library(Path(__file__).resolve().parent / "no_flock.c", workflow.directory)
    environment = {"LD_PRELOAD": str(library), "NO_FLOCK_UNDER": str(workflow.output_dir)}
    refused = workflow.run(environment=environment)
    output = refused.output
    assert refused.returncode != 0, output
    lock = workflow.output_dir / ".dp3batch.lock"
    assert (
        f"Error: {lock} cannot be locked (Function not implemented): its filesystem does not "
        "support file locks" in output
    )
    assert "put output_dir on a filesystem with locks (Lustre mounted with -o flock" in output
    assert "Traceback" not in output
    assert not list(workflow.output_dir.glob("*.ms")) and not list(
        workflow.output_dir.glob(".*.ms.tmp-*")
    )

    done = workflow.run()
    assert done.returncode == 0, done.output
    assert "2 of 2 MS(s) complete" in done.output
