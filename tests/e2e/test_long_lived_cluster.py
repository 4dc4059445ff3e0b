"""A dask cluster that outlives the batches run on it, and its sick workers (issue 26): real
`dask scheduler` / `dask worker` processes, real DP3, real `snakemake`.

A worker that runs other code, a DP3 that cannot start, a frozen worker, a scheduler
restarted on its port, the dashboard's port given for the scheduler's, more threads than
cores. The soak test (test_soak.py) runs them one after another on one scheduler."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from conftest import BIN, REPO, dp3_processes, make_inputs, wait_until
from dp3batch.dp3.install import wheel_aoflagger_strategy
from dp3batch.testing.soak import LOADER_ERROR, site_wrapper

# DP3 takes a few seconds on each of these: long enough to inflict a fault mid-task.
SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}
REAL_DP3 = str(BIN / "DP3.py")


def _output(workflow) -> str:
    return (workflow.directory / "snakemake.out").read_text()


def _summary(workflow) -> dict[str, str]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row["status"] for row in csv.DictReader(handle, delimiter="\t")}


def _finish(process, timeout: float) -> float:
    started = time.monotonic()
    try:
        process.wait(timeout=timeout)
    except Exception:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the run did not end within {timeout} s")
    return time.monotonic() - started


def _use_wrapper(workflow, wrapper: Path) -> None:
    workflow.config["dp3_executable"] = str(wrapper)
    # A wrapper around the wheel needs the wheel's AOFlagger strategy named.
    workflow.config["steps"] = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": wheel_aoflagger_strategy(REAL_DP3)}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]


def test_a_worker_running_other_code_is_named_before_anything_runs(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 2)
    other = workflow.directory / "other-checkout"
    shutil.copytree(REPO / "scripts" / "dp3batch", other / "dp3batch")
    with open(other / "dp3batch" / "books" / "commit.py", "a") as source:
        source.write("\n# a change not pulled everywhere\n")
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(count=1)
    dask_cluster.start_workers(count=1, PYTHONPATH=str(other))
    dask_cluster.wait_for_workers(2)
    workflow.config["scheduler"] = dask_cluster.address
    started = time.monotonic()
    result = workflow.run(timeout=180)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 60, elapsed
    assert "1 worker(s) do not run this batch's code and DP3" in result.output
    assert f"from {other / 'dp3batch'}, not dp3batch" in result.output
    assert f"PYTHONPATH={REPO / 'scripts'} dask worker {dask_cluster.address}" in result.output
    assert result.output.count("do not run this batch's code") == 1, result.output
    assert "Traceback" not in result.output
    assert workflow.record("obs_0") is None and workflow.record("obs_1") is None


@pytest.mark.parametrize("broken_for", ["always", "runs"])
def test_a_worker_whose_dp3_cannot_start_gets_no_work_and_is_named(
    workflow, dask_cluster, broken_for
):
    names = [f"obs_{index}" for index in range(6)]
    make_inputs(workflow.directory / "inputs", 6)
    _use_wrapper(workflow, site_wrapper(workflow.directory / "site-dp3.sh", REAL_DP3, broken_for))
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(count=1)
    broken = dask_cluster.start_workers(count=1, DP3BATCH_TEST_BROKEN_DP3="1")
    dask_cluster.wait_for_workers(2)
    broken_address = dask_cluster.worker_address(dask_cluster.workers_of(broken)[0])
    workflow.config["scheduler"] = dask_cluster.address
    result = workflow.run(timeout=240)
    assert result.returncode == 0, result.output
    assert [name for name in names if workflow.record(name) is None] == []
    assert {workflow.record(name)["worker"] for name in names} != {broken_address}
    assert broken_address not in {workflow.record(name)["worker"] for name in names}
    assert f"worker {broken_address} gets no" in result.output
    assert LOADER_ERROR in result.output
    assert "every MS is done, but 1 worker(s) were left out of this batch" in result.output
    assert "Traceback" not in result.output
    if broken_for == "runs":  # at most twice in a row, then no more work there
        assert 1 <= result.output.count(f"not run on {broken_address}") <= 2, result.output


def test_a_joiner_that_never_answers_its_check_does_not_hold_the_batch(workflow, dask_cluster):
    """A worker joins mid-batch and its `DP3 --version` never answers (a hung filesystem):
    the check waits for it up to its deadline (90 s) beside the batch, which goes on with
    the other worker meanwhile and never gives the joiner a task. The check runs beside the
    joiner's event loop, which keeps beating: it is not taken for frozen. Eight MSs, so that the
    batch outlasts the joiner's check by well over the 10 s after which the end of a batch
    names an unanswered check (four, about 10 s after the join, could end first)."""
    names = [f"obs_{index}" for index in range(8)]
    make_inputs(workflow.directory / "inputs", 8, **SLOW_MS)
    _use_wrapper(workflow, site_wrapper(workflow.directory / "site-dp3.sh", REAL_DP3))
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(count=1)
    dask_cluster.wait_for_workers(1)
    (good,) = dask_cluster.worker_addresses().values()
    workflow.config.update(scheduler=dask_cluster.address, worker_silence_seconds=5)
    marker = str(workflow.directory)
    started = time.monotonic()
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: dp3_processes(marker), 120, 0.05)
        dask_cluster.start_workers(count=1, DP3BATCH_TEST_HUNG_DP3="1")
        dask_cluster.wait_for_workers(2)
        joiner = next(
            address for address in dask_cluster.worker_addresses().values() if address != good
        )
        _finish(snakemake, 180)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    output = _output(workflow)
    assert snakemake.returncode == 0, output
    assert [name for name in names if workflow.record(name) is None] == []
    assert {workflow.record(name)["worker"] for name in names} == {good}
    # Held for the check's 90 s, the batch would take over 100 s; alone it takes about 25.
    assert elapsed < 75, (elapsed, output)
    assert "Traceback" not in output
    # Its check outlasted the batch and the silence bound (5 s): heard all along.
    assert f"  {joiner}: it joined mid-batch and its check (its dp3batch" in output
    assert "has not heard from it" not in output, output


def test_a_frozen_worker_s_ms_runs_elsewhere_within_the_bound_and_its_late_result_is_never_kept(
    workflow, dask_cluster
):
    names = [f"obs_{index}" for index in range(3)]
    make_inputs(workflow.directory / "inputs", 3, **SLOW_MS)
    dask_cluster.start(workers=2, threads=1)
    # Asked before: asking takes seconds, in which the DP3 to freeze could end.
    addresses = dask_cluster.worker_addresses()
    bound = 5
    workflow.config.update(scheduler=dask_cluster.address, worker_silence_seconds=bound)
    marker = str(workflow.directory)
    snakemake = workflow.start()
    frozen: list[psutil.Process] = []
    try:
        running = wait_until(lambda: dp3_processes(marker), 120, 0.05)
        assert running, "no DP3 started"
        dp3 = running[0]
        worker = dp3.parent()
        for process in (worker, dp3):  # as a paused VM or a stuck node: all of it
            process.suspend()
            frozen.append(process)
        frozen_at = time.monotonic()
        frozen_address = addresses[worker.pid]
        frozen_name = next(
            Path(argument.split("=", 1)[1]).name.removesuffix(".ms")
            for argument in dp3.cmdline()
            if argument.startswith("msin=")
        )
        # The retry commits while the frozen attempt sleeps; then the frozen one wakes up.
        assert wait_until(lambda: workflow.record(frozen_name), 120, 0.1)
        retried_after = time.monotonic() - frozen_at
        kept = (workflow.output(frozen_name) / "dp3_completion.json").read_bytes()
        for process in frozen:
            process.resume()
        _finish(snakemake, 120)
    finally:
        for process in frozen:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode == 0, output
    assert retried_after < bound + 40, retried_after  # dask's worker-ttl: 300-600 s
    assert [name for name in names if workflow.record(name) is None] == []
    assert workflow.record(frozen_name)["worker"] != frozen_address
    assert f"worker {frozen_address} gets no more DP3 tasks in this batch: the scheduler has" in (
        output
    )
    assert f"its task(s) {frozen_name} run again elsewhere" in output
    assert "Traceback" not in output
    # The woken worker was removed from the scheduler: it ends, its DP3 with it, and its late
    # result is never committed over the retry's.
    assert wait_until(lambda: not dp3_processes(marker), 60), "DP3 still running"
    assert wait_until(lambda: not list(workflow.output_dir.glob(".*.ms.tmp-*")), 30)
    time.sleep(2)
    assert (workflow.output(frozen_name) / "dp3_completion.json").read_bytes() == kept
    guard = next((workflow.output_dir / "logs" / "batches").glob("*.guard")).read_text()
    assert any(line.startswith(f"revoked dp3 {frozen_name}") for line in guard.splitlines())


def test_a_worker_silent_at_preflight_is_checked_and_used_once_heard_from_again(
    workflow, dask_cluster
):
    """A worker paused when the batch starts (a node swapping, a VM being moved) gets no
    work while it is silent; heard from again, it is checked as a joiner is, then used."""
    names = [f"obs_{index}" for index in range(6)]
    make_inputs(workflow.directory / "inputs", 6, **SLOW_MS)
    dask_cluster.start(workers=2, threads=1)
    paused_pid, paused = sorted(dask_cluster.worker_addresses().items())[0]
    workflow.config.update(scheduler=dask_cluster.address, worker_silence_seconds=5)
    marker = str(workflow.directory)
    worker = psutil.Process(paused_pid)
    worker.suspend()
    snakemake = None
    try:
        time.sleep(8)  # silent past the 5 s bound when the batch starts
        snakemake = workflow.start()
        assert wait_until(lambda: dp3_processes(marker), 120, 0.05)
        worker.resume()
        _finish(snakemake, 180)
    finally:
        worker.resume()
        if snakemake is not None and snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode == 0, output
    assert f"worker {paused} gets no DP3 task while it is silent" in output
    assert f"worker {paused}, silent at pre-flight, is heard from again" in output
    assert f"worker(s) joined and can run DP3: {paused}" in output
    assert [name for name in names if workflow.record(name) is None] == []
    assert paused in {workflow.record(name)["worker"] for name in names}, output
    assert "left out of this batch" not in output
    assert "Traceback" not in output


def test_a_worker_that_joins_after_the_first_result_gets_work_beside_the_waiting_tasks(
    workflow, dask_cluster
):
    """Small MSs: once the first worker returned a result, one task more waits on it. A
    worker that joins then still gets its open task, however many wait on the first."""
    names = [f"obs_{index}" for index in range(8)]
    make_inputs(workflow.directory / "inputs", 8, **SLOW_MS)
    dask_cluster.start(workers=1, threads=1)
    (first,) = dask_cluster.worker_addresses().values()
    workflow.config["scheduler"] = dask_cluster.address
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: any(workflow.record(name) for name in names), 120, 0.05)
        joiner = dask_cluster.start_workers(count=1)
        _finish(snakemake, 240)
        joined = dask_cluster.worker_address(dask_cluster.workers_of(joiner)[0])
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode == 0, output
    assert f"worker(s) joined and can run DP3: {joined}" in output
    workers = [workflow.record(name)["worker"] for name in names]
    assert joined in workers and first in workers, output


def test_a_scheduler_restarted_mid_batch_ends_the_batch_at_once_with_a_true_report(
    workflow, dask_cluster
):
    names = [f"obs_{index}" for index in range(4)]
    make_inputs(workflow.directory / "inputs", 4, **SLOW_MS)
    dask_cluster.start(workers=2, threads=1)
    workflow.config.update(scheduler=dask_cluster.address)  # worker_wait_seconds: 60
    marker = str(workflow.directory)
    snakemake = workflow.start()
    try:
        assert wait_until(lambda: dp3_processes(marker), 120, 0.05)
        dask_cluster.stop_process(dask_cluster.scheduler)
        dask_cluster.start_scheduler()  # the same port
        elapsed = _finish(snakemake, 120)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = _output(workflow)
    assert snakemake.returncode != 0
    assert elapsed < 40, elapsed  # not the 60 s wait for workers that left with it
    assert "the dask scheduler at" in output and "restarted" in output
    assert "Traceback" not in output
    # The report tells the truth: an MS is done exactly when its output was committed.
    assert wait_until(lambda: not dp3_processes(marker), 30)
    summary = _summary(workflow)
    complete = [name for name in names if workflow.record(name) is not None]
    assert {name for name, status in summary.items() if status == "done"} == set(complete)
    failures = (workflow.output_dir / "logs" / "failed.txt").read_text()
    for name in complete:
        assert f"{name} (" not in failures and f" {name}," not in failures, failures
    assert output.count("the tasks it held are lost") == 1, output  # once, at the end
    assert output.rstrip().endswith("only the MSs not done will be processed.")


def test_the_dashboard_port_given_as_the_scheduler_is_named_at_once(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 1)
    dask_cluster.start_scheduler()
    workflow.config["scheduler"] = f"127.0.0.1:{dask_cluster.dashboard_port}"
    started = time.monotonic()
    result = workflow.run(timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 20, elapsed  # no 15 s wait for workers
    message = f"127.0.0.1:{dask_cluster.dashboard_port} answers HTTP: it is a web page"
    assert message in result.output
    assert "scheduler=127.0.0.1:8786" in result.output
    assert result.output.count(message) == 1, result.output


def test_more_threads_than_cores_on_a_host_is_warned_about(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 2)
    cores = len(os.sched_getaffinity(0))
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(count=2, threads=cores)
    dask_cluster.wait_for_workers(2)
    workflow.config["scheduler"] = dask_cluster.address
    result = workflow.run(timeout=180)
    assert result.returncode == 0, result.output
    assert (
        f"2 worker(s) holding process hold {2 * cores} thread(s) for its {cores} core(s)"
        in result.output
    )
    assert "--nthreads so that workers x threads = cores" in result.output


def test_dasks_port_warning_goes_to_the_log_not_the_terminal(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    # Another cluster's dashboard on 8787, held by this test for the whole run: a port that
    # someone else holds may be freed mid-run (the suite's other process runs clusters too).
    holder = socket.socket()

    def bound() -> bool:
        try:
            holder.bind(("127.0.0.1", 8787))
        except OSError:
            return False
        holder.listen()
        return True

    assert wait_until(bound, 120, 0.1), "port 8787 stayed taken for 2 minutes"
    try:
        result = workflow.run(timeout=180)
    finally:
        holder.close()
    assert result.returncode == 0, result.output
    assert "already in use" not in result.output
    assert "UserWarning" not in result.output
    logs = list((workflow.output_dir / "logs" / "batches").glob("*.log"))
    assert any("Port 8787 is already in use" in log.read_text() for log in logs)
