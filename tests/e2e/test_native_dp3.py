"""DP3 started without Python (dp3/native.py): the workflow runs the wheel's DP3 through the
launcher `make setup` builds, and what it writes and says is what the wheel's `DP3.py`
writes and says (real snakemake, real DP3, generated MSs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from casacore import tables
from conftest import make_inputs
from dp3batch.dp3.install import ask_dp3_version, dp3_environment, dp3_version, find_dp3_executable
from dp3batch.dp3.native import (
    DEATH_SIGNAL_VARIABLE,
    build_launcher,
    launcher_path,
    sets_own_death_signal,
)
from dp3batch.testing.harness import damage_ms, wait_until

WHEEL_DP3 = find_dp3_executable()
STEPS = [{"PreFlagger": {}}, {"AOFlagger": {}}, {"Averager": {"timestep": 2, "freqstep": 4}}]


def table_contents(path: Path) -> dict[str, object]:
    """Every column of a table and of its subtables, by `SUBTABLE/COLUMN`; HISTORY's TIME
    (when the row was written) and its msout (where) are left out: they differ between any
    two runs."""
    contents: dict[str, object] = {}
    for table_path in [path, *sorted(p for p in path.iterdir() if (p / "table.dat").is_file())]:
        prefix = "" if table_path == path else f"{table_path.name}/"
        with tables.table(str(table_path), ack=False) as table:
            for column in table.colnames():
                if prefix == "HISTORY/" and column == "TIME":
                    continue
                try:
                    value = table.getcol(column) if table.nrows() else None
                except RuntimeError:  # a column without data (FLAG_CATEGORY)
                    value = "unreadable"
                if prefix == "HISTORY/" and column == "APP_PARAMS":
                    value = [
                        [p for p in row if not p.startswith("msout=")] for row in value["array"]
                    ]
                contents[prefix + column] = value
    return contents


def assert_same_tables(made: Path, by_hand: Path) -> None:
    ours, theirs = table_contents(made), table_contents(by_hand)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        if isinstance(ours[name], np.ndarray):
            assert ours[name].dtype == theirs[name].dtype, name
            inexact = np.issubdtype(ours[name].dtype, np.inexact)
            assert np.array_equal(ours[name], theirs[name], equal_nan=inexact), name
        else:
            assert ours[name] == theirs[name], name


def test_the_workflow_starts_dp3_natively_and_writes_what_dp3_py_writes(workflow, tmp_path):
    make_inputs(workflow.directory / "inputs", 2)
    workflow.config["steps"] = STEPS
    result = workflow.run()
    assert result.returncode == 0, result.output
    launcher = str(launcher_path())
    assert os.access(launcher, os.X_OK), "make setup builds the launcher"
    for name in ("obs_0", "obs_1"):
        log = (workflow.output_dir / "logs" / f"{name}.log").read_text()
        assert f"# command: {launcher} msin=" in log
        record = workflow.record(name)
        # The record names the DP3 that ran: the wheel's, as DP3.py.
        assert record["dp3_executable"] == WHEEL_DP3
        by_hand = tmp_path / f"{name}-by-hand.ms"
        arguments = [a for a in record["dp3_arguments"] if not a.startswith("msout=")]
        subprocess.run(
            [WHEEL_DP3, *arguments, f"msout={by_hand}"],
            env=dp3_environment(),
            capture_output=True,
            check=True,
            timeout=120,
        )
        assert_same_tables(workflow.output(name), by_hand)


def test_a_dp3_failure_reads_as_the_wheels_dp3_py_says_it(workflow, tmp_path):
    inputs = make_inputs(workflow.directory / "inputs", 2)
    damage_ms(inputs[1])
    result = workflow.run()
    assert result.returncode != 0
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    row = {row["name"]: row for row in summary["measurement_sets"]}["obs_1"]
    assert row["status"] == "failed"
    by_hand = subprocess.run(
        [WHEEL_DP3, f"msin={inputs[1]}", f"msout={tmp_path / 'out.ms'}", "steps=[]"],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # DP3.py ends with Python's `SomeError: <DP3's words>`, the launcher as DP3's own main.
    said = re.search(r"^\w*Error: (.+)$", by_hand.stderr, re.MULTILINE)
    assert by_hand.returncode == 1 and said, by_hand.stderr
    assert row["error"] == f"std exception detected: {said.group(1)}"


def test_the_launcher_builds_into_an_environment_and_answers_the_wheels_version(tmp_path):
    built = build_launcher(tmp_path)
    assert built == launcher_path(tmp_path)
    assert ask_dp3_version(str(built)) == dp3_version(WHEEL_DP3)
    assert [path.name for path in built.parent.iterdir()] == ["DP3"]  # no temporary left


def _ended(pid: int) -> bool:
    """Gone, or killed and waiting for its parent (init, once orphaned) to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_launcher_dies_with_the_process_that_started_it(tmp_path):
    """As a task starts it: a DP3 whose worker is killed must not run on (writing an output
    nobody commits, holding a slot's cores). Its parset is a FIFO nobody writes: DP3 waits
    reading it until it is killed."""
    launcher = str(launcher_path())
    assert sets_own_death_signal(launcher), "make setup builds the launcher from this source"
    parset = tmp_path / "waits.parset"
    os.mkfifo(parset)
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"environment = {{**os.environ, {DEATH_SIGNAL_VARIABLE!r}: str(os.getpid())}}\n"
            f"child = subprocess.Popen([{launcher!r}, {str(parset)!r}], env=environment)\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(600)\n",
        ],
        env=dp3_environment(),
    )
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, 0.05)
        child = int(pid_file.read_text())
        # DP3 is running (waiting for its parset) while its parent lives.
        assert not wait_until(lambda: _ended(child), 1, 0.05)
        assert psutil.Process(child).cmdline()[:1] == [launcher]
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_until(lambda: _ended(child), 10, 0.05), "DP3 outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.exists() and pid_file.read_text() and not _ended(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_launcher_whose_parent_died_before_it_asked_for_the_signal_dies_at_once(tmp_path):
    parset = tmp_path / "waits.parset"
    os.mkfifo(parset)
    environment = {**dp3_environment(), DEATH_SIGNAL_VARIABLE: "1"}  # not its parent: this is
    done = subprocess.run([str(launcher_path()), str(parset)], env=environment, timeout=60)
    assert done.returncode == -signal.SIGKILL
    # Without the variable the same command waits for its parset (as the test above).
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([str(launcher_path()), str(parset)], env=dp3_environment(), timeout=2)
