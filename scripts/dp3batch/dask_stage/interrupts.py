"""Interrupts of the central job: signals become one exception, and a lost parent is noticed.

Ctrl-C reaches every process of the terminal's process group (Snakemake, this job, the
embedded workers); SIGTERM and SIGHUP come from a batch system or a closed terminal. All of
them mean the same here: stop every DP3, commit nothing more, say so in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("dp3batch")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PARENT_POLL_SECONDS = 0.5


class Interrupted(KeyboardInterrupt):
    """The batch was asked to stop (a signal, or Snakemake went away)."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@contextlib.contextmanager
def interruptible() -> Iterator[threading.Event]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` in the main thread, and yield an
    event that is set when our parent process (Snakemake) dies: a killed Snakemake must not
    leave DP3s running."""
    parent = os.getppid()
    orphaned = threading.Event()
    stop = threading.Event()

    def watch_parent() -> None:
        while not stop.wait(PARENT_POLL_SECONDS):
            if os.getppid() != parent:
                orphaned.set()
                return

    interrupted = threading.Event()

    def on_signal(signum, frame):
        # Once only: Ctrl-C reaches this job directly and again through Snakemake (SIGTERM);
        # a second exception raised while the first unwinds would break its clean-up.
        if interrupted.is_set():
            return
        interrupted.set()
        raise Interrupted(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, on_signal) for signum in HANDLED_SIGNALS}
    watcher = threading.Thread(target=watch_parent, name="dp3batch-parent-watch", daemon=True)
    watcher.start()
    try:
        yield orphaned
    finally:
        stop.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_interrupts() -> None:
    """While the batch cleans up after an interrupt, a second Ctrl-C must not cut it short."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


FORWARD_WAIT_SECONDS = 30


def forward_interrupts_to_batch(pid_file: Path) -> None:
    """In the Snakemake process: on SIGINT, SIGTERM or SIGHUP, stop the central job and wait
    (at most FORWARD_WAIT_SECONDS) until it has stopped every DP3, before Snakemake's own
    handler runs. Without this, Snakemake returns to the shell while DP3s still run (Ctrl-C),
    or waits for the whole batch (SIGTERM)."""
    handlers = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}

    def on_signal(signum, frame):
        _stop_central_job(pid_file)
        handler = handlers.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, on_signal)


def _stop_central_job(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return  # not started yet, or already gone
    import psutil

    deadline = time.monotonic() + FORWARD_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            # An exited child stays a zombie until Snakemake reaps it; that is stopped enough.
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
