"""How a task starts DP3 (dask_stage.execution): the launcher sets its own death signal
(tests/e2e/test_native_dp3.py); another DP3 starts through util-linux's `setpriv
--pdeathsig` where it exists (no Python code between fork and exec in a threaded worker),
else with a `preexec_fn` that sets the same death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from dp3batch.dask_stage import execution
from dp3batch.dp3 import native
from dp3batch.testing.harness import wait_until


@pytest.fixture
def fresh_launcher():
    execution._pdeathsig_launcher.cache_clear()
    yield execution._pdeathsig_launcher
    execution._pdeathsig_launcher.cache_clear()


def test_setpriv_with_pdeathsig_is_used_where_it_exists(fresh_launcher):
    launcher = fresh_launcher()
    assert launcher is not None and launcher[1:] == ("--pdeathsig", "KILL", "--")


def test_without_setpriv_there_is_no_launcher(fresh_launcher, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv there
    assert fresh_launcher() is None


@pytest.mark.parametrize(
    ("content", "at_the_launcher_s_path", "expected"),
    [
        (b"\x7fELF ... DP3BATCH_PDEATHSIG_PARENT ...", True, True),
        (b"\x7fELF ... built before the variable ...", True, False),  # started through setpriv
        (b"\x7fELF ... DP3BATCH_PDEATHSIG_PARENT ...", False, False),  # a DP3 of the user's
    ],
)
def test_only_this_environment_s_launcher_naming_the_variable_sets_its_own_death_signal(
    tmp_path, monkeypatch, content, at_the_launcher_s_path, expected
):
    program = tmp_path / "DP3"
    program.write_bytes(content)
    launcher = program if at_the_launcher_s_path else tmp_path / "elsewhere" / "DP3"
    monkeypatch.setattr(native, "launcher_path", lambda: launcher)
    native.sets_own_death_signal.cache_clear()
    try:
        assert native.sets_own_death_signal(str(program)) is expected
    finally:
        native.sets_own_death_signal.cache_clear()


def test_a_process_started_through_the_launcher_dies_with_the_thread_that_started_it(
    fresh_launcher, tmp_path
):
    """A parent process starts `sleep` as a task would, then is killed: the kernel kills
    the sleep (its death signal), as it kills DP3 when its worker dies."""
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from dp3batch.dask_stage.execution import _pdeathsig_launcher\n"
            "child = subprocess.Popen([*_pdeathsig_launcher(), 'sleep', '600'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(600)\n",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        time.sleep(0.2)  # setpriv has exec'd sleep
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # Reaped by init once killed; a zombie still answers kill(0).
            try:
                with open(f"/proc/{child}/stat") as stat:
                    if stat.read().split(") ")[1].startswith("Z"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_dp3_of_an_earlier_attempt_does_not_write_into_the_next_attempt_s_log(tmp_path):
    # A frozen worker's DP3 holds the log open for appending, as run_dp3 opened it; it wakes
    # up after the MS's next attempt began its log.
    log = tmp_path / "obs.log"
    execution.new_log(log, "# attempt 1\n")
    with open(log, "a") as stdout:
        earlier = subprocess.Popen(
            ["sh", "-c", "echo before; read line; echo 'Total flagged: 99%'"],
            stdin=subprocess.PIPE,
            stdout=stdout,
            text=True,
        )
    try:
        assert wait_until(lambda: "before" in log.read_text(), 10, 0.02)
        execution.new_log(log, "# attempt 2\n")
        earlier.communicate("wake up\n", timeout=10)  # it prints as it ends
    finally:
        earlier.kill()
    assert log.read_text() == "# attempt 2\n"
