"""The test harness shared by tests/conftest.py and benchmarks/benchmark.py: generated MSs,
the real `snakemake` command in a working directory of its own, a real external dask cluster
(`dask scheduler` and `dask worker` processes), and waits with deadlines.

Importable without pytest, so the benchmarks measure the workflow exactly as the tests run it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from dp3batch.books.commit import LockTimeout, flock_with_deadline
from dp3batch.books.layout import OutputLayout

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DASK = str(BIN / "dask")

# Small enough for DP3 to take well under a second, large enough for AOFlagger to work.
SMALL_MS = {"n_antennas": 6, "n_times": 20, "n_channels": 16}


def make_ms(path: Path, seed: int = 0, **fields) -> Path:
    from dp3batch.testing.synthetic_ms import generate_measurement_set, spec_with_default_rfi

    spec = spec_with_default_rfi(**{**SMALL_MS, **fields, "seed": seed})
    return generate_measurement_set(path, spec)


def make_inputs(directory: Path, count: int, prefix: str = "obs", **fields) -> list[Path]:
    return [
        make_ms(directory / f"{prefix}_{index}.ms", seed=index, **fields) for index in range(count)
    ]


def damage_ms(ms_path: Path) -> None:
    """Truncate the biggest data file: casacore still opens the MS, DP3 fails reading it."""
    biggest = max(
        (path for path in ms_path.iterdir() if path.is_file()), key=lambda path: path.stat().st_size
    )
    with open(biggest, "r+b") as handle:
        handle.truncate(biggest.stat().st_size // 10)


def snakemake_command(config_file: Path | str, *extra: str) -> list[str]:
    """The real `snakemake` command on this workflow with one config file, as a user types it."""
    return [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        "1",
        "--configfile",
        str(config_file),
        *extra,
    ]


def run_snakemake(
    config_file: Path | str, cwd: Path | str, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real `snakemake` command with a config file written as a user wrote it, run in
    `cwd`; its stdout and stderr together as `.output`."""
    completed = subprocess.run(
        snakemake_command(config_file, *extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    completed.output = completed.stdout + completed.stderr
    return completed


class Workflow:
    """A working directory with its own config, and the real `snakemake` command run in it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.config: dict = {"inputs": ["inputs/*.ms"], "output_dir": "results"}

    @property
    def output_dir(self) -> Path:
        return self.directory / self.config["output_dir"]

    def output(self, name: str) -> Path:
        return self.output_dir / f"{name}.ms"

    def record(self, name: str) -> dict | None:
        path = self.output(name) / "dp3_completion.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def command(self, *extra: str) -> list[str]:
        config_file = self.directory / "test_config.yaml"
        config_file.write_text(yaml.safe_dump(self.config))
        return snakemake_command(config_file, *extra)

    def run(
        self, *extra: str, timeout: float = 300, environment: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """The command, to its end; `environment`: variables added to this process's (an
        LD_PRELOAD library that inflicts a fault on every process of the run, say)."""
        completed = subprocess.run(
            self.command(*extra),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if environment is None else {**os.environ, **environment},
        )
        completed.output = completed.stdout + completed.stderr
        return completed

    def start(self, *extra: str) -> subprocess.Popen:
        """Start snakemake in its own process group (so a test can signal the group)."""
        log = open(self.directory / "snakemake.out", "w")
        return subprocess.Popen(
            self.command(*extra),
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _with_this_checkout(python_path: str | None) -> str:
    return os.pathsep.join(filter(None, [str(REPO / "scripts"), python_path]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dp3_processes(marker: str) -> list[psutil.Process]:
    """Running DP3 processes whose command line mentions `marker` (a test's directory)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "DP3" in cmdline and marker in cmdline and "snakemake" not in cmdline:
            found.append(process)
    return found


def output_dir_released(output_dir: Path, timeout: float) -> bool:
    """Whether no run holds the output directory's lock within `timeout` seconds: the
    central job of the last run has ended (a Snakemake killed alone leaves it to notice,
    stop and exit on its own)."""
    try:
        handle = open(OutputLayout(output_dir).lock, "rb")
    except FileNotFoundError:
        return True
    with handle:
        try:
            flock_with_deadline(handle, fcntl.LOCK_EX, timeout)
        except LockTimeout:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def wait_until(condition, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def wait_for_dask_workers(
    address: str, count: int, timeout: float = 60, python: str = sys.executable
) -> None:
    """Wait in a child process: a dask client inside the test process was seen to hang in its
    connection pool, and a child can be killed when it does."""
    script = (
        "import sys; from distributed import Client\n"
        "with Client(sys.argv[1], timeout='10s') as client:\n"
        "    client.wait_for_workers(int(sys.argv[2]), timeout=float(sys.argv[3]))\n"
    )
    subprocess.run(
        [python, "-c", script, address, str(count), str(timeout)],
        check=True,
        timeout=timeout + 30,
        capture_output=True,
    )


class DaskCluster:
    """A real `dask scheduler` and `dask worker` processes, stopped by the fixture."""

    def __init__(self, directory: Path, dask_executable: str = DASK, environment=None):
        self.directory = directory
        # Another environment's `dask` (the benchmarks run the reference pipeline on its own).
        self.dask_executable = dask_executable
        self.environment: dict[str, str] = dict(environment or {})
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # The scheduler's web server (dask's dashboard), answering HTTP.
        self.dashboard_port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None

    def _start(self, arguments: list[str], name: str, **environment: str) -> subprocess.Popen:
        log = open(self.directory / f"{name}-{len(self.processes)}.log", "w")
        # Our own dask runs this checkout's package, as workers that share the workflow's
        # environment do (whichever checkout the environment was installed from).
        own = {"PYTHONPATH": _with_this_checkout(os.environ.get("PYTHONPATH"))}
        process = subprocess.Popen(
            arguments,
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
                **(own if self.dask_executable == DASK else {}),
                **self.environment,
                **environment,
            },
        )
        self.processes.append(process)
        return process

    def start(self, workers: int = 2, threads: int = 1, allowed_failures=None) -> str:
        """A scheduler and `workers` workers holding process=1; returns the address."""
        self.start_scheduler(allowed_failures)
        self.start_workers(count=workers, threads=threads)
        self.wait_for_workers(workers)
        return self.address

    def start_scheduler(self, allowed_failures: int | None = None, **environment: str) -> None:
        """`allowed_failures`: how many lost workers a task survives (dask's default is 3);
        `environment` is added to the scheduler's own."""
        if allowed_failures is not None:
            environment["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(allowed_failures)
        self.scheduler = self._start(
            [
                self.dask_executable,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dashboard-address",
                f"127.0.0.1:{self.dashboard_port}",
            ],
            "scheduler",
            **environment,
        )
        if not wait_until(lambda: port_open(self.port), 30):
            raise RuntimeError(f"the dask scheduler did not listen on port {self.port} in 30 s")

    def start_workers(
        self,
        count: int = 1,
        threads: int | None = 1,
        resources: str | None = "process=1",
        **environment: str,
    ) -> subprocess.Popen:
        """`dask worker --nworkers count` (without --nthreads when `threads` is None, as
        users often start them); `environment` is added to the workers' own."""
        arguments = [self.dask_executable, "worker", self.address, "--nworkers", str(count)]
        if threads is not None:
            arguments += ["--nthreads", str(threads)]
        arguments += ["--no-dashboard", "--memory-limit", "4GB"]
        if resources:
            arguments += ["--resources", resources]
        return self._start(arguments, "worker", **environment)

    def workers_of(self, process: subprocess.Popen, timeout: float = 30) -> list[psutil.Process]:
        """The worker processes proper of one `dask worker` (see `worker_processes`)."""
        return wait_until(lambda: self.worker_processes([process]), timeout)

    def worker_address(self, worker: psutil.Process) -> str:
        """The dask address of one worker process (asked of the scheduler)."""
        return self.worker_addresses()[worker.pid]

    def worker_addresses(self) -> dict[int, str]:
        """Worker process id → its dask address, for every worker of the scheduler (asked in
        a child process, as `wait_for_dask_workers` does)."""
        script = (
            "import json, os, sys; from distributed import Client\n"
            "with Client(sys.argv[1], timeout='10s') as client:\n"
            "    print(json.dumps(client.run(os.getpid)))\n"
        )
        python = str(Path(self.dask_executable).parent / "python")
        answer = subprocess.run(
            [python, "-c", script, self.address],
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        )
        return {pid: address for address, pid in json.loads(answer.stdout).items()}

    def stop_process(self, process: subprocess.Popen) -> None:
        """SIGKILL one started process group: a scheduler, or a `dask worker` with its nannies
        and workers (their DP3s, in sessions of their own, die with their workers)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        # The client must be the cluster's own version of distributed.
        python = str(Path(self.dask_executable).parent / "python")
        wait_for_dask_workers(self.address, count, timeout, python)

    def worker_processes(self, started=None) -> list[psutil.Process]:
        """The worker processes proper (of the `dask worker` commands `started`, by default
        all): each nanny, inside the command's process, spawns its worker through
        multiprocessing, beside the resource tracker."""
        found = []
        for process in self.processes if started is None else started:
            try:
                for child in psutil.Process(process.pid).children(recursive=True):
                    if "spawn_main" in " ".join(child.cmdline()):
                        found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> None:
        for process in reversed(self.processes):
            # A stopped (SIGSTOPped) process dies of SIGKILL all the same.
            self.stop_process(process)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`code` in a new interpreter that imports this checkout's package: a clean process,
    with no thread or import of the test process's own."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO / "scripts")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0
