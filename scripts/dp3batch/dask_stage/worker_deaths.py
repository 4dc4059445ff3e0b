"""Which worker deaths count against a task, when dask gave up on it (`KilledWorker`).

dask counts every worker that dies while it holds a task, and marks the task failed once
more than `allowed-failures` have. When a whole `dask worker --nworkers 4` command, or its
host or batch job, goes down, its workers leave the scheduler within milliseconds of one
another, and dask hands a task from each dying worker to the next before it learns that
one is dying too: one MS met four deaths in 10 ms, and failed, although nothing it did
killed anything. A task that kills its worker (out of memory) kills it alone.

dask also counts the death of a worker a task only waited on (a small MS waits for a slot
on a busy worker, see dispatch.PREFETCH_MAX_BYTES): with no failure allowed, it failed with
the MS that killed the worker. Each task says when it starts on a worker (an event on
`STARTED_TOPIC`), and a death counts against it only if it started on that worker.

So workers that died within `TOGETHER_SECONDS` of one another count once together, and a
worker that died alone counts once: the task may run again while those counts stay within
the scheduler's `allowed-failures` (see ClusterWatch.survives_deaths). The deaths are the
scheduler's own `remove-worker` events, which name the tasks each worker held, as it sends
them to the batch's client (`DeathsHeard`): its `all` topic keeps only its last events
(`distributed.admin.low-level-log-length`: 1,000 by default, 100 in the clusters this
workflow starts) and every result the batch gathers adds one, so the first death of an MS
whose attempts each take an hour would be gone from there by the time dask gives up on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Workers that left the scheduler this close together went down together.
TOGETHER_SECONDS = 2.0
# The scheduler's topic on which each task says it started on its worker.
STARTED_TOPIC = "dp3batch-task-started"


@dataclass(frozen=True)
class Death:
    """A worker that left the scheduler unexpectedly, and the tasks it held then."""

    time: float
    worker: str
    tasks: frozenset[str]


def is_death(message: Any) -> bool:
    """An unexpected `remove-worker` event (a worker closed by its nanny, or retired, was
    expected to leave: not a death)."""
    return (
        isinstance(message, dict)
        and message.get("action") == "remove-worker"
        and not message.get("expected")
    )


def deaths_of(events: Iterable[tuple[float, Any]]) -> list[Death]:
    """The deaths among the scheduler's `all` events, by time, each once."""
    deaths = {}
    for timestamp, message in events:
        if not is_death(message):
            continue
        tasks = frozenset(str(key) for key in message.get("processing-tasks") or ())
        death = Death(float(timestamp), str(message.get("worker", "")), tasks)
        deaths[(death.time, death.worker)] = death
    return sorted(deaths.values(), key=lambda death: death.time)


class DeathsHeard:
    """A handler for the scheduler's `all` topic (`client.subscribe_topic`) that keeps its
    deaths, and only those (every gathered result sends an event there too), and one for
    `STARTED_TOPIC` (`started`): where each task started. Called on the client's event loop
    before dask's report that a task erred, which comes later on the same connection: an
    MS's KilledWorker always finds its deaths here, and where it started before them (a
    worker's messages reach the scheduler in order, the last before its connection closes).
    """

    def __init__(self) -> None:
        self._events: list[tuple[float, Any]] = []
        self._started: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, event: tuple[float, Any]) -> None:
        if is_death(event[1]):
            with self._lock:
                self._events.append(event)

    def started(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and "key" in message and "worker" in message:
            with self._lock:
                self._started.setdefault(str(message["key"]), set()).add(str(message["worker"]))

    def events(self) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self._events)

    def started_on(self, key: str) -> frozenset[str]:
        """The workers `key` started on."""
        with self._lock:
            return frozenset(self._started.get(key, ()))

    def forget(self, key: str) -> None:
        """A task that ended: its starts are not needed any more."""
        with self._lock:
            self._started.pop(key, None)


def together(deaths: list[Death], seconds: float = TOGETHER_SECONDS) -> list[list[Death]]:
    """`deaths` (sorted by time) in groups: each death within `seconds` of the one before
    it in its group."""
    groups: list[list[Death]] = []
    for death in deaths:
        if groups and death.time - groups[-1][-1].time <= seconds:
            groups[-1].append(death)
        else:
            groups.append([death])
    return groups


def deaths_charged(
    deaths: list[Death],
    task: str,
    started_on: frozenset[str] | None = None,
    seconds: float = TOGETHER_SECONDS,
) -> int:
    """How many of the deaths `task` met count against it: one per group of workers that
    died together (and one per worker that died alone) among those that held it, and that
    it had started on (`started_on`; None: not known, every one)."""
    return sum(
        1
        for group in together(deaths, seconds)
        if any(task in death.tasks and ran_there(death, started_on) for death in group)
    )


def ran_there(death: Death, started_on: frozenset[str] | None) -> bool:
    return started_on is None or death.worker in started_on


def workers_met(deaths: list[Death], task: str, started_on: frozenset[str] | None = None) -> int:
    """How many dying workers held `task` (what dask counted), of those it had started on
    when `started_on` is given."""
    return sum(1 for death in deaths if task in death.tasks and ran_there(death, started_on))
