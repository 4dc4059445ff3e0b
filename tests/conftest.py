"""Shared fixtures: generated MSs, real `snakemake` runs, and a real external dask cluster.

The harness itself (`Workflow`, `DaskCluster`, `make_inputs`, ...) is in dp3batch.testing.harness,
which the benchmarks import too; it is re-exported here for the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dp3batch.testing.harness import (  # noqa: F401  (re-exported for the test modules)
    BIN,
    DASK,
    REPO,
    SMALL_MS,
    SNAKEMAKE,
    DaskCluster,
    Workflow,
    damage_ms,
    dp3_processes,
    free_port,
    make_inputs,
    make_ms,
    output_dir_released,
    port_open,
    run_python,
    wait_for_dask_workers,
    wait_until,
)


def preload_library(source: Path, directory: Path) -> Path:
    """`source` (a small C file of tests/e2e/ that changes one libc call) built into
    `directory` as a library for LD_PRELOAD: a fault inflicted on the real processes of a run."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:  # never a skip: the test environment has gcc (.ci/run)
        pytest.fail(f"no C compiler (cc) to build {source.name}: apt-get install gcc")
    library = directory / f"{source.stem}.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return library


# tests/e2e/ run the real snakemake, DP3, dask or Slurm processes; tests/unit/ only pure
# functions (`make test-unit`). The marker follows the path, and a unit test may not take a
# fixture that starts real processes.
E2E_FIXTURES = {"workflow", "dask_cluster", "slurm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
        elif E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} starts real processes ({', '.join(E2E_FIXTURES)}): it belongs "
                "in tests/e2e/"
            )
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    return Workflow(tmp_path)


@pytest.fixture
def dask_cluster(tmp_path):
    directory = tmp_path / "cluster"
    directory.mkdir()
    cluster = DaskCluster(directory)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm():
    """A real single-node Slurm (tests/slurm_cluster.py) for the whole session: started on
    first use, its daemons stopped by PID at the end. Skipped only where it cannot run (not
    root, slurm-wlm not installed); in CI (CI=true) that is a failure, never a skip."""
    import shutil

    from slurm_cluster import make_cluster, missing_requirements

    problem = missing_requirements()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI needs a real Slurm: {problem} (.ci/run installs it)")
    if problem:
        pytest.skip(f"no Slurm here: {problem}")
    cluster = make_cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
