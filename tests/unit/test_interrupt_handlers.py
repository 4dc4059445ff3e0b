"""The signal handlers of the central job and of Snakemake: they import nothing and are safe
to re-enter (Ctrl-C often arrives twice: the terminal, `timeout`, `srun`, job wrappers)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys

from dp3batch.dask_stage import interrupts
from dp3batch.testing.harness import wait_until


def test_the_first_call_is_told_from_any_repeat():
    calls: dict = {}
    assert interrupts._first_call(calls) is True
    assert interrupts._first_call(calls) is False
    assert interrupts._first_call({}) is True


def test_a_process_is_stopped_when_gone_or_a_zombie():
    assert interrupts._stopped(os.getpid()) is False
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_until(lambda: interrupts._stopped(child.pid), 10, 0.02)  # a zombie until reaped
    finally:
        child.wait()
    assert interrupts._stopped(child.pid) is True


def test_a_repeated_signal_in_snakemake_stops_the_batch_and_calls_snakemake_once(tmp_path):
    # The handler re-entered mid-way (a second SIGINT from `timeout`, `srun`, the terminal):
    # Snakemake's own handler runs once, and the handler imports nothing.
    pid_file = tmp_path / "batch.pid"
    batch = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid_file.write_text(f"{batch.pid}\n")
    snakemake_calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: snakemake_calls.append(signum))
    try:
        interrupts.forward_interrupts_to_batch(pid_file)
        handler = signal.getsignal(signal.SIGINT)
        modules_before = set(sys.modules)
        handler(signal.SIGINT, None)
        handler(signal.SIGINT, None)
        handler(signal.SIGTERM, None)
        assert batch.wait(timeout=10) == -signal.SIGTERM
        assert snakemake_calls == [signal.SIGINT]
        assert set(sys.modules) == modules_before
        for function in (interrupts._stop_central_job, interrupts._stopped):
            assert "import " not in inspect.getsource(function)
    finally:
        for signum in interrupts.HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous)
        if batch.poll() is None:
            batch.kill()
            batch.wait()
