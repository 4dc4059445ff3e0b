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
import sys
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


class StopRequest:
    """Why the batch must stop, once it must: the first signal's name, or that Snakemake has
    gone. The fan-out asks at every turn. A signal handler's exception alone is not enough:
    Python drops an exception raised in a `__del__` (printing its traceback), and a signal can
    land in one, such as a dask future's, released as the fan-out lets it go."""

    def __init__(self) -> None:
        # One dict step: safe in a signal handler, and from the parent watch's thread.
        self._cause: dict[str, str] = {}

    def request(self, cause: str) -> None:
        self._cause.setdefault("cause", cause)

    @property
    def cause(self) -> str | None:
        return self._cause.get("cause")


class DaskCancelRace(logging.Filter):
    """Drops the traceback distributed's `sync` logs when an interrupt lands in a blocking
    client call before that call's coroutine has begun: the call is abandoned anyway, but
    its `cancel` callback reads a variable not yet set (NameError, "cannot access free
    variable 'future'"), and tornado logs that as an error beside the batch's own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, NameError) or "'future'" not in str(error):
            return True
        frame = error.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        code = frame.tb_frame.f_code if frame is not None else None
        return not (
            code is not None
            and code.co_name == "cancel"
            and code.co_filename.endswith(os.path.join("distributed", "utils.py"))
        )


@contextlib.contextmanager
def interruptible() -> Iterator[StopRequest]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` in the main thread, and yield the
    batch's StopRequest: the signal's, or that our parent process (Snakemake) died (a killed
    Snakemake must not leave DP3s running)."""
    parent = os.getppid()
    stop_request = StopRequest()
    done = threading.Event()

    def watch_parent() -> None:
        while not done.wait(PARENT_POLL_SECONDS):
            if os.getppid() != parent:
                stop_request.request("Snakemake has gone")
                return

    interrupted: dict[str, object] = {}

    def on_signal(signum, frame):
        # Once only: Ctrl-C reaches this job directly and again through Snakemake (SIGTERM);
        # a second exception raised while the first unwinds would break its clean-up.
        if not _first_call(interrupted):
            return
        cause = signal.Signals(signum).name
        stop_request.request(cause)
        raise Interrupted(cause)

    def unraisable(hook_arguments) -> None:
        # The handler's exception, dropped where Python drops exceptions: no traceback (the
        # batch stops at the fan-out's next turn, and says so once).
        if isinstance(hook_arguments.exc_value, Interrupted):
            return
        previous_hook(hook_arguments)

    previous = {signum: signal.signal(signum, on_signal) for signum in HANDLED_SIGNALS}
    race = DaskCancelRace()
    tornado_log = logging.getLogger("tornado.application")
    tornado_log.addFilter(race)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    watcher = threading.Thread(target=watch_parent, name="dp3batch-parent-watch", daemon=True)
    watcher.start()
    try:
        yield stop_request
    finally:
        done.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        tornado_log.removeFilter(race)


def _first_call(calls: dict[str, object]) -> bool:
    """True for the first call only, also when a signal handler is re-entered between any two
    of its steps: `setdefault` is a single step (a threading.Event's lock is not: a handler
    re-entered while the first call holds it would wait forever)."""
    token = object()
    return calls.setdefault("first", token) is token


def ignore_interrupts() -> None:
    """While the batch cleans up after an interrupt, a second Ctrl-C must not cut it short."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


FORWARD_WAIT_SECONDS = 30


def forward_interrupts_to_batch(pid_file: Path) -> None:
    """In the Snakemake process: on SIGINT, SIGTERM or SIGHUP, stop the central job and wait
    (at most FORWARD_WAIT_SECONDS) until it has stopped every DP3, before Snakemake's own
    handler runs. Without this, Snakemake returns to the shell while DP3s still run (Ctrl-C),
    or waits for the whole batch (SIGTERM).

    The signal often comes more than once (the terminal, `timeout`, `srun` or a job wrapper
    each forward it): only the first is acted on and passed to Snakemake; a repeat, also one
    that arrives while the first is being handled, is ignored. The handler imports nothing
    (an import cut short by a repeated signal left a half-initialised module behind)."""
    handlers = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    handled: dict[str, object] = {}

    def on_signal(signum, frame):
        if not _first_call(handled):
            return
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
    deadline = time.monotonic() + FORWARD_WAIT_SECONDS
    while time.monotonic() < deadline and not _stopped(pid):
        time.sleep(0.1)


def _stopped(pid: int) -> bool:
    """Whether a process has ended: gone, or a zombie until Snakemake reaps it (stopped
    enough). Read from /proc, with no import: this runs inside a signal handler."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # `pid (comm) state ...`; comm may hold spaces and parentheses.
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except (OSError, IndexError):  # no /proc: ask the process itself
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False
