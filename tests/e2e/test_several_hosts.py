"""Scheduler and workers on other hosts that share a filesystem.

"Hosts" here are Linux network namespaces joined by a bridge that the fixture creates and
removes (addresses 10.213.X.0/24 on that bridge only): the client (Snakemake) stays in this
namespace, the scheduler and a worker each get their own, so no loopback address works
between them. A worker that sees other files than the client is a worker in its own mount
namespace (`unshare --mount`) with something mounted over the test's directories.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, DASK, REPO, make_inputs, port_open, wait_until
from dp3batch.dask_stage.central_job import task_for
from dp3batch.dask_stage.preflight import shared_paths
from dp3batch.planning.plan import batch_specification, make_plan

SCHEDULER_PORT = 8786  # each host is its own network namespace: the default port is free


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _free_subnet() -> str:
    """A 10.213.X prefix that no interface or route of this machine uses."""
    used = "".join(
        subprocess.run(["ip", "-4", *command], capture_output=True, text=True).stdout
        for command in (["-o", "addr"], ["route"])
    )
    for offset in range(200):
        prefix = f"10.213.{(os.getpid() + offset) % 200 + 20}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.213.X.0/24 subnet")


class Hosts:
    """A bridge here (the client's host, .1) and two namespaces: scheduler (.2), worker (.3)."""

    def __init__(self, directory: Path):
        self.directory = directory
        tag = f"d3{os.getpid() % 100000}{int(time.time() * 10) % 100}"
        self.bridge = f"{tag}b"
        self.namespaces = {"scheduler": f"{tag}s", "worker": f"{tag}w"}
        self.prefix = _free_subnet()
        self.address = {"client": f"{self.prefix}.1", "scheduler": f"{self.prefix}.2"}
        self.address["worker"] = f"{self.prefix}.3"
        self.processes: list[subprocess.Popen] = []
        self.created: list[tuple[str, ...]] = []

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", "del", self.bridge))
        _ip("addr", "add", f"{self.address['client']}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for role, namespace in self.namespaces.items():
            _ip("netns", "add", namespace)
            self.created.append(("netns", "del", namespace))
            outside, inside = f"{namespace}0", f"{namespace}1"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.created.append(("link", "del", outside))
            _ip("link", "set", inside, "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            inner = ("netns", "exec", namespace, "ip")
            _ip(*inner, "addr", "add", f"{self.address[role]}/24", "dev", inside)
            _ip(*inner, "link", "set", inside, "up")
            _ip(*inner, "link", "set", "lo", "up")

    def start(self, role: str, arguments: list[str], cwd: Path) -> subprocess.Popen:
        log = open(self.directory / f"{role}-{len(self.processes)}.log", "w")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[role], *arguments],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The workers run this checkout's dp3batch, as pre-flight checks they do.
            env={
                **os.environ,
                "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
                "PYTHONPATH": str(REPO / "scripts"),
            },
        )
        self.processes.append(process)
        return process

    def remove(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for command in reversed(self.created):
            subprocess.run(["ip", *command], capture_output=True)


@pytest.fixture
def hosts(tmp_path):
    directory = tmp_path / "hosts"
    directory.mkdir()
    topology = Hosts(directory)
    try:
        topology.create()
        yield topology
    finally:
        topology.remove()


def test_workflow_with_the_scheduler_and_a_worker_on_other_hosts(workflow, hosts):
    make_inputs(workflow.directory / "inputs", 2)
    scheduler_ip, worker_ip = hosts.address["scheduler"], hosts.address["worker"]
    scheduler = f"{scheduler_ip}:{SCHEDULER_PORT}"
    hosts.start(
        "scheduler",
        [DASK, "scheduler", "--host", scheduler_ip, "--port", str(SCHEDULER_PORT)]
        + ["--no-dashboard"],
        cwd=hosts.directory,
    )
    # The worker's working directory is its own: it finds everything by absolute path.
    worker_home = hosts.directory / "worker-home"
    worker_home.mkdir()
    hosts.start(
        "worker",
        [DASK, "worker", scheduler, "--host", worker_ip, "--name", "host-b"]
        + ["--nthreads", "1", "--resources", "process=1", "--no-dashboard"]
        + ["--memory-limit", "2GB"],
        cwd=worker_home,
    )
    assert wait_until(lambda: port_open(SCHEDULER_PORT, scheduler_ip), 30)
    # (No dask client in this process: the workflow's own pre-flight waits for the worker.)
    # Nothing answers on this host's loopback: only the namespaces' own addresses work.
    assert not port_open(SCHEDULER_PORT)

    workflow.config["scheduler"] = scheduler
    result = workflow.run()
    assert result.returncode == 0, result.output
    for name in ("obs_0", "obs_1"):
        record = workflow.record(name)
        assert record is not None, name
        assert record["worker"].startswith(f"tcp://{worker_ip}:")
        assert Path(record["dp3_executable"]).is_absolute()
        for argument in record["dp3_arguments"]:
            key, _, value = argument.partition("=")
            if key in ("msin", "msout") or key.endswith(".strategy"):
                assert Path(value).is_absolute(), argument
        assert record["output"] == str(workflow.output(name))
    assert sorted(path.name for path in worker_home.iterdir()) == []


def _mounting_worker(scheduler: str, name: str, mount_commands: list[list[str]]) -> list[str]:
    """A `dask worker` in its own mount namespace, after `mount_commands` ran there."""
    worker = [DASK, "worker", scheduler, "--name", name, "--nthreads", "1"]
    worker += ["--resources", "process=1", "--no-dashboard", "--memory-limit", "2GB"]
    script = " && ".join([*map(shlex.join, mount_commands), "exec " + shlex.join(worker)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def test_workers_that_cannot_use_the_paths_stop_the_run_before_any_dp3(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 2)
    inputs = workflow.directory / "inputs"
    results = workflow.directory / "results"
    results.mkdir()
    dask_cluster.start_scheduler()
    # Started like the fixture's own workers (and stopped by it), each with another view.
    views = {
        "hidden-inputs": [["mount", "-t", "tmpfs", "tmpfs", str(inputs)]],
        "other-output": [["mount", "-t", "tmpfs", "tmpfs", str(results)]],
        "read-only-output": [
            ["mount", "--bind", str(results), str(results)],
            ["mount", "-o", "remount,bind,ro", str(results)],
        ],
    }
    for name, commands in views.items():
        dask_cluster._start(_mounting_worker(dask_cluster.address, name, commands), name)
    dask_cluster.start_workers(count=1)
    dask_cluster.wait_for_workers(4)
    workflow.config["scheduler"] = dask_cluster.address
    started = time.monotonic()
    result = workflow.run(timeout=120)
    assert time.monotonic() - started < 40
    assert result.returncode != 0
    output = result.output
    assert "3 worker(s) cannot use the paths of this batch" in output
    for index in (0, 1):
        assert f"(hidden-inputs): input MS {inputs}/obs_{index}.ms does not exist there" in output
    assert f"(other-output): output directory {results} is another directory there" in output
    assert f"(other-output): log directory {results}/logs does not exist there" in output
    assert (
        f"(read-only-output): output directory {results} is not writable there "
        "(Read-only file system)" in output
    )
    assert "shared filesystem" in output
    # Nothing was submitted: no DP3 log, no output, no probe file left behind.
    assert not list((results / "logs").glob("obs_*.log"))
    assert not list(results.glob("*.ms")) and not list(results.glob(".dp3batch-probe-*"))


def test_every_path_sent_to_workers_is_absolute(tmp_path, monkeypatch):
    """Relative inputs, output_dir, extra_inputs_dir and dp3_executable all become absolute."""
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path / "data", 2)
    strategy = tmp_path / "extra" / "strategies" / "mine.lua"
    strategy.parent.mkdir(parents=True)
    strategy.write_text("-- an AOFlagger strategy\n")
    wrapper = tmp_path / "dp3.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{BIN / "DP3.py"}" "$@"\n')
    wrapper.chmod(0o755)
    config = {
        "inputs": ["data/*.ms"],
        "output_dir": "out",
        "extra_inputs_dir": "extra",
        "dp3_executable": "dp3.sh",
        "steps": [{"AOFlagger": {"strategy": "strategies/mine.lua"}}],
    }
    plan = make_plan(config, ".")
    batch = batch_specification(plan, config, "batch-1")
    for ms in batch.measurement_sets:
        task = task_for(batch, ms)
        for key in ("input", "output", "log", "dp3_executable"):
            assert Path(getattr(task, key)).is_absolute(), (key, getattr(task, key))
        assert task.input.startswith(str(tmp_path / "data"))
        assert dict(task.parameters.pairs())["aoflagger.strategy"] == str(strategy)
    paths = shared_paths(batch)
    assert [what for what, _, _ in paths] == [
        "input MS",
        "input MS",
        "aoflagger.strategy file",
        "DP3 executable",
        "output directory",
        "log directory",
    ]
    assert all(Path(path).is_absolute() for _, path, _ in paths)
