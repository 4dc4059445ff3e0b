"""A dask cluster kept up across many batches while its workers are killed, restarted,
frozen and broken, and its scheduler restarted (issue 26): shared by the soak test
(tests/e2e/test_soak.py, a few minutes) and the soak benchmark (benchmarks/soak.py, longer).

Each batch is a real `snakemake` run against the same `dask scheduler` (its own output
directory, the same inputs). A batch is judged on what an operator would check:
- it ends within its bound, with the exit code the situation calls for;
- its report is true: an MS is `done` in the summary exactly when its output has a
  completion record, and nothing it printed is a traceback;
- every output equals the clean run's (the same DP3 on an embedded cluster), column by
  column;
- the scheduler's worker plugins do not grow from batch to batch;
- no DP3 of it is left running.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from dp3batch.testing.harness import DaskCluster, Workflow, dp3_processes, wait_until

# DP3 takes a few seconds on each: long enough to act while it runs.
SOAK_MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}
# The columns of an output compared with the clean run's.
COMPARED_COLUMNS = ("DATA", "FLAG", "WEIGHT_SPECTRUM", "UVW", "TIME", "ANTENNA1", "ANTENNA2")
# What the broken worker's DP3 says (the "fails to load a library").
LOADER_ERROR = (
    "error while loading shared libraries: libcasa_tables.so.7: cannot open shared object "
    "file: No such file or directory"
)
BROKEN_DP3_VARIABLE = "DP3BATCH_TEST_BROKEN_DP3"
# A worker started with this set never answers `DP3 --version` (a hung filesystem).
HUNG_DP3_VARIABLE = "DP3BATCH_TEST_HUNG_DP3"


def site_wrapper(path: Path, dp3: str, broken_for: str = "always") -> Path:
    """A site's DP3 wrapper that runs `dp3`, except on a worker started with
    BROKEN_DP3_VARIABLE set: there DP3 cannot start (a loader error, exit 127), for every
    call (`always`), or only for real runs (`runs`: `DP3 --version` still answers, as when a
    library is loaded late). On a worker started with HUNG_DP3_VARIABLE set, `DP3
    --version` never answers."""
    broken = f'[ -n "${BROKEN_DP3_VARIABLE}" ]'
    if broken_for == "runs":
        broken += ' && [ "$1" != "--version" ]'
    path.write_text(
        "#!/bin/bash\n"
        f'if [ -n "${HUNG_DP3_VARIABLE}" ] && [ "$1" = "--version" ]; then\n'
        "  exec sleep 600\n"
        "fi\n"
        f"if {broken}; then\n"
        f'  echo "{dp3}: {LOADER_ERROR}" >&2\n'
        "  exit 127\n"
        "fi\n"
        f'exec "{dp3}" "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def differing_columns(output: Path, reference: Path) -> list[str]:
    """The compared columns in which two output MSs differ (empty: equal)."""
    from casacore import tables

    differences = []
    with tables.table(str(output), ack=False) as a, tables.table(str(reference), ack=False) as b:
        if a.nrows() != b.nrows():
            return [f"rows {a.nrows()} != {b.nrows()}"]
        for column in COMPARED_COLUMNS:
            if column in a.colnames() and column in b.colnames():
                if not np.array_equal(a.getcol(column), b.getcol(column), equal_nan=True):
                    differences.append(column)
    return differences


PLUGINS_SCRIPT = """
import json, sys
from distributed import Client
with Client(sys.argv[1], timeout="10s") as client:
    plugins = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.worker_plugins))
    print(json.dumps([str(name) for name in plugins]))
"""


def scheduler_plugins(address: str, python: str = sys.executable) -> list[str]:
    """The worker plugins the scheduler keeps (and replays to every worker that joins)."""
    answer = subprocess.run(
        [python, "-c", PLUGINS_SCRIPT, address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(answer.stdout)


@dataclass
class BatchFigures:
    """What one batch of the soak did, and what was wrong with it (empty: nothing)."""

    name: str
    exit_code: int | None
    seconds: float
    done: int
    total: int
    plugins: int
    problems: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


# A fault inflicted while a batch runs: called with the soak, the batch's workflow and a
# DP3 process of the batch (running when it is called).
Fault = Callable[["Soak", Workflow, psutil.Process], None]


class Soak:
    """One scheduler, its workers, and a batch after another on it (see the module's doc)."""

    def __init__(self, directory: Path, inputs: list[Path], steps: list, dp3: str):
        self.directory = directory
        self.inputs = inputs
        self.names = [path.name.removesuffix(".ms") for path in inputs]
        self.steps = steps
        self.wrapper = site_wrapper(directory / "site-dp3.sh", dp3)
        (directory / "cluster").mkdir(parents=True, exist_ok=True)
        self.cluster = DaskCluster(directory / "cluster")
        self.reference: Path | None = None
        self.batches: list[BatchFigures] = []
        self.baseline_plugins: list[str] | None = None
        self.silence_seconds = 8

    # --- the cluster ----------------------------------------------------------------

    def start(self, workers: int = 2) -> None:
        self.cluster.start_scheduler()
        self.cluster.start_workers(count=workers)
        self.cluster.wait_for_workers(workers)

    def worker_commands(self) -> list[subprocess.Popen]:
        """The `dask worker` commands still running."""
        scheduler = self.cluster.scheduler
        return [p for p in self.cluster.processes if p is not scheduler and p.poll() is None]

    def stop_workers(self) -> None:
        for command in self.worker_commands():
            self.cluster.stop_process(command)

    def restart_workers(self, count: int = 2, threads: int | None = 1, **environment) -> None:
        """Every worker stopped (SIGKILL), `count` new ones started and waited for."""
        self.stop_workers()
        self.cluster.start_workers(count=count, threads=threads, **environment)
        self.cluster.wait_for_workers(count)

    def restart_scheduler(self) -> None:
        """The scheduler killed and a new one started on the same port."""
        self.cluster.stop_process(self.cluster.scheduler)
        self.cluster.start_scheduler()

    def plugins(self) -> list[str]:
        python = str(Path(self.cluster.dask_executable).parent / "python")
        return scheduler_plugins(self.cluster.address, python)

    # --- batches --------------------------------------------------------------------

    def workflow(self, name: str, scheduler: str | None) -> Workflow:
        directory = self.directory / name
        directory.mkdir(parents=True, exist_ok=True)
        workflow = Workflow(directory)
        workflow.config = {
            "inputs": [str(path) for path in self.inputs],
            "output_dir": "results",
            "scheduler": scheduler,
            "dp3_executable": str(self.wrapper),
            "steps": self.steps,
            "worker_silence_seconds": self.silence_seconds,
            "worker_wait_seconds": 20,
        }
        return workflow

    def clean_run(self) -> BatchFigures:
        """The outputs every batch's must equal: an embedded cluster, nothing inflicted."""
        workflow = self.workflow("clean", None)
        workflow.config["local_cluster"] = {"n_workers": 2, "threads_per_worker": 1}
        started = time.monotonic()
        result = workflow.run(timeout=600)
        self.reference = workflow.output_dir
        figures = BatchFigures("clean", result.returncode, time.monotonic() - started, 0, 0, 0)
        figures.done = sum(1 for name in self.names if workflow.record(name))
        figures.total = len(self.names)
        if result.returncode != 0 or figures.done != figures.total:
            figures.problems.append(f"the clean run failed: {result.output[-3000:]}")
        return figures

    def batch(
        self,
        name: str,
        *,
        fault: Fault | None = None,
        succeeds: bool = True,
        bound: float = 300,
        flags: tuple[str, ...] = (),
        same_directory_as: str | None = None,
        expect: tuple[str, ...] = (),
    ) -> BatchFigures:
        """One batch against the soak's scheduler; `fault` is inflicted once a DP3 of it
        runs; `expect`: texts its output must hold."""
        workflow = self.workflow(same_directory_as or name, self.cluster.address)
        marker = str(workflow.directory)
        # A batch's DP3s have the batch's output directory in their command line.
        started = time.monotonic()
        snakemake = workflow.start(*flags)
        fault_error: list[str] = []
        watcher = None
        if fault is not None:
            watcher = threading.Thread(
                target=self._inflict, args=(fault, workflow, marker, fault_error), daemon=True
            )
            watcher.start()
        try:
            snakemake.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            os.killpg(snakemake.pid, signal.SIGKILL)
            snakemake.wait()
        seconds = time.monotonic() - started
        if watcher is not None:
            watcher.join(timeout=120)
        output = (workflow.directory / "snakemake.out").read_text()
        (workflow.directory / f"snakemake-{name}.out").write_text(output)
        figures = BatchFigures(name, snakemake.returncode, seconds, 0, len(self.names), 0)
        figures.problems += fault_error
        self._judge(figures, workflow, output, marker, succeeds, bound, expect)
        self.batches.append(figures)
        return figures

    def _inflict(self, fault: Fault, workflow: Workflow, marker: str, errors: list[str]) -> None:
        try:
            running = wait_until(lambda: dp3_processes(marker), 180, 0.05)
            if not running:
                errors.append("no DP3 of the batch ran: the fault was not inflicted")
                return
            fault(self, workflow, running[0])
        except Exception as error:  # noqa: BLE001 - reported as a problem of the batch
            errors.append(f"inflicting the fault failed: {type(error).__name__}: {error}")

    def _judge(
        self,
        figures: BatchFigures,
        workflow: Workflow,
        output: str,
        marker: str,
        succeeds: bool,
        bound: float,
        expect: tuple[str, ...],
    ) -> None:
        problems = figures.problems
        if figures.seconds >= bound:
            problems.append(f"it did not end within {bound:.0f} s")
        if succeeds and figures.exit_code != 0:
            problems.append(f"it failed (exit {figures.exit_code}): {output[-3000:]}")
        if not succeeds and figures.exit_code == 0:
            problems.append("it should have failed, and ended 0")
        if "Traceback" in output:
            problems.append(f"a traceback was printed: {output[-3000:]}")
        for text in expect:
            if text not in output:
                problems.append(f"its output lacks {text!r}")
        if not wait_until(lambda: not dp3_processes(marker), 60):
            problems.append("a DP3 was left running")
        recorded = {name for name in self.names if workflow.record(name) is not None}
        figures.done = len(recorded)
        summary = workflow.output_dir / "summary.tsv"
        if summary.is_file():
            with open(summary) as handle:
                statuses = {
                    row["name"]: row["status"] for row in csv.DictReader(handle, delimiter="\t")
                }
            complete = {
                name for name, status in statuses.items() if status in ("done", "up to date")
            }
            if complete != recorded:
                problems.append(
                    f"the summary says complete {sorted(complete)}, records {sorted(recorded)}"
                )
        else:
            problems.append("no summary was written")
        for name in sorted(recorded):
            if self.reference is not None:
                differing = differing_columns(workflow.output(name), self.reference / f"{name}.ms")
                if differing:
                    problems.append(f"{name}: differs from the clean run in {differing}")
        leftovers = [p.name for p in workflow.output_dir.glob(".*.ms.tmp-*")]
        if leftovers and not wait_until(
            lambda: not list(workflow.output_dir.glob(".*.ms.tmp-*")), 30
        ):
            problems.append(f"temporary outputs left: {leftovers}")
        try:
            plugins = self.plugins()
        except Exception as error:  # noqa: BLE001 - a scheduler that cannot say is a problem
            problems.append(f"the scheduler's plugins could not be read: {error}")
            return
        figures.plugins = len(plugins)
        if self.baseline_plugins is None:
            self.baseline_plugins = plugins
        elif len(plugins) > len(self.baseline_plugins):
            problems.append(f"the scheduler's plugins grew: {self.baseline_plugins} -> {plugins}")


# --- faults ---------------------------------------------------------------------------


def kill_its_worker(soak: Soak, workflow: Workflow, dp3: psutil.Process) -> None:
    """SIGKILL the worker process running `dp3` (its nanny starts a new one)."""
    dp3.parent().kill()


def kill_a_worker_command_and_start_another(
    soak: Soak, workflow: Workflow, dp3: psutil.Process
) -> None:
    """A whole `dask worker` (its nanny and worker) killed mid-DP3, and another started."""
    worker = dp3.parent()
    for command in soak.worker_commands():
        if worker.pid in {p.pid for p in soak.cluster.worker_processes([command])}:
            soak.cluster.stop_process(command)
    soak.cluster.start_workers(count=1)


def freeze_its_worker(soak: Soak, workflow: Workflow, dp3: psutil.Process) -> None:
    """The worker running `dp3`, and `dp3`, SIGSTOPped (a paused VM); woken up once the MS
    was committed by another worker."""
    worker = dp3.parent()
    name = next(
        Path(argument.split("=", 1)[1]).name.removesuffix(".ms")
        for argument in dp3.cmdline()
        if argument.startswith("msin=")
    )
    frozen = [worker, dp3]
    for process in frozen:
        process.suspend()
    try:
        wait_until(lambda: workflow.record(name), 240, 0.2)
    finally:
        for process in frozen:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass


def restart_the_scheduler(soak: Soak, workflow: Workflow, dp3: psutil.Process) -> None:
    soak.restart_scheduler()


def add_a_worker(soak: Soak, workflow: Workflow, dp3: psutil.Process) -> None:
    """A worker that joins mid-batch (a batch job that started late)."""
    soak.cluster.start_workers(count=1)
