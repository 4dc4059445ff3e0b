"""Benchmarks, measured side by side in one run (the machines are shared and noisy: compare
ratios, not absolute times).

    python benchmarks/benchmark.py all            # every case (about 10 minutes on 2 cores)
    python benchmarks/benchmark.py throughput     # or one case: throughput, resume, scale, threads

Results are printed and written to benchmarks/results/<case>.json.

- throughput: the workflow on 8 MSs of ~0.25 GB (embedded cluster, 2 workers x 1 thread)
  against an ideal 2-slot process pool running exactly the same DP3 commands, and a
  sequential DP3 loop (one DP3 at a time with 2 threads). Target: workflow / pool <= 1.05.
- resume: the full batch of 8 against the rerun after 7 of 8 completed (one failed, then
  fixed). Target: rerun <= full / 8 + 5% of full.
- scale: 10, 100 and 1000 tiny MSs: full run, no-op rerun and dry run; the Snakemake time
  before and after the central job. Targets: no-op(1000) <= 1.5 x no-op(10); finishing
  1000 at most ~2 s more than 10.
- threads: workers of 2 threads each on an external cluster; the process table is sampled
  during the run: DP3 processes at once <= workers, each with numthreads = 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from dp3batch.dp3 import dp3_environment  # noqa: E402
from dp3batch.synthetic_ms import (  # noqa: E402
    SyntheticMSSpec,
    generate_measurement_set,
    measurement_set_size_spec,
)

BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DASK = str(BIN / "dask")
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


class Workdir:
    """A working directory with a config, where the real `snakemake` command runs."""

    def __init__(self, path: Path, config: dict):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = {"output_dir": "results", **config}

    def snakemake(self, *extra: str, check: bool = True) -> tuple[float, str]:
        (self.path / "config.yaml").write_text(yaml.safe_dump(self.config))
        command = [
            SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "--cores",
            "1",
            "--configfile",
            str(self.path / "config.yaml"),
            *extra,
        ]
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=self.path, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        output = completed.stdout + completed.stderr
        if check and completed.returncode != 0:
            raise RuntimeError(f"snakemake failed:\n{output[-3000:]}")
        return elapsed, output


def central_job_seconds(output: str) -> float:
    """The central job's own wall time, from its closing line."""
    match = re.search(r"MS\(s\) done in ([\d.]+) s", output)
    return float(match.group(1)) if match else float("nan")


def make_inputs(directory: Path, count: int, spec: SyntheticMSSpec) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    first = generate_measurement_set(directory / "obs_0000.ms", spec)
    paths = [first]
    for index in range(1, count):
        # Copies are much faster than new MSs and just as good for timing.
        path = directory / f"obs_{index:04d}.ms"
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


def dp3_commands(workdir: Workdir, output_dir: Path) -> list[list[str]]:
    """The exact DP3 command lines the workflow ran, with msout moved to `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    commands = []
    for record_path in sorted((workdir.path / "results").glob("*.ms/dp3_completion.json")):
        record = json.loads(record_path.read_text())
        arguments = [
            f"msout={output_dir / Path(record['output']).name}" if a.startswith("msout=") else a
            for a in record["dp3_arguments"]
        ]
        commands.append([record["dp3_executable"], *arguments])
    return commands


def run_pool(commands: list[list[str]], slots: int) -> float:
    environment = dp3_environment()

    def run(command):
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{command} failed:\n{completed.stdout[-2000:]}")

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(slots) as pool:
        list(pool.map(run, commands))
    return time.perf_counter() - started


def with_threads(commands: list[list[str]], threads: int) -> list[list[str]]:
    return [
        [f"numthreads={threads}" if a.startswith("numthreads=") else a for a in command]
        for command in commands
    ]


def throughput_and_resume(scratch: Path, count: int = 8, size: float = 0.25e9) -> dict:
    spec = measurement_set_size_spec(int(size))
    inputs = make_inputs(scratch / "inputs", count, spec)
    cluster = {"n_workers": 2, "threads_per_worker": 1}
    workflow = Workdir(
        scratch / "wf", {"inputs": [str(scratch / "inputs" / "*.ms")], "local_cluster": cluster}
    )
    full, output = workflow.snakemake()
    commands = dp3_commands(workflow, scratch / "pool")
    pool = run_pool(commands, slots=2)
    shutil.rmtree(scratch / "pool")
    (scratch / "pool").mkdir()
    sequential = run_pool(with_threads(commands, 2), slots=1)
    shutil.rmtree(scratch / "pool")
    throughput = {
        "ms_count": count,
        "ms_bytes": sum(p.stat().st_size for p in inputs[0].rglob("*") if p.is_file()),
        "workflow_seconds": round(full, 2),
        "central_job_seconds": central_job_seconds(output),
        "pool_seconds": round(pool, 2),
        "sequential_seconds": round(sequential, 2),
        "workflow_over_pool": round(full / pool, 3),
        "workflow_over_sequential": round(full / sequential, 3),
        "target": "workflow / pool <= 1.05",
    }
    # Resume: one MS fails (its input is replaced by a broken copy), then is fixed.
    shutil.rmtree(workflow.path / "results")
    broken = inputs[3]
    backup = scratch / "backup.ms"
    shutil.move(broken, backup)
    shutil.copytree(backup, broken)
    biggest = max((p for p in broken.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as handle:
        handle.truncate(biggest.stat().st_size // 10)
    failed, _ = workflow.snakemake(check=False)
    shutil.rmtree(broken)
    shutil.move(backup, broken)
    rerun, _ = workflow.snakemake()
    resume = {
        "full_seconds": round(full, 2),
        "first_run_with_one_failure_seconds": round(failed, 2),
        "rerun_seconds": round(rerun, 2),
        "rerun_over_full": round(rerun / full, 3),
        "target_rerun_over_full": round(1 / count + 0.05, 3),
        "target": "rerun <= full / 8 + 5% of full",
    }
    return {"throughput": throughput, "resume": resume}


def scale(scratch: Path, counts=(10, 100, 1000)) -> dict:
    tiny = SyntheticMSSpec(n_antennas=2, n_times=2, n_channels=2, rfi_channels=(), rfi_times=())
    results = {}
    for count in counts:
        directory = scratch / f"scale_{count}"
        make_inputs(directory / "inputs", count, tiny)
        # A copy (no steps) keeps DP3's part small, so Snakemake's part shows.
        workflow = Workdir(
            directory,
            {
                "inputs": ["inputs/*.ms"],
                "steps": [],
                "local_cluster": {"n_workers": 2, "threads_per_worker": 1},
            },
        )
        dry_first, _ = workflow.snakemake("-n")
        full, output = workflow.snakemake()
        noop, noop_output = workflow.snakemake()
        assert "Nothing to be done" in noop_output, noop_output[-2000:]
        dry_noop, _ = workflow.snakemake("-n")
        job = central_job_seconds(output)
        results[count] = {
            "dry_run_all_pending_seconds": round(dry_first, 2),
            "full_run_seconds": round(full, 2),
            "central_job_seconds": job,
            "snakemake_outside_central_job_seconds": round(full - job, 2),
            "noop_rerun_seconds": round(noop, 2),
            "dry_run_noop_seconds": round(dry_noop, 2),
        }
        shutil.rmtree(directory)
    low, high = results[counts[0]], results[counts[-1]]
    results["noop_ratio_1000_over_10"] = round(
        high["noop_rerun_seconds"] / low["noop_rerun_seconds"], 3
    )
    results["extra_outside_central_job_1000_minus_10_seconds"] = round(
        high["snakemake_outside_central_job_seconds"]
        - low["snakemake_outside_central_job_seconds"],
        2,
    )
    results["targets"] = "noop ratio <= 1.5; extra outside the central job <= ~2 s"
    return results


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def threads(scratch: Path, workers: int = 2, threads_per_worker: int = 2, count: int = 6) -> dict:
    spec = measurement_set_size_spec(int(60e6))
    make_inputs(scratch / "threads_inputs", count, spec)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    processes = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                f"127.0.0.1:{_free_port()}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        time.sleep(2)
        processes.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    address,
                    "--nworkers",
                    str(workers),
                    "--nthreads",
                    str(threads_per_worker),
                    "--resources",
                    "process=1",
                    "--no-dashboard",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        from distributed import Client

        with Client(address, timeout="20s") as client:
            client.wait_for_workers(workers, timeout=60)
        workflow = Workdir(
            scratch / "threads_wf",
            {"inputs": [str(scratch / "threads_inputs" / "*.ms")], "scheduler": address},
        )
        samples: list[list[str]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                running = []
                for process in psutil.process_iter(["cmdline"]):
                    cmdline = process.info.get("cmdline") or []
                    if any("DP3" in part for part in cmdline[:2]) and any(
                        str(scratch) in part for part in cmdline
                    ):
                        running.append(
                            next(
                                (a for a in cmdline if a.startswith("numthreads=")), "numthreads=?"
                            )
                        )
                samples.append(running)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            elapsed, _ = workflow.snakemake()
        finally:
            stop.set()
            sampler.join()
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    most = max((len(sample) for sample in samples), default=0)
    thread_settings = sorted({setting for sample in samples for setting in sample})
    return {
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "samples": len(samples),
        "max_dp3_at_once": most,
        "numthreads_seen": thread_settings,
        "seconds": round(elapsed, 2),
        "ok": most <= workers and thread_settings == [f"numthreads={threads_per_worker}"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["all", "throughput", "resume", "scale", "threads"])
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="where to put the generated data (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch_root = Path(tempfile.mkdtemp(prefix="dp3batch-bench-", dir=args.scratch))
    cases = ["throughput", "scale", "threads"] if args.case == "all" else [args.case]
    try:
        for case in cases:
            started = time.perf_counter()
            if case in ("throughput", "resume"):
                result = throughput_and_resume(scratch_root / "throughput")
            elif case == "scale":
                result = scale(scratch_root)
            else:
                result = threads(scratch_root)
            result = {
                "machine": machine(),
                "case_seconds": round(time.perf_counter() - started, 1),
                **result,
            }
            name = "throughput_resume" if case in ("throughput", "resume") else case
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2), flush=True)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
