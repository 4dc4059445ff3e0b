"""End to end: the environment's `DP3` command reruns an output by hand from its parset, as
docs/outputs-and-resume.md says, in a fresh shell with nothing but the environment activated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from casacore import tables
from conftest import make_inputs

VENV_BIN = Path(sys.executable).parent


def fresh_shell(command: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """`bash -c 'source .venv/bin/activate && COMMAND'` without this process's DP3 settings."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "CASARCFILES", "VIRTUAL_ENV")
    }
    environment["HOME"] = str(home)  # no ~/.casarc
    environment["PATH"] = "/usr/bin:/bin"
    return subprocess.run(
        ["bash", "-c", f"source {VENV_BIN / 'activate'} && {command}"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(path: Path) -> int:
    with tables.table(str(path), ack=False) as table:
        return table.nrows()


def test_the_parsets_rerun_line_works_and_keeps_the_output_up_to_date(workflow, tmp_path):
    assert (VENV_BIN / "DP3").is_file(), (
        f"no DP3 command in {VENV_BIN}: install the package (`make setup` runs pip install -e .)"
    )
    make_inputs(workflow.directory / "inputs", 1)
    result = workflow.run()
    assert result.returncode == 0, result.output
    output = workflow.output("obs_0")
    header = [line for line in (output / "dp3.parset").read_text().splitlines()]
    rerun = [line[1:].strip() for line in header if line.startswith("#   DP3 ")]
    assert rerun == [f"DP3 {output}/dp3.parset msout={output.parent}/obs_0-rerun.ms"], header

    home = tmp_path / "home"
    home.mkdir()
    version = fresh_shell("DP3 --version", workflow.directory, home)
    assert version.returncode == 0 and "DP3" in version.stdout, version.stdout + version.stderr
    by_hand = fresh_shell(rerun[0], home, home)
    assert by_hand.returncode == 0, by_hand.stdout[-2000:] + by_hand.stderr[-2000:]
    assert rows(output.parent / "obs_0-rerun.ms") == rows(output)

    dry_run = workflow.run("-n")
    assert dry_run.returncode == 0, dry_run.output
    assert "All 1 MS(s)" in dry_run.output and "up to date" in dry_run.output
    assert workflow.record("obs_0") is not None
