"""The signal handlers of the central job and of Snakemake: they import nothing and are safe
to re-enter (Ctrl-C often arrives twice: the terminal, `timeout`, `srun`, job wrappers)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys

import pytest
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


def test_a_signal_that_lands_in_a_finaliser_still_stops_the_batch_without_a_traceback(
    monkeypatch,
):
    """Python drops an exception raised in a `__del__` (a dask future's, released as the
    fan-out lets it go) and hands it to `sys.unraisablehook`, which prints its traceback: the
    stop is kept all the same, and the hook hears of it no more. Any other exception dropped
    meanwhile still reaches the hook."""
    heard: list = []
    monkeypatch.setattr(sys, "unraisablehook", heard.append)

    class Interrupting:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    class Failing:
        def __del__(self):
            raise ValueError("a bug elsewhere")

    with interrupts.interruptible() as stop_request:
        Interrupting()  # let go at once: the handler's Interrupted is raised in its __del__
        assert stop_request.cause == "SIGINT"
        assert heard == []
        Failing()
        assert [type(dropped.exc_value) for dropped in heard] == [ValueError]
    assert sys.unraisablehook == heard.append  # given back as it was


def test_the_first_cause_of_a_stop_is_kept():
    stop_request = interrupts.StopRequest()
    assert stop_request.cause is None
    stop_request.request("SIGTERM")
    stop_request.request("Snakemake has gone")
    assert stop_request.cause == "SIGTERM"


def test_the_fan_out_stops_at_its_next_turn_for_a_stop_whose_exception_was_dropped():
    from contract_examples import make_spec
    from dp3batch.dask_stage.central_job import task_for
    from dp3batch.dask_stage.dispatch import Dispatch, fan_out

    spec = make_spec()
    stop_request = interrupts.StopRequest()
    stop_request.request("SIGINT")
    results: list = []
    dispatch = Dispatch(
        tasks=[task_for(spec, spec.measurement_sets[0])],
        batch_id=spec.batch_id,
        scheduler_address="tcp://192.0.2.1:8786",
        worker_grace=1.0,
        on_result=results.append,
        stop=stop_request,
        watch=object(),  # not asked: the stop comes first
    )
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        fan_out(None, dispatch)
    assert results == [] and dispatch.in_flight == {}


def _interrupt_a_client_call_before_it_began(loop) -> None:
    """What a Ctrl-C does to a blocking dask client call whose coroutine has not begun (its
    event loop is busy): `distributed.utils.sync` raises KeyboardInterrupt and queues its
    `cancel`, which then runs before the call's future exists."""
    import time

    from distributed.utils import sync

    async def answer() -> int:
        return 1

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    loop.add_callback(time.sleep, 0.5)  # the loop is busy
    time.sleep(0.05)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(KeyboardInterrupt):
            sync(loop, answer)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(0.8)  # the loop runs the call's coroutine, then its cancel


def test_an_interrupt_that_beats_a_dask_client_call_leaves_no_traceback_of_dask(caplog):
    import logging

    from distributed.utils import LoopRunner

    def dask_tracebacks() -> list[str]:
        return [
            str(record.exc_info[1])
            for record in caplog.records
            if record.name == "tornado.application" and record.exc_info
        ]

    runner = LoopRunner(asynchronous=False)
    runner.start()
    tornado_log = logging.getLogger("tornado.application")
    race = interrupts.DaskCancelRace()
    try:
        with caplog.at_level(logging.ERROR, logger="tornado.application"):
            _interrupt_a_client_call_before_it_began(runner.loop)
            # dask's own behaviour, which the filter is for: a NameError from `cancel`.
            assert any("'future'" in text for text in dask_tracebacks()), caplog.records
            caplog.clear()
            tornado_log.addFilter(race)
            _interrupt_a_client_call_before_it_began(runner.loop)
            assert dask_tracebacks() == []
            # Any other error of a callback is still logged.
            runner.loop.add_callback(lambda: 1 / 0)
            assert wait_until(dask_tracebacks, timeout=5, interval=0.05)
    finally:
        tornado_log.removeFilter(race)
        runner.stop()
