"""Benchmarks of issue 14, each measured side by side in one run (the machines are shared and
noisy: compare the ratios, not the absolute times).

    python benchmarks/benchmark.py all              # every case (about 15 minutes on 2 cores)
    python benchmarks/benchmark.py throughput       # or one case (list below)
    python benchmarks/benchmark.py throughput --rounds 3   # each contender 3 times, in turn

Each case prints its figures and writes benchmarks/results/<case>.json.

- throughput (P1): 8 MSs of 0.2 GB, PreFlagger + AOFlagger + Averager (timestep 2, freqstep
  4): the workflow on its default embedded cluster, the workflow on an external 2 x 1 dask
  cluster started as docs/clusters.md recommends (with its `export DASK_...` line), and an ideal
  2-slot pool running exactly the DP3 commands the workflow ran.
  Targets: each workflow / pool <= 1.05. With `--reference-venv`, also SKA's batch
  pre-processing pipeline (installed there) on a 2 x 1 cluster of its own dask version.
  The process table is sampled throughout (P4). Beside the times, DP3's own timer ("Total
  DP3 time", mean per MS) under each contender: whether DP3 itself ran slower there.
- rerun (P2, after throughput, same data): one output deleted, then the rerun against that
  MS's DP3 command run alone; then a no-op rerun. Targets: rerun <= DP3 alone + 1.5 s;
  no-op <= 1 s.
- uneven (P5): 12 MSs whose sizes spread 1:8, listed smallest first (the largest last): the
  workflow (embedded, 2 x 1), and every `process_measurement_set` task submitted at once in
  the listed order on a 2 x 1 dask cluster (what the reference pipeline does). Lower bound
  = max(total DP3 time / 2, longest DP3 time), from the DP3 times measured in a 2-slot pool.
  Target: workflow <= 1.05 x lower bound.
- bookkeeping (P3): 1,000 and 10,000 tiny MSs with up-to-date outputs: no-op rerun, dry run
  with nothing pending, dry run with everything pending. Targets at 10,000: no-op <= 3 s,
  dry run all pending <= 5 s.
- threads (P4): the default embedded cluster; every 50 ms the running DP3 threads (state R
  in /proc) are counted. Target: never more than the cores.
- many (issue 30): `--many N` small MSs (8 stations, 20 times, 16 channels; default 400) in
  one run on the embedded default against an ideal 2-slot pool of the same DP3 commands (and
  the reference pipeline with `--reference-venv`): wall-time ratio, CPU per MS beside DP3's
  own, peak memory of Snakemake and the central job, the no-op rerun and the rerun after
  1 % of the outputs are deleted. Targets at 400: <= 1.10 x the pool, <= 10 ms per MS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
# This checkout's package, whichever is installed.
sys.path.insert(0, str(REPO / "scripts"))

from dp3batch.dask_stage.cluster import quiet_cluster_environment  # noqa: E402
from dp3batch.dp3.install import dp3_environment, find_dp3_executable  # noqa: E402
from dp3batch.dp3.native import dp3_program  # noqa: E402
from dp3batch.testing.harness import DaskCluster, Workflow  # noqa: E402
from dp3batch.testing.synthetic_ms import (  # noqa: E402
    SyntheticMSSpec,
    generate_measurement_set,
    measurement_set_size_spec,
)

RESULTS = REPO / "benchmarks" / "results"
CORES = os.cpu_count() or 1

# The chain of issue 14.
STEPS = [{"PreFlagger": {}}, {"AOFlagger": {}}, {"Averager": {"timestep": 2, "freqstep": 4}}]


def machine() -> dict[str, Any]:
    return {
        "cpus": CORES,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        # Shared machine: the load when the case started says how far to trust it.
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


# --- data ---------------------------------------------------------------------------------


def copies_of(directory: Path, spec: SyntheticMSSpec, count: int) -> list[Path]:
    """`count` MSs: one generated, the others full copies (as good for timing, much faster)."""
    directory.mkdir(parents=True, exist_ok=True)
    first = generate_measurement_set(directory / "obs_00.ms", spec)
    paths = [first]
    for index in range(1, count):
        path = directory / f"obs_{index:02d}.ms"
        shutil.copytree(first, path)
        paths.append(path)
    settle(paths)
    return paths


def settle(paths: list[Path]) -> None:
    """Write the new data to disk and read it back once, so that the first contender does
    not pay for the kernel's writeback (or a cold page cache) and the others do not."""
    os.sync()
    for path in paths:
        for file in path.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    while handle.read(1 << 24):
                        pass


def ms_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# --- contenders ---------------------------------------------------------------------------


def run_workflow(workflow: Workflow, *extra: str, timeout: float = 1800) -> tuple[float, str]:
    workflow.directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    completed = workflow.run(*extra, timeout=timeout)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{completed.output[-3000:]}")
    return elapsed, completed.output


def run_with_timeline(workflow: Workflow, *extra: str) -> tuple[float, str, list[str]]:
    """Run snakemake and note when each line of its output arrived (seconds from the
    start), for the breakdown of a run's fixed cost."""
    workflow.directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        workflow.command(*extra),
        cwd=workflow.directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    timeline, lines = [], []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.strip():
            timeline.append(f"{time.perf_counter() - started:7.2f} {line.rstrip()[:140]}")
    process.wait(timeout=1800)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{''.join(lines)[-3000:]}")
    return elapsed, "".join(lines), timeline


def central_job_seconds(output: str) -> float | None:
    """The central job's own wall time, from its closing line."""
    match = re.search(r"MS\(s\) done in ([\d.]+) s", output)
    return float(match.group(1)) if match else None


def records(output_dir: Path) -> dict[str, dict]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(output_dir.glob("*.ms/dp3_completion.json"))
    }


def dp3_commands(
    output_dir: Path, new_output_dir: Path, as_started: bool = True
) -> dict[str, list[str]]:
    """The exact DP3 command lines the workflow ran, by output name, writing elsewhere.
    `as_started`: DP3 started as the workflow started it (the native launcher in place of the
    wheel's `DP3.py`, where it is usable: dp3/native.py); else as the record names it."""
    new_output_dir.mkdir(parents=True, exist_ok=True)
    commands = {}
    for name, record in records(output_dir).items():
        arguments = [
            f"msout={new_output_dir / name}" if argument.startswith("msout=") else argument
            for argument in record["dp3_arguments"]
        ]
        executable = record["dp3_executable"]
        if as_started:
            executable = dp3_program(executable, record["dp3_version"])
        commands[name] = [executable, *arguments]
    return commands


def with_threads(command: list[str], threads: int) -> list[str]:
    return [f"numthreads={threads}" if a.startswith("numthreads=") else a for a in command]


def run_pool(
    commands: list[list[str]], slots: int, dp3_timers: list[float] | None = None
) -> tuple[float, list[float]]:
    """An ideal pool: `slots` DP3 processes at a time, no other work. Returns the makespan
    and each command's wall time; `dp3_timers`, if given, gets what DP3's own timer said of
    each (`dp3_timer_seconds`)."""
    environment = dp3_environment()

    def run(command: list[str]) -> float:
        started = time.perf_counter()
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{command} failed:\n{completed.stdout[-2000:]}")
        if dp3_timers is not None:
            dp3_timers.append(dp3_timer_seconds(completed.stdout))
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(slots) as pool:
        durations = list(pool.map(run, commands))
    return time.perf_counter() - started, durations


def dp3_timer_seconds(dp3_output: str) -> float:
    """DP3's own "Total DP3 time ... real": its run without its process start-up. Beside the
    same figure of the pool, it shows whether DP3 itself ran slower (the CPU taken by what
    runs beside it), apart from what the workflow adds around it."""
    match = re.search(r"Total DP3 time\s+([\d.]+) real", dp3_output)
    if not match:
        raise RuntimeError(f"no 'Total DP3 time' in DP3's output:\n{dp3_output[-2000:]}")
    return float(match.group(1))


def mean_dp3_timer_seconds(log_dir: Path) -> float:
    """The mean of `dp3_timer_seconds` over the MS logs of a workflow run."""
    timers = [dp3_timer_seconds(log.read_text()) for log in sorted(log_dir.glob("*.log"))]
    return round(statistics.mean(timers), 3)


class PeriodicSampler:
    """Calls `sample()` every `interval` seconds in a thread, from `with` to its end."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        raise NotImplementedError


class ThreadSampler(PeriodicSampler):
    """Samples the process table every 50 ms: DP3 processes whose command line mentions
    `marker`, their `numthreads`, and how many of their threads are running (state R)."""

    def __init__(self, marker: str, interval: float = 0.05):
        super().__init__(interval)
        self.marker = marker
        self.samples: list[tuple[int, int, int]] = []  # (processes, numthreads sum, running)

    def sample(self) -> None:
        processes = numthreads = running = 0
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if not (any("DP3" in part for part in cmdline[:2]) and self.marker in str(cmdline)):
                continue
            processes += 1
            numthreads += next(
                (int(a.split("=")[1]) for a in cmdline if a.startswith("numthreads=")), 0
            )
            running += _running_threads(process.pid)
        self.samples.append((processes, numthreads, running))

    def summary(self) -> dict[str, Any]:
        busy = [sample for sample in self.samples if sample[0]]
        return {
            "samples": len(self.samples),
            "samples_with_dp3": len(busy),
            "max_dp3_processes": max((s[0] for s in busy), default=0),
            "max_numthreads_sum": max((s[1] for s in busy), default=0),
            "max_running_dp3_threads": max((s[2] for s in busy), default=0),
            "cores": CORES,
            "ok": all(s[1] <= CORES and s[2] <= CORES for s in busy),
        }


def _running_threads(pid: int) -> int:
    count = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{task.path}/stat") as handle:
                    # "pid (comm) S ...": the state follows the last ')'.
                    if handle.read().rpartition(")")[2].split()[0] == "R":
                        count += 1
            except OSError:
                continue
    except OSError:
        pass
    return count


def external_cluster(directory: Path, workers: int = 2, threads: int = 1, **kwargs) -> DaskCluster:
    directory.mkdir(parents=True, exist_ok=True)
    cluster = DaskCluster(directory, **kwargs)
    cluster.start(workers=workers, threads=threads)
    return cluster


# --- P1 and P2 ----------------------------------------------------------------------------


def throughput_and_rerun(
    scratch: Path, reference_venv: Path | None, rounds: int = 1
) -> dict[str, dict]:
    """P1 in `rounds` rounds, each running every contender once in turn (the machines are
    shared: a contender's time moves by 5 % between runs); ratios of the medians. Then P2
    on the last round's embedded outputs."""
    inputs = copies_of(scratch / "inputs", measurement_set_size_spec(int(0.2e9)), 8)
    pattern = str(scratch / "inputs" / "*.ms")
    times: dict[str, list[float]] = {"embedded": [], "pool": [], "external": [], "reference": []}
    central: dict[str, list[float | None]] = {"embedded": [], "external": []}
    dp3_timers: dict[str, list[float]] = {"pool": [], "embedded": [], "external": []}
    reference: dict[str, Any] = {}
    for round_index in range(rounds):
        embedded = Workflow(scratch / f"embedded-{round_index}")
        embedded.config.update({"inputs": [pattern], "steps": STEPS})
        # No process-table sampling here: on 2 cores the sampler's own CPU would tip the scales.
        embedded_seconds, embedded_output = run_workflow(embedded)
        times["embedded"].append(embedded_seconds)
        central["embedded"].append(central_job_seconds(embedded_output))
        commands = dp3_commands(embedded.output_dir, scratch / "pool")
        dp3_timers["embedded"].append(mean_dp3_timer_seconds(embedded.output_dir / "logs"))
        pool_timers: list[float] = []
        times["pool"].append(run_pool(list(commands.values()), slots=2, dp3_timers=pool_timers)[0])
        dp3_timers["pool"].append(round(statistics.mean(pool_timers), 3))
        shutil.rmtree(scratch / "pool")
        # Started as docs/clusters.md recommends ("Using an existing dask cluster").
        cluster = external_cluster(scratch / "cluster", environment=quiet_cluster_environment())
        try:
            external = Workflow(scratch / "external")
            external.config.update(
                {"inputs": [pattern], "steps": STEPS, "scheduler": cluster.address}
            )
            external_seconds, external_output = run_workflow(external)
        finally:
            cluster.stop()
        dp3_timers["external"].append(mean_dp3_timer_seconds(external.output_dir / "logs"))
        shutil.rmtree(external.directory)
        shutil.rmtree(scratch / "cluster", ignore_errors=True)
        times["external"].append(external_seconds)
        central["external"].append(central_job_seconds(external_output))
        if reference_venv:
            reference = reference_pipeline(scratch, reference_venv, inputs, embedded.output_dir)
            times["reference"].append(reference["seconds"])
        if round_index < rounds - 1:
            shutil.rmtree(embedded.directory)
    pool = statistics.median(times["pool"])
    throughput = {
        "ms_count": len(inputs),
        "ms_bytes": ms_bytes(inputs[0]),
        "rounds": rounds,
        "embedded_numthreads": sorted(
            {r["numthreads"] for r in records(embedded.output_dir).values()}
        ),
        "seconds_per_round": {
            name: [round(value, 2) for value in values] for name, values in times.items() if values
        },
        "central_job_seconds_per_round": central,
        # DP3's own timer, mean per MS: how much slower DP3 itself ran beside each contender.
        "dp3_timer_seconds_per_ms_per_round": dp3_timers,
        "pool_seconds": round(pool, 2),
        "embedded_seconds": round(statistics.median(times["embedded"]), 2),
        "external_2x1_seconds": round(statistics.median(times["external"]), 2),
        "embedded_over_pool": round(statistics.median(times["embedded"]) / pool, 3),
        "external_over_pool": round(statistics.median(times["external"]) / pool, 3),
        "target": "embedded / pool <= 1.05 and external / pool <= 1.05 (medians)",
    }
    if reference_venv:
        reference["seconds"] = round(statistics.median(times["reference"]), 2)
        reference["reference_over_pool"] = round(reference["seconds"] / pool, 3)
        throughput["reference_pipeline"] = reference
    return {"throughput": throughput, "rerun": rerun(embedded, commands, scratch, rounds)}


def rerun_alone(scratch: Path, rounds: int = 1) -> dict[str, Any]:
    """P2 on its own: the 8 MSs of the throughput case, a full run, then the reruns."""
    copies_of(scratch / "inputs", measurement_set_size_spec(int(0.2e9)), 8)
    workflow = Workflow(scratch / "embedded")
    workflow.config.update({"inputs": [str(scratch / "inputs" / "*.ms")], "steps": STEPS})
    run_workflow(workflow)
    commands = dp3_commands(workflow.output_dir, scratch / "unused")
    return rerun(workflow, commands, scratch, rounds)


def rerun(
    workflow: Workflow, commands: dict[str, list[str]], scratch: Path, rounds: int = 1
) -> dict[str, Any]:
    """One output lost: the rerun against its DP3 alone (with the threads the rerun gave it),
    `rounds` times in turn; medians."""
    name = "obs_03.ms"
    reruns, alones, dry_runs = [], [], []
    for _ in range(rounds):
        shutil.rmtree(workflow.output(name.removesuffix(".ms")))
        dry_runs.append(run_workflow(workflow, "-n")[0])
        rerun_seconds, output, timeline = run_with_timeline(workflow)
        reruns.append(rerun_seconds)
        threads = records(workflow.output_dir)[name]["numthreads"]
        (scratch / "alone").mkdir(exist_ok=True)
        alone = [
            f"msout={scratch / 'alone' / name}" if argument.startswith("msout=") else argument
            for argument in with_threads(commands[name], threads)
        ]
        alones.append(run_pool([alone], slots=1)[0])
        shutil.rmtree(scratch / "alone")
    noop_seconds, noop_output = run_workflow(workflow)
    assert "Nothing to be done" in noop_output, noop_output[-2000:]
    rerun_seconds, dp3_seconds = statistics.median(reruns), statistics.median(alones)
    return {
        "ms": name,
        "numthreads": threads,
        "rounds": rounds,
        "rerun_seconds_per_round": [round(value, 2) for value in reruns],
        "dp3_alone_seconds_per_round": [round(value, 2) for value in alones],
        "dp3_alone_seconds": round(dp3_seconds, 2),
        "rerun_seconds": round(rerun_seconds, 2),
        "rerun_minus_dp3_seconds": round(rerun_seconds - dp3_seconds, 2),
        "breakdown (last round)": rerun_breakdown(
            workflow, output, reruns[-1], statistics.median(dry_runs)
        ),
        "timeline (last round)": timeline,
        "noop_rerun_seconds": round(noop_seconds, 2),
        "target": "rerun <= DP3 alone + 1.5 s (medians); no-op <= 1 s",
    }


def rerun_breakdown(
    workflow: Workflow, output: str, total: float, dry_seconds: float
) -> dict[str, Any]:
    """Where a one-MS rerun's time goes, from the batch log's timestamps and the record."""
    record = records(workflow.output_dir)["obs_03.ms"]
    central = central_job_seconds(output)
    breakdown = {
        "snakemake_dry_run_seconds (start, plan, DAG)": round(dry_seconds, 2),
        "central_job_seconds": central,
        "task_seconds (record: started to finished)": record.get("duration_seconds"),
        "snakemake_outside_central_job_seconds": round(total - central, 2) if central else None,
    }
    return breakdown


def reference_pipeline(
    scratch: Path, venv: Path, inputs: list[Path], workflow_output: Path, keep: bool = False
) -> dict[str, Any]:
    """SKA's batch pre-processing pipeline on a 2 x 1 cluster of its own dask version. Its
    workers call `DP3` from PATH: a wrapper runs the wheel's DP3 with the environment it
    needs, and the config names the AOFlagger strategy the workflow chose (same commands)."""
    dp3 = find_dp3_executable(None)
    environment = dp3_environment()
    bin_dir = scratch / "reference_bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "DP3"
    wrapper.write_text(
        "#!/bin/sh\nexec env OPENBLAS_NUM_THREADS=1 "
        f'CASARCFILES={environment.get("CASARCFILES", "")} {dp3} "$@"\n'
    )
    wrapper.chmod(0o755)
    strategy = next(
        (
            a.split("=", 1)[1]
            for a in next(iter(records(workflow_output).values()))["dp3_arguments"]
            if a.startswith("aoflagger.strategy=")
        ),
        None,
    )
    steps = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": strategy} if strategy else None},
        {"Averager": {"timestep": 2, "freqstep": 4}},
    ]
    config = scratch / "reference.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"steps": steps}))
    output_dir = scratch / "reference_out"
    output_dir.mkdir(exist_ok=True)
    path = f"{bin_dir}:{venv / 'bin'}:{os.environ['PATH']}"
    cluster = external_cluster(
        scratch / "reference_cluster",
        dask_executable=str(venv / "bin" / "dask"),
        environment={"PATH": path, "PYTHONPATH": ""},
    )
    try:
        started = time.perf_counter()
        completed = subprocess.run(
            [
                str(venv / "bin" / "ska-sdp-batch-preprocess"),
                "--config",
                str(config),
                "--output-dir",
                str(output_dir),
                "--dask-scheduler",
                cluster.address,
                *map(str, inputs),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": path, "PYTHONPATH": ""},
            timeout=1800,
        )
        seconds = time.perf_counter() - started
    finally:
        cluster.stop()
        shutil.rmtree(scratch / "reference_cluster", ignore_errors=True)
    # Its dask mode exits 0 even when DP3 failed: count the outputs it really wrote.
    written = [p for p in output_dir.glob("*.ms") if (p / "table.dat").is_file()]
    if not keep:  # kept: the caller removes it once its other contenders have run
        shutil.rmtree(output_dir)
    return {
        "seconds": round(seconds, 2),
        "exit_code": completed.returncode,
        "outputs_written": len(written),
        "stderr_tail": completed.stderr[-1500:] if len(written) != len(inputs) else "",
    }


# --- P5 -----------------------------------------------------------------------------------


def uneven(scratch: Path, count: int = 12, smallest: float = 25e6, spread: float = 8) -> dict:
    directory = scratch / "uneven_inputs"
    directory.mkdir(parents=True)
    inputs = []
    for index in range(count):
        size = smallest * (1 + (spread - 1) * index / (count - 1))  # listed: largest last
        spec = measurement_set_size_spec(int(size), seed=index)
        inputs.append(generate_measurement_set(directory / f"obs_{index:02d}.ms", spec))
    settle(inputs)
    workflow = Workflow(scratch / "uneven_wf")
    workflow.config.update({"inputs": [str(directory / "*.ms")], "steps": STEPS})
    workflow_seconds, output = run_workflow(workflow)
    made = records(workflow.output_dir)
    commands = dp3_commands(workflow.output_dir, scratch / "uneven_pool")
    by_size = sorted(commands, key=lambda name: -ms_bytes(directory / name))
    pool_seconds, durations = run_pool([commands[name] for name in by_size], slots=2)
    shutil.rmtree(scratch / "uneven_pool")
    dp3_seconds = dict(zip(by_size, durations, strict=True))
    lower_bound = max(sum(durations) / 2, max(durations))
    shutil.rmtree(workflow.output_dir)
    submit_all = submit_all_at_once(scratch, workflow)
    span = dp3_span(made)
    return {
        "ms_count": count,
        "ms_bytes": {path.name: ms_bytes(path) for path in inputs},
        "dp3_seconds_in_2_slot_pool": {k: round(v, 2) for k, v in dp3_seconds.items()},
        "lower_bound_seconds": round(lower_bound, 2),
        "workflow_seconds": round(workflow_seconds, 2),
        "workflow_central_job_seconds": central_job_seconds(output),
        "workflow_dp3_span_seconds": round(span, 2),
        "workflow_over_lower_bound": round(workflow_seconds / lower_bound, 3),
        "workflow_dp3_span_over_lower_bound": round(span / lower_bound, 3),
        "largest_first_pool_seconds": round(pool_seconds, 2),
        "submit_all_at_once_listed_order": submit_all,
        "submit_all_over_lower_bound": round(submit_all["seconds"] / lower_bound, 3),
        "target": "workflow <= 1.05 x max(total DP3 / 2, longest DP3)",
    }


def dp3_span(made: dict[str, dict]) -> float:
    """From the first task's start to the last task's end (the batch's DP3 phase)."""
    import datetime

    def parse(text: str) -> float:
        return datetime.datetime.fromisoformat(text).timestamp()

    starts = [parse(record["started"]) for record in made.values()]
    ends = [parse(record["finished"]) for record in made.values()]
    return max(ends) - min(starts)


def submit_all_at_once(scratch: Path, workflow: Workflow) -> dict[str, Any]:
    """The same `process_measurement_set` tasks the workflow builds, all submitted at once
    in the listed order with `resources={"process": 1}` on a 2 x 1 cluster."""
    import yaml
    from distributed import Client, as_completed
    from dp3batch.books.status import Status
    from dp3batch.dask_stage.central_job import task_for
    from dp3batch.dask_stage.execution import process_measurement_set
    from dp3batch.planning.plan import batch_specification, make_plan

    config = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), **workflow.config}
    plan = make_plan(config, workflow.directory)
    batch = batch_specification(plan, config, "submit-all")
    tasks = [task_for(batch, ms) for ms in batch.measurement_sets]
    cluster = external_cluster(
        scratch / "uneven_cluster", environment={"PYTHONPATH": str(REPO / "scripts")}
    )
    try:
        with Client(cluster.address, timeout="20s") as client:
            started = time.perf_counter()
            futures = [
                client.submit(
                    process_measurement_set,
                    task,
                    resources={"process": 1},
                    key=f"dp3-{task.name}",
                    pure=False,
                )
                for task in tasks
            ]
            order = []
            for future in as_completed(futures):
                result = future.result()
                if result.status != Status.DONE:
                    raise RuntimeError(f"{result.name}: {result.error}")
                order.append(result.name)
            seconds = time.perf_counter() - started
    finally:
        cluster.stop()
    return {"seconds": round(seconds, 2), "finish_order": order}


# --- P3 -----------------------------------------------------------------------------------


def bookkeeping(scratch: Path, counts: tuple[int, ...] = (1000, 10000)) -> dict:
    """Tiny MSs with up-to-date outputs, made by linking the files of one real input and one
    real output (the workflow's copy of it), each with its own completion record: a copy's
    files share their size and modification time, so the record's fingerprints hold."""
    template = Workflow(scratch / "template")
    tiny = SyntheticMSSpec(n_antennas=2, n_times=2, n_channels=2, rfi_channels=(), rfi_times=())
    generate_measurement_set(template.directory / "inputs" / "obs_00000.ms", tiny)
    template.config["steps"] = []
    run_workflow(template)
    directory = scratch / "bookkeeping"
    started = time.perf_counter()
    link_copies(template, directory, max(counts))
    results: dict[str, Any] = {"build_seconds": round(time.perf_counter() - started, 1)}
    workflow = Workflow(directory)
    for count in counts:
        # obs_00000 ... : a pattern with as many leading zeros selects the first `count`.
        digits = 5 - len(str(count - 1))  # names are obs_00000 ...
        workflow.config.update({"inputs": [f"inputs/obs_{'0' * digits}*.ms"], "steps": []})
        # Untimed: the first walk over thousands of new MSs fills the kernel's inode and
        # directory caches (measured 7.1 s where the next dry runs took 5.1-5.3 s).
        run_workflow(workflow, "-n")
        dry_noop, _ = run_workflow(workflow, "-n")
        noop, noop_output = run_workflow(workflow, timeout=count + 600)
        assert "Nothing to be done" in noop_output, noop_output[-2000:]
        aside = directory / "results_aside"
        (directory / "results").rename(aside)
        try:
            dry_pending, dry_output = run_workflow(workflow, "-n")
            assert f"{count} of {count} MS(s) to process" in dry_output, dry_output[-2000:]
        finally:
            shutil.rmtree(directory / "results", ignore_errors=True)
            aside.rename(directory / "results")
        results[str(count)] = {
            "dry_run_noop_seconds": round(dry_noop, 2),
            "noop_rerun_seconds": round(noop, 2),
            "dry_run_all_pending_seconds": round(dry_pending, 2),
        }
    results["target"] = "at 10,000: no-op rerun <= 3 s, dry run all pending <= 5 s"
    return results


def after_a_batch(scratch: Path, count: int) -> dict[str, Any]:
    """`count` up-to-date small MSs with the many case's chain (each record holds its flag
    statistics, as a real run's does), made by linking: the batch after 1 % of the outputs
    are deleted, the no-op rerun right after it (its summary and record checks are the
    batch's), and a no-op rerun after that; wall time and peak memory of each."""
    template = Workflow(scratch / "chain_template")
    generate_measurement_set(template.directory / "inputs" / "obs_00000.ms", SMALL)
    template.config["steps"] = STEPS
    run_workflow(template)
    directory = scratch / "after_a_batch"
    link_copies(template, directory, count)
    workflow = Workflow(directory)
    workflow.config.update({"inputs": [str(directory / "inputs" / "*.ms")], "steps": STEPS})
    run_workflow(workflow, "-n")  # untimed: fills the kernel's inode and directory caches
    run_workflow(workflow)  # untimed: the record checks kept, as after any run
    deleted = sorted(workflow.output_dir.glob("*.ms"))[::100]  # 1 %
    for path in deleted:
        shutil.rmtree(path)
    results: dict[str, Any] = {"ms_count": count, "deleted": len(deleted)}
    for name in ("batch", "noop_right_after", "noop_after_that"):
        with MemorySampler(str(directory), interval=0.2) as memory:
            seconds, _ = run_workflow(workflow, timeout=count + 600)
        results[name] = {"seconds": round(seconds, 2), **memory.summary()}
    results["target"] = "no-op rerun <= 3 s; memory flat in the MS count"
    return results


def link_copies(template: Workflow, directory: Path, count: int) -> None:
    source_in = template.directory / "inputs" / "obs_00000.ms"
    source_out = template.output("obs_00000")
    # The last batch's files (marker, logs, report), as after a real run.
    for kept in ("logs", "report"):
        if (template.output_dir / kept).is_dir():
            shutil.copytree(template.output_dir / kept, directory / "results" / kept)
    record_text = (source_out / "dp3_completion.json").read_text()
    for index in range(count):
        name = f"obs_{index:05d}"
        new_in = directory / "inputs" / f"{name}.ms"
        new_out = directory / "results" / f"{name}.ms"
        link_tree(source_in, new_in)
        link_tree(source_out, new_out, skip={"dp3_completion.json"})
        text = record_text.replace(str(source_out), str(new_out)).replace(
            str(source_in), str(new_in)
        )
        text = text.replace('"obs_00000"', f'"{name}"')
        (new_out / "dp3_completion.json").write_text(text)


def link_tree(source: Path, target: Path, skip: frozenset[str] | set[str] = frozenset()) -> None:
    for root, _, files in os.walk(source):
        relative = os.path.relpath(root, source)
        destination = target / relative
        destination.mkdir(parents=True, exist_ok=True)
        for file in files:
            if relative == "." and file in skip:
                continue
            os.link(os.path.join(root, file), destination / file)


# --- P4 -----------------------------------------------------------------------------------


def threads(scratch: Path, count: int = 6) -> dict:
    copies_of(scratch / "threads_inputs", measurement_set_size_spec(int(60e6)), count)
    workflow = Workflow(scratch / "threads_wf")
    workflow.config.update({"inputs": [str(scratch / "threads_inputs" / "*.ms")], "steps": STEPS})
    with ThreadSampler(str(scratch)) as sampler:
        seconds, _ = run_workflow(workflow)
    # The same DP3 commands in a 2-slot pool: what DP3 itself does with `numthreads`.
    commands = dp3_commands(workflow.output_dir, scratch / "threads_pool")
    with ThreadSampler(str(scratch)) as pool_sampler:
        run_pool(list(commands.values()), slots=2)
    return {
        "seconds": round(seconds, 2),
        "workflow": sampler.summary(),
        "pool_of_the_same_commands": pool_sampler.summary(),
    }


# --- many small MSs (issue 30) ------------------------------------------------------------

# DP3 about 0.25-0.5 s on each: what an operator of thousands of MSs pays per MS shows.
SMALL = SyntheticMSSpec(n_antennas=8, n_times=20, n_channels=16)


class MemorySampler(PeriodicSampler):
    """Peak resident memory of the Snakemake process and of the central job (the
    `process_batch.py` script), sampled every `interval` seconds. The process table is
    scanned only while one of them is not known (5-6 ms of CPU a scan here, which the
    contender it watches would pay); a known one's memory is read alone."""

    def __init__(self, marker: str, interval: float = 0.5):
        super().__init__(interval)
        self.marker = marker
        self.peaks = {"snakemake": 0, "central_job": 0}
        self.known: dict[str, psutil.Process] = {}

    def sample(self) -> None:
        for kind, process in list(self.known.items()):
            try:
                self.peaks[kind] = max(self.peaks[kind], process.memory_info().rss)
            except psutil.Error:  # ended: a later one (the next run's) is looked for
                del self.known[kind]
        if len(self.known) == len(self.peaks):
            return
        for process in psutil.process_iter(["cmdline", "memory_info"]):
            cmdline = " ".join(process.info.get("cmdline") or [])
            memory = process.info.get("memory_info")
            if self.marker not in cmdline or memory is None:
                continue
            if "process_batch.py" in cmdline:
                kind = "central_job"
            elif "bin/snakemake" in cmdline:
                kind = "snakemake"
            else:
                continue
            self.known[kind] = process
            self.peaks[kind] = max(self.peaks[kind], memory.rss)

    def summary(self) -> dict[str, float]:
        return {f"{kind}_peak_mib": round(rss / 2**20, 1) for kind, rss in self.peaks.items()}


def dask_report_rendered(output_dir: Path) -> bool:
    """Whether the first batch's dask performance report was rendered (not the page that
    stands for one not made)."""
    reports = sorted(output_dir.glob("report/*/dask-report.html"))
    return bool(reports) and "No dask performance report" not in reports[0].read_text()[:500]


def children_cpu_seconds() -> float:
    """CPU (user + system) of every child process this one has waited for, and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def many(
    scratch: Path, count: int, reference_venv: Path | None, pool_sample: int = 0
) -> dict[str, Any]:
    """`count` small MSs (hard links of one) in one run: the workflow on its embedded
    default against an ideal 2-slot pool of the DP3 commands it ran (and the reference
    pipeline, given its venv), in wall time and in CPU beside DP3 per MS; the peak memory of
    Snakemake and the central job; the no-op rerun; the rerun after 1 % are deleted.
    `pool_sample` > 0: the pool runs every k-th command only (k = count // pool_sample) and
    its time and CPU are scaled by k (for 10,000 MSs, where a whole pool takes as long as
    the workflow again)."""
    template = scratch / "template" / "obs_00000.ms"
    generate_measurement_set(template, SMALL)
    inputs = []
    for index in range(count):
        path = scratch / "inputs" / f"obs_{index:05d}.ms"
        link_tree(template, path, skip={"table.lock"})
        inputs.append(path)
    settle([template])
    workflow = Workflow(scratch / "workflow")
    workflow.config.update({"inputs": [str(scratch / "inputs" / "*.ms")], "steps": STEPS})
    cpu = children_cpu_seconds()
    with MemorySampler(str(workflow.directory)) as memory:
        seconds, output = run_workflow(workflow, timeout=count * 5 + 600)
    workflow_cpu = children_cpu_seconds() - cpu
    # DP3's own CPU in the workflow, as each task's `wait4` counted it (its records): the
    # rest of the workflow's CPU is exactly what it spent outside DP3.
    dp3_cpu = sum(
        record.get("dp3_cpu_seconds") or 0 for record in records(workflow.output_dir).values()
    )
    # The no-op rerun right after the batch, as an operator checks it, and again after the
    # pools (thousands of DP3 outputs written and removed, which may push the outputs'
    # inodes out of the kernel's caches: that rerun then measures the disk as well).
    noop, noop_output = run_workflow(workflow, timeout=count + 600)
    assert "are complete and up to date" in noop_output, noop_output[-2000:]
    # dask renders its performance report only for a batch of at least
    # dask_report_min_seconds: the central job's peak memory includes it or not.
    rendered = dask_report_rendered(workflow.output_dir)
    commands = dp3_commands(workflow.output_dir, scratch / "pool_started")
    every = max(1, count // pool_sample) if pool_sample else 1
    names = sorted(commands)[::every]
    pools: dict[str, tuple[float, float]] = {}  # makespan and CPU, scaled to every command
    # The pool of the commands as the workflow started them, and of the wheel's `DP3.py`
    # (the same DP3, started through Python and numpy: the ideal pool). Each writes
    # a directory of its own, and nothing is deleted until every contender has run: ext4
    # skips inodes freed in the last minutes when it allocates new ones, and a small MS's
    # DP3 then spent 30-40 ms more CPU in the kernel (50 -> 80-93 ms a run, measured right
    # after removing 200 outputs), which would weigh on whichever contender ran next.
    python_commands = dp3_commands(workflow.output_dir, scratch / "pool_dp3_py", as_started=False)
    for label, chosen in (("started", commands), ("dp3_py", python_commands)):
        (scratch / f"pool_{label}").mkdir(exist_ok=True)
        cpu = children_cpu_seconds()
        pool, _ = run_pool([chosen[name] for name in names], slots=2)
        scale = len(commands) / len(names)
        pools[label] = (pool * scale, (children_cpu_seconds() - cpu) * scale)
    pool, pool_cpu = pools["started"]
    reference = (
        reference_pipeline(scratch, reference_venv, inputs, workflow.output_dir, keep=True)
        if reference_venv
        else None
    )
    for label in pools:
        shutil.rmtree(scratch / f"pool_{label}")
    shutil.rmtree(scratch / "reference_out", ignore_errors=True)
    noop_later, noop_output = run_workflow(workflow, timeout=count + 600)
    assert "are complete and up to date" in noop_output, noop_output[-2000:]
    deleted = sorted(workflow.output_dir.glob("*.ms"))[:: max(1, 100)]  # 1 %
    for path in deleted:
        shutil.rmtree(path)
    partial, _ = run_workflow(workflow, timeout=count + 600)
    results: dict[str, Any] = {
        "ms_count": count,
        "pool_commands_run": len(names),
        "dp3_started_as": commands[names[0]][0],
        "ms_bytes": ms_bytes(template),
        "pool_seconds": round(pool, 2),
        "workflow_seconds": round(seconds, 2),
        "workflow_over_pool": round(seconds / pool, 3),
        "dp3_py_pool_seconds": round(pools["dp3_py"][0], 2),
        "workflow_over_dp3_py_pool": round(seconds / pools["dp3_py"][0], 3),
        "central_job_seconds": central_job_seconds(output),
        # Snakemake, the central job, the cluster and every task, beside DP3's own CPU:
        # outside DP3 exactly (DP3's CPU as the tasks counted it), and against the pool's
        # DP3 (which also counts what DP3 itself spends more beside the workflow's work).
        "cpu_outside_dp3_ms_per_ms": round(1000 * (workflow_cpu - dp3_cpu) / count, 1),
        "dp3_cpu_in_workflow_ms_per_ms": round(1000 * dp3_cpu / count, 1),
        "cpu_beside_dp3_ms_per_ms": round(1000 * (workflow_cpu - pool_cpu) / count, 1),
        "dp3_cpu_ms_per_ms": round(1000 * pool_cpu / count, 1),
        "dp3_py_cpu_ms_per_ms": round(1000 * pools["dp3_py"][1] / count, 1),
        **memory.summary(),
        "dask_report_rendered": rendered,
        "noop_rerun_seconds": round(noop, 2),
        "noop_rerun_after_the_pools_seconds": round(noop_later, 2),
        "rerun_after_1pct_deleted": {"deleted": len(deleted), "seconds": round(partial, 2)},
        "targets": "workflow / pool <= 1.10 (400 MSs); <= 10 ms CPU per MS outside DP3 "
        "(cpu_outside_dp3_ms_per_ms); memory flat in the MS count; no-op rerun <= 3 s",
    }
    if reference is not None:
        reference["reference_over_pool"] = round(reference["seconds"] / pool, 3)
        reference["reference_over_dp3_py_pool"] = round(
            reference["seconds"] / pools["dp3_py"][0], 3
        )
        results["reference_pipeline"] = reference
    return results


# --- main ---------------------------------------------------------------------------------

CASES = ("throughput", "uneven", "bookkeeping", "threads", "many")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["all", *CASES, "rerun"])
    parser.add_argument("--scratch", type=Path, default=None, help="where the data goes")
    parser.add_argument(
        "--reference-venv",
        type=Path,
        default=None,
        help="a venv with ska-sdp-batch-preprocess installed: run it beside the workflow",
    )
    parser.add_argument("--counts", default="1000,10000", help="MS counts of the bookkeeping case")
    parser.add_argument("--many", type=int, default=400, help="MS count of the many case")
    parser.add_argument(
        "--pool-sample",
        type=int,
        default=0,
        help="many: run the ideal pool on about this many of the commands, scaled (0: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="throughput and rerun: rounds of every contender, in turn (medians reported)",
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    scratch_root = Path(tempfile.mkdtemp(prefix="dp3batch-bench-", dir=args.scratch))
    cases = CASES if args.case == "all" else [args.case]
    try:
        for case in cases:
            started = time.perf_counter()
            scratch = scratch_root / case
            scratch.mkdir()
            host = machine()
            if case == "throughput":
                results = throughput_and_rerun(scratch, args.reference_venv, args.rounds)
            elif case == "rerun":
                results = {"rerun": rerun_alone(scratch, args.rounds)}
            elif case == "uneven":
                results = {"uneven": uneven(scratch)}
            elif case == "bookkeeping":
                counts = tuple(int(value) for value in args.counts.split(","))
                results = {"bookkeeping": bookkeeping(scratch, counts)}
                results["after-a-batch"] = after_a_batch(scratch, max(counts))
            elif case == "many":
                results = {
                    f"many-{args.many}": many(
                        scratch, args.many, args.reference_venv, args.pool_sample
                    )
                }
            else:
                results = {"threads": threads(scratch)}
            for name, result in results.items():
                result = {
                    "machine": host,
                    "case_seconds": round(time.perf_counter() - started, 1),
                    **result,
                }
                (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
                print(json.dumps(result, indent=2), flush=True)
        # Each case's data stays until the last case has run: removing thousands of files
        # makes the file creations that follow it slower (see `many`).
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
