"""`make setup` leaves the package's bytecode, so that the workflow's processes compile none of
its modules where Python may not write bytecode itself (PYTHONDONTWRITEBYTECODE, a read-only
checkout): Snakemake's process and the central job would otherwise compile them on every run.

Run through `make` (`make test`, `make test-unit`), which makes the bytecode again after any
change of a source; a bare `pytest` after editing a module fails here until `make setup`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter that may not write bytecode: which of the package's modules it compiled
# from source while importing what Snakemake's process and the central job import.
PROBE = textwrap.dedent(
    """
    import importlib._bootstrap_external as external
    import json

    compiled = []
    original = external.SourceLoader.source_to_code

    def counting(self, data, path, *args, **kwargs):
        if "dp3batch" in str(path):
            compiled.append(str(path))
        return original(self, data, path, *args, **kwargs)

    external.SourceLoader.source_to_code = counting
    import dp3batch.dask_stage.central_job
    import dp3batch.rule_layer.run
    import dp3batch.dask_stage.execution
    print(json.dumps(compiled))
    """
)


def compiled_modules(environment: dict[str, str]) -> list[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**environment, "PYTHONPATH": str(REPO / "scripts")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


def test_the_workflow_compiles_none_of_its_modules():
    compiled = compiled_modules({**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert compiled == [], (
        f"{len(compiled)} module(s) compiled from source, e.g. {compiled[:3]}: run `make setup`"
    )


def test_the_probe_sees_a_compilation(tmp_path):
    """The probe itself: with its bytecode elsewhere (an empty cache), every module is
    compiled, and the probe says so."""
    compiled = compiled_modules(
        {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path)}
    )
    assert any(path.endswith("central_job.py") for path in compiled)
