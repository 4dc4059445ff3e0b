"""dask's own performance report of a batch (task stream, worker profiles, bandwidth), as the
SKA pipeline gives it, for the run report.

Rendering it costs the scheduler 1-3 s (bokeh), a large share of a short batch and nothing
of a long one: it is written for batches whose fan-out ran at least `min_seconds`; a shorter
batch gets a page saying so. Every request to the scheduler has a deadline, and a report that
cannot be made is a warning in the batch log, never a failed batch.
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


def _page(text: str) -> str:
    return f"<!DOCTYPE html><html><body><p>{text}</p></body></html>\n"


def write_no_report(path: str | Path, why: str) -> None:
    """The page that stands for a report that was not made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(_page(f"No dask performance report for this batch: {why}."))


class DaskPerformanceReport:
    """Started before the fan-out, finished (written) after it."""

    def __init__(self, client, path: str | Path, min_seconds: float):
        self.client = client
        self.path = Path(path)
        self.min_seconds = min_seconds
        self.started = time.time()
        self.last_count: int | None = None
        # Why the report could not be written (a full disk), if it could not.
        self.problem: str | None = None

    def start(self) -> None:
        self.started = time.time()
        try:
            self.last_count = call_with_deadline(
                lambda: self.client.run_on_scheduler(
                    lambda dask_scheduler: dask_scheduler.monitor.count
                ),
                SCHEDULER_ANSWER_SECONDS,
                "the performance report's start",
            )
            # The task-stream plugin must exist before the tasks run.
            call_with_deadline(
                lambda: self.client.get_task_stream(start=0, stop=0),
                SCHEDULER_ANSWER_SECONDS,
                "the task stream",
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
                text = call_with_deadline(
                    lambda: self.client.sync(
                        self.client.scheduler.performance_report,
                        start=self.started,
                        last_count=self.last_count,
                        code="DP3 tasks of this batch (dp3batch)",
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
