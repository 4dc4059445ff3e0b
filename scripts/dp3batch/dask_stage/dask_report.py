"""dask's own performance report of a batch (task stream, worker profiles, bandwidth), as the
SKA pipeline gives it, for the run report.

Rendering it costs the scheduler 1-3 s (bokeh), a large share of a short batch and nothing
of a long one: it is written for batches whose fan-out ran at least `min_seconds`; a shorter
batch gets a page saying so. Its task stream keeps the last `task_stream_length` tasks (dask's
own default keeps 100,000, each held by the scheduler until the report is rendered, and the
rendering grows with them); the report says when the batch ran more. Every request to the
scheduler has a deadline, and a report that cannot be made is a warning in the batch log,
never a failed batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from dp3batch.books.write_errors import write_problem
from dp3batch.dask_stage.cluster import SCHEDULER_ANSWER_SECONDS, call_with_deadline

_log = logging.getLogger("dp3batch")

RENDER_SECONDS = 60.0
CALLING_CODE = "DP3 tasks of this batch (dp3batch)"


def _page(text: str) -> str:
    return f"<!DOCTYPE html><html><body><p>{text}</p></body></html>\n"


def write_no_report(path: str | Path, why: str) -> None:
    """The page that stands for a report that was not made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(_page(f"No dask performance report for this batch: {why}."))


class DaskPerformanceReport:
    """Started before the fan-out, finished (written) after it."""

    def __init__(self, client, path: str | Path, min_seconds: float, task_stream_length: int):
        self.client = client
        self.path = Path(path)
        self.min_seconds = min_seconds
        self.task_stream_length = task_stream_length
        self.started = time.time()
        self.last_count: int | None = None
        # The scheduler's count of tasks in its task stream when the batch started.
        self.first_task = 0
        # Why the report could not be written (a full disk), if it could not.
        self.problem: str | None = None

    def start(self) -> None:
        self.started = time.time()
        try:
            self.last_count, self.first_task = call_with_deadline(
                lambda: self.client.run_on_scheduler(start_task_stream(self.task_stream_length)),
                SCHEDULER_ANSWER_SECONDS,
                "the performance report's start",
            )
        except Exception as error:  # any failure costs the report only
            _log.warning("no dask performance report: %s", error)
            self.last_count = None

    def finish(self) -> None:
        """Write the report (or a page saying why there is none)."""
        with contextlib.suppress(OSError):  # made by Snakemake already
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elapsed = time.time() - self.started
        if self.last_count is None:
            text = _page("No dask performance report: the scheduler could not start one.")
        elif elapsed < self.min_seconds:
            text = _page(
                f"No dask performance report for this batch: its DP3 tasks took "
                f"{elapsed:.0f} s, less than dask_report_min_seconds ({self.min_seconds:g} s), "
                "and rendering one costs the scheduler seconds. Set dask_report_min_seconds: 0 "
                "to always have it."
            )
        else:
            try:
                ran, kept = call_with_deadline(
                    lambda: self.client.run_on_scheduler(task_stream_counter()),
                    SCHEDULER_ANSWER_SECONDS,
                    "the task stream",
                )
                code = CALLING_CODE + task_stream_note(ran - self.first_task, kept)
                text = call_with_deadline(
                    lambda: self.client.sync(
                        self.client.scheduler.performance_report,
                        start=self.started,
                        last_count=self.last_count,
                        code=code,
                        # bokeh's JavaScript inside the file: it shows without network access
                        mode="inline",
                    ),
                    RENDER_SECONDS,
                    "the performance report",
                )
            except Exception as error:
                _log.warning("no dask performance report: %s", error)
                text = _page(f"No dask performance report: {error}")
        try:
            self.path.write_text(text)
        except OSError as error:  # said with the rest of the report (central_job)
            self.problem = write_problem(error, self.path)


def start_task_stream(length: int):
    """What the scheduler runs as the batch starts (a closure: an external scheduler gets it
    by value, not by a module it may lack): its task stream, kept from now on, at most
    `length` tasks unless one was already kept (an external scheduler's dashboard keeps
    one); returns its system monitor's count and how many tasks the stream has seen."""

    def start(dask_scheduler) -> tuple[int, int]:
        from distributed.diagnostics.task_stream import TaskStreamPlugin

        plugin = dask_scheduler.plugins.get(TaskStreamPlugin.name)
        if plugin is None:
            plugin = TaskStreamPlugin(dask_scheduler, maxlen=length)
            dask_scheduler.add_plugin(plugin)
        return dask_scheduler.monitor.count, plugin.index

    return start


def task_stream_counter():
    """What the scheduler runs as the batch ends (a closure, as above): how many tasks its
    task stream has seen, and how many it keeps."""

    def count(dask_scheduler) -> tuple[int, int]:
        from distributed.diagnostics.task_stream import TaskStreamPlugin

        plugin = dask_scheduler.plugins[TaskStreamPlugin.name]
        return plugin.index, len(plugin.buffer)

    return count


def task_stream_note(ran: int, kept: int) -> str:
    """The report's note when its task stream (and so its task figures) covers only the last
    `kept` of the batch's `ran` tasks."""
    if ran <= kept:
        return ""
    return (
        f"\n\nThe task stream, and the number of tasks and their times above, cover the "
        f"last {kept:,} of the {ran:,} tasks of this batch (dask_report_task_stream)."
    )
