"""The dask execution stage against real `dask scheduler` / `dask worker` processes:
pre-flight errors, failure isolation, lost workers, thread discipline."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import (
    BIN,
    damage_ms,
    dp3_processes,
    free_port,
    make_inputs,
    run_python,
    wait_until,
)
from dp3batch.dask_stage.cluster import embedded_cluster

# DP3 takes about two seconds on each of these, long enough to kill something mid-task.
SLOW_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}


def _complete(workflow, names) -> list[str]:
    return [name for name in names if workflow.record(name) is not None]


def test_unreachable_scheduler_is_a_quick_clear_error(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    address = f"127.0.0.1:{free_port()}"
    workflow.config["scheduler"] = address
    started = time.monotonic()
    result = workflow.run(timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 25, elapsed
    assert f"cannot reach the dask scheduler at {address}" in result.output
    assert "dask scheduler" in result.output and "process=1" in result.output
    assert workflow.record("obs_0") is None


def test_workers_without_the_process_resource_are_a_clear_error(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 1)
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(count=1, resources=None)
    dask_cluster.wait_for_workers(1)
    workflow.config["scheduler"] = dask_cluster.address
    started = time.monotonic()
    result = workflow.run(timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 40, elapsed
    assert 'holds the "process" resource' in result.output
    assert (
        f'dask worker {dask_cluster.address} --nworkers N --nthreads T --resources "process=1"'
        in (result.output)
    )
    assert workflow.record("obs_0") is None


def test_scheduler_without_workers_is_a_clear_error(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 1)
    dask_cluster.start_scheduler()
    workflow.config["scheduler"] = dask_cluster.address
    result = workflow.run(timeout=120)
    assert result.returncode != 0
    assert "has no workers" in result.output
    assert '--resources "process=1"' in result.output


def test_damaged_ms_fails_alone_with_its_log_and_dp3_error(workflow, dask_cluster):
    inputs = make_inputs(workflow.directory / "inputs", 4)
    damage_ms(inputs[2])
    workflow.config["scheduler"] = dask_cluster.start(workers=2, threads=1)
    result = workflow.run()
    assert result.returncode != 0
    assert _complete(workflow, ["obs_0", "obs_1", "obs_2", "obs_3"]) == ["obs_0", "obs_1", "obs_3"]
    log_file = workflow.output_dir / "logs" / "obs_2.log"
    assert "1 of 4 MS(s) failed" in result.output
    assert f"log: {log_file}" in result.output
    # DP3's own last error line is quoted, and the log holds DP3's full output.
    dp3_line = next(line for line in result.output.splitlines() if "DP3: " in line)
    assert dp3_line.split("DP3: ", 1)[1].strip() in log_file.read_text()
    assert "MsReader" in log_file.read_text() or "Error" in log_file.read_text()
    assert not workflow.output("obs_2").exists()


def test_two_thread_workers_run_one_dp3_each_with_two_threads(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 4)
    workflow.config["scheduler"] = dask_cluster.start(workers=2, threads=2)
    result = workflow.run()
    assert result.returncode == 0, result.output
    records = [workflow.record(f"obs_{index}") for index in range(4)]
    for record in records:
        assert record["numthreads"] == 2
        assert "numthreads=2" in record["dp3_arguments"]
        # DP3's memory is invisible to the nanny: AOFlagger is bounded by the worker's
        # memory limit (the fixture starts workers with --memory-limit 4GB): half of it, as
        # DP3 needs about as much again beside AOFlagger's buffers.
        assert "aoflagger.memorymax=2.00" in record["dp3_arguments"]
    # One DP3 at a time per worker: the runs recorded by each worker never overlap.
    by_worker: dict[str, list] = {}
    for record in records:
        span = (
            datetime.datetime.fromisoformat(record["started"]),
            datetime.datetime.fromisoformat(record["finished"]),
        )
        by_worker.setdefault(record["worker"], []).append(span)
    for spans in by_worker.values():
        spans.sort()
        for (_, first_end), (second_start, _) in zip(spans, spans[1:], strict=False):
            assert first_end <= second_start


@pytest.fixture
def slow_batch_on_external_cluster(workflow, dask_cluster, request):
    """Snakemake started on 4 slow MSs against 2 external workers, killed if still running.

    Parametrize indirectly with how many lost workers a task survives (default: dask's)."""
    make_inputs(workflow.directory / "inputs", 4, **SLOW_MS)
    dask_cluster.start_scheduler(allowed_failures=getattr(request, "param", None))
    dask_cluster.start_workers(count=2, threads=1)
    dask_cluster.wait_for_workers(2)
    workflow.config["scheduler"] = dask_cluster.address
    snakemake = workflow.start()
    try:
        yield workflow, snakemake, str(workflow.directory)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)


def test_killed_worker_loses_its_dp3_and_the_task_is_retried(slow_batch_on_external_cluster):
    workflow, snakemake, marker = slow_batch_on_external_cluster
    running = wait_until(lambda: dp3_processes(marker), timeout=60, interval=0.05)
    assert running, "no DP3 process started"
    victim = running[0]
    worker = victim.parent()
    assert "DP3" not in " ".join(worker.cmdline())
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_until(
        lambda: not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE,
        timeout=5,
    )
    assert snakemake.wait(timeout=240) == 0, (workflow.directory / "snakemake.out").read_text()
    names = [f"obs_{index}" for index in range(4)]
    assert _complete(workflow, names) == names
    assert not dp3_processes(marker)
    assert not list(workflow.output_dir.glob(".*.ms.tmp-*"))


def test_interrupting_the_client_stops_dp3_on_external_workers(slow_batch_on_external_cluster):
    workflow, snakemake, marker = slow_batch_on_external_cluster
    assert wait_until(lambda: dp3_processes(marker), timeout=60, interval=0.05)
    os.killpg(snakemake.pid, signal.SIGINT)  # Ctrl-C
    snakemake.wait(timeout=60)
    # The workers are external (they live on), but their DP3s stop within seconds.
    assert wait_until(lambda: not dp3_processes(marker), timeout=10)
    assert snakemake.returncode != 0
    for index in range(4):
        output = workflow.output(f"obs_{index}")
        assert not output.exists() or workflow.record(f"obs_{index}") is not None


@pytest.mark.parametrize("slow_batch_on_external_cluster", [0], indirect=True)
def test_ms_whose_retries_run_out_is_reported_failed_and_the_others_finish(
    slow_batch_on_external_cluster,
):
    """With no lost worker allowed (the scheduler's allowed-failures = 0), the MS whose
    worker is killed fails at once (with any task dask had queued on that worker); every
    other MS is completed by the surviving worker."""
    workflow, snakemake, marker = slow_batch_on_external_cluster
    running = wait_until(lambda: dp3_processes(marker), timeout=60, interval=0.05)
    assert running, "no DP3 process started"
    victim = running[0]
    # Its command line as found (it may have ended since).
    lost = next(arg.split("=", 1)[1] for arg in victim.info["cmdline"] if arg.startswith("msin="))
    os.kill(victim.parent().pid, signal.SIGKILL)
    assert snakemake.wait(timeout=240) != 0
    output = (workflow.directory / "snakemake.out").read_text()
    lost_name = Path(lost).name.removesuffix(".ms")
    assert f"{lost_name} ({lost}): its worker died during every attempt" in output
    names = [f"obs_{index}" for index in range(4)]
    complete = _complete(workflow, names)
    failed = [name for name in names if name not in complete]
    assert len(complete) >= 2 and lost_name in failed
    assert f"{len(failed)} of 4 MS(s) failed" in output
    for name in failed:
        assert f"{name} ({workflow.directory / 'inputs' / name}.ms): its worker died" in output
    assert not dp3_processes(marker)


def test_workers_that_die_together_do_not_fail_the_mss_dask_moved_between_them(
    workflow, dask_cluster
):
    """A whole `dask worker --nworkers 4` killed mid-DP3 (its host or batch job went down):
    dask hands each task from dying worker to dying worker and counts every death, more
    than the scheduler's allowed-failures (1), and gives up on it. The workers died
    together, which counts once: each such MS runs again on the workers started after,
    and every MS is done."""
    make_inputs(workflow.directory / "inputs", 4, **SLOW_MS)
    dask_cluster.start_scheduler(allowed_failures=1)
    command = dask_cluster.start_workers(count=4, threads=1)
    dask_cluster.wait_for_workers(4)
    workflow.config["scheduler"] = dask_cluster.address
    snakemake = workflow.start()
    marker = str(workflow.directory)
    try:
        assert wait_until(lambda: len(dp3_processes(marker)) >= 3, timeout=60, interval=0.05)
        dask_cluster.stop_process(command)
        dask_cluster.start_workers(count=2, threads=1)
        code = snakemake.wait(timeout=240)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = (workflow.directory / "snakemake.out").read_text()
    assert code == 0, output
    # dask gave up on at least one MS after more deaths than it allows.
    assert re.search(r"the [234] worker\(s\) that held it died \(.*: it runs again", output), output
    names = [f"obs_{index}" for index in range(4)]
    assert _complete(workflow, names) == names
    assert not dp3_processes(marker)


def test_the_embedded_dashboard_answers_at_the_link_the_batch_log_shows():
    # The dashboard is loaded by the first request for it: that request, and the scheduler's
    # own pages, must still answer at the address the log names.
    with embedded_cluster(1, 1) as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        root = link.removesuffix("/status")

        def page(url: str) -> bytes:
            with urllib.request.urlopen(url, timeout=20) as answer:
                assert answer.status == 200
                return answer.read()

        assert b"ok" in page(f"{root}/health")  # not taken for a dashboard page
        assert b"bokeh" in page(link).lower()
        assert b"bokeh" in page(f"{root}/workers").lower()  # now served by the dashboard
        assert b"bokeh" in page(f"{root}/").lower()  # "/" leads to /status


def test_a_batch_nobody_looks_at_never_loads_the_dashboard():
    # Its import costs about 0.5 CPU-seconds and its updates more, beside every DP3.
    script = (
        "import sys\n"
        "from dp3batch.dask_stage.cluster import embedded_cluster\n"
        "with embedded_cluster(1, 1) as client:\n"
        "    client.submit(sum, [1, 2]).result()\n"
        "print('distributed.dashboard.scheduler' in sys.modules)\n"
    )
    answer = run_python(script)
    assert answer.stdout.strip() == "False", answer.stderr[-2000:]


def _held_twice_wrapper(path: Path, marker: str, attempts: Path) -> Path:
    """A DP3 wrapper whose first two runs on the MS named `marker` never end (they wait to
    be killed, as a DP3 that swells out of memory would); its later runs, and every other
    run, are real DP3."""
    path.write_text(
        "#!/bin/bash\n"
        f'case "$*" in *{marker}*)\n'
        f'  n=$(cat "{attempts}" 2>/dev/null || echo 0); echo $((n + 1)) > "{attempts}"\n'
        f'  if [ "$n" -lt 2 ]; then exec -a "DP3 $*" sleep 600; fi ;;\n'
        "esac\n"
        f'exec "{BIN / "DP3.py"}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def _held(marker: str) -> list[psutil.Process]:
    """The held runs of `_held_twice_wrapper` on `marker` (its attempt counted already): the
    wrapper's own start would be killed before it counts."""
    found = []
    for process in dp3_processes(marker):
        with contextlib.suppress(psutil.Error):
            # A process between fork and exec, or just ended, has an empty command line.
            arguments = process.cmdline()
            if arguments and arguments[0].startswith("DP3 "):
                found.append(process)
    return found


def _hold_heavy_twice(workflow) -> Path:
    """The workflow runs DP3 through `_held_twice_wrapper`, holding `heavy_0.ms`, with a
    chain that needs no AOFlagger strategy; returns the file that counts its attempts."""
    attempts = workflow.directory / "heavy-attempts"
    wrapper = _held_twice_wrapper(workflow.directory / "site-DP3.sh", "heavy_0.ms", attempts)
    workflow.config["dp3_executable"] = str(wrapper)
    workflow.config["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 2}}]
    return attempts


def test_deaths_a_task_met_long_ago_still_count_against_it(workflow, dask_cluster):
    """An MS that kills its worker (out of memory, say), twice, far apart: between the two
    deaths the other workers returned many results, and the scheduler's recent events (10
    kept here, 1,000 by default; each result adds one) no longer hold the first death. Both
    count: with one lost worker allowed, the MS fails after its second death, and is not run
    a third time as if its workers had died together."""
    make_inputs(workflow.directory / "inputs", 1, prefix="heavy", n_antennas=8, n_times=10)
    small = make_inputs(workflow.directory / "inputs", 20, n_antennas=8, n_times=10)
    attempts = _hold_heavy_twice(workflow)
    dask_cluster.start_scheduler(
        allowed_failures=1, DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH="10"
    )
    dask_cluster.start_workers(count=3, threads=1)
    dask_cluster.wait_for_workers(3)
    workflow.config["scheduler"] = dask_cluster.address
    marker = str(workflow.directory / "inputs" / "heavy_0.ms")

    def done() -> int:
        return sum(workflow.record(path.stem) is not None for path in small)

    snakemake = workflow.start()
    try:
        killed: set[int] = set()
        for death in range(2):
            held = wait_until(
                lambda: [run for run in _held(marker) if run.pid not in killed], 60, 0.05
            )
            assert held, f"attempt {death + 1} of the heavy MS never started"
            killed.add(held[0].pid)
            os.kill(held[0].parent().pid, signal.SIGKILL)  # its worker: its nanny starts another
            if death == 0:  # its next attempt is held while the others return 15 results
                assert wait_until(lambda: done() >= 15, timeout=120, interval=0.1), done()
        code = snakemake.wait(timeout=240)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = (workflow.directory / "snakemake.out").read_text()
    assert attempts.read_text().strip() == "2", output  # never a third attempt
    assert code != 0, output
    assert workflow.record("heavy_0") is None
    assert f"heavy_0 ({marker}): its worker died during every attempt" in output, output
    assert "that held it died (" not in output, output  # never forgiven
    # The others are done, but for any that waited for a slot on both killed workers (the
    # price of a task waiting on a worker: dask counts that worker's death against it).
    for path in small:
        if workflow.record(path.stem) is None:
            assert f"{path.stem} ({path}): its worker died during every attempt" in output
    # The batch's client stopped listening: the scheduler lives on, and would keep it.
    answer = run_python(
        "from distributed import Client\n"
        f"with Client('{dask_cluster.address}', timeout='10s') as client:\n"
        "    print(client.run_on_scheduler(\n"
        "        lambda dask_scheduler: len(dask_scheduler._broker._topics['all'].subscribers)\n"
        "    ))\n"
    )
    assert answer.stdout.strip() == "0", answer.stderr[-2000:]


def test_an_ms_that_only_waited_on_a_killed_worker_runs_again(workflow, dask_cluster):
    """Small MSs wait for a slot on a busy worker (the next starts the moment the slot
    frees). With no lost worker allowed, killing the worker fails the MS it ran, and dask
    gives up on the one that waited there too: that one had not started, and runs again on
    the worker its nanny starts."""
    make_inputs(workflow.directory / "inputs", 1, prefix="big", n_antennas=8, n_times=40)
    make_inputs(workflow.directory / "inputs", 1, prefix="heavy", n_antennas=8, n_times=20)
    small = make_inputs(workflow.directory / "inputs", 3, n_antennas=8, n_times=10)
    attempts = _hold_heavy_twice(workflow)
    dask_cluster.start_scheduler(allowed_failures=0)
    dask_cluster.start_workers(count=1, threads=1)
    dask_cluster.wait_for_workers(1)
    workflow.config["scheduler"] = dask_cluster.address
    marker = str(workflow.directory / "inputs" / "heavy_0.ms")
    snakemake = workflow.start()
    try:
        held = wait_until(lambda: _held(marker), timeout=60, interval=0.05)
        assert held, "the heavy MS never started"
        assert workflow.record("big_0") is not None  # run first, as the largest
        time.sleep(1)  # the next MS waits on the worker meanwhile
        os.kill(held[0].parent().pid, signal.SIGKILL)  # the worker: its nanny starts another
        code = snakemake.wait(timeout=240)
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    output = (workflow.directory / "snakemake.out").read_text()
    assert code != 0, output
    assert f"heavy_0 ({marker}): its worker died during every attempt" in output, output
    assert attempts.read_text().strip() == "1", output  # it ran, and is not forgiven
    waited = re.findall(
        r"(obs_\d): the 1 worker\(s\) that held it died \(1 before it started there\); "
        r"0 of 0 allowed failure\(s\) counted: it runs again",
        output,
    )
    assert len(waited) == 1, output
    assert [path.stem for path in small if workflow.record(path.stem) is None] == [], output
    assert "1 of 5 MS(s) failed" in output, output
