"""Watching the cluster while a batch runs on it, as an operator who keeps it up for a week
would: workers come and go, one freezes, one cannot start DP3, the scheduler restarts.

- **The scheduler.** Every look asks it for its workers. No answer, a closed connection, or
  another scheduler at the same address (a restart: its id changed) ends the batch at once
  (`SchedulerLost`): the tasks went with the old scheduler, and so did its workers.
- **Silent workers.** The scheduler notes when it last heard from each worker (a heartbeat
  every 0.5-5 s). A worker that holds one of the batch's tasks and has been silent for the
  batch's bound (`worker_silence_seconds`) is frozen, paused or cut off: its attempts are
  revoked (they can never commit, see books.commit), their tasks cancelled, the worker
  removed from the scheduler (it closes if it ever wakes up), and the MSs run again
  elsewhere. dask's own `worker-ttl` would take 5-10 minutes, or never when a site sets it
  to null. A silent worker that held none of the batch's tasks only gets none while it is
  silent: heard from again, it is used again.
- **Workers that cannot run the batch.** A worker whose DP3 does not start, or that runs
  other code than the batch, is excluded: the batch's tasks are then submitted only to the
  other workers (`restriction`). A task that met such a worker runs again elsewhere.
- **Workers that join mid-batch** (a batch job that started late) are asked the pre-flight
  check of worker_checks before they count; the check runs beside the batch, which goes on
  meanwhile (a frozen joiner would hold it for the check's whole deadline).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp3batch.books.commit import LockTimeout, revoke_attempts
from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage.cluster import (
    SCHEDULER_ANSWER_SECONDS,
    SchedulerLost,
    SchedulerUnresponsive,
    WorkerInfo,
    call_with_deadline,
    describe_cluster,
    worker_command,
)
from dp3batch.dask_stage.task import Task
from dp3batch.dask_stage.worker_checks import WorkerFindings
from dp3batch.dask_stage.worker_deaths import (
    STARTED_TOPIC,
    DeathsHeard,
    deaths_charged,
    deaths_of,
    workers_met,
)
from dp3batch.dask_stage.worker_faults import WorkerCannotRun

log = logging.getLogger("dp3batch")

# worker_silence_seconds of a batch specification that has none (the schema's default).
DEFAULT_SILENCE_SECONDS = 60.0
# A worker whose DP3 failed to start this many times in a row gets no more work.
START_FAILURES_TO_EXCLUDE = 2
# A joiner's check that takes longer than this is named if the batch ends before it answers
# (it usually answers within a second or two).
UNANSWERED_CHECK_SECONDS = 10.0
# An MS whose DP3 failed to start this many times (on as many workers) fails.
START_FAILURES_PER_MS = 3
# The scheduler's topic of cluster events, worker deaths among them (see worker_deaths).
EVENTS_TOPIC = "all"
# An MS whose dying workers dask gave up on runs again at most this many times in a batch,
# whatever the deaths that count against it (a start it said and that was lost with its
# worker would leave a death uncounted).
RUNS_AFTER_DEATHS_PER_MS = 3


def heartbeat_interval(workers: int) -> float:
    """How often a worker tells the scheduler it is alive, for a cluster of `workers`
    (distributed.scheduler.heartbeat_interval, 2026.8.0)."""
    if workers <= 10:
        return 0.5
    if workers < 50:
        return 1.0
    if workers < 200:
        return 2.0
    return workers / 200 + 1


def silence_bound(configured: float, workers: int) -> float:
    """The configured bound, but never under 4 heartbeats: on a cluster of thousands of
    workers a heartbeat comes every 10-50 s."""
    return max(configured, 4 * heartbeat_interval(workers))


@dataclass
class Silence:
    """When the scheduler's note of a worker last changed, by our clock: a frozen worker's
    note stops changing. (Comparing notes, never clocks, makes it immune to clock skew
    between this machine and the scheduler's.)"""

    last_seen: float | None
    changed_at: float

    def update(self, last_seen: float | None, now: float) -> None:
        if last_seen != self.last_seen:
            self.last_seen, self.changed_at = last_seen, now

    def seconds(self, now: float) -> float:
        return now - self.changed_at


def first_silences(workers: list[WorkerInfo], now: float) -> dict[str, Silence]:
    """At the start: how long each worker has been silent already, from how far its last
    heartbeat lags the freshest one (both on the scheduler's clock)."""
    known = [worker.last_seen for worker in workers if worker.last_seen is not None]
    freshest = max(known, default=None)
    silences = {}
    for worker in workers:
        lag = 0.0
        if freshest is not None and worker.last_seen is not None:
            lag = max(0.0, freshest - worker.last_seen)
        silences[worker.address] = Silence(worker.last_seen, now - lag)
    return silences


@dataclass
class ClusterWatch:
    """What the batch knows of its cluster; `look()` refreshes it (see the module's doc)."""

    client: Any
    batch_id: str
    scheduler_address: str
    # The scheduler's id when the batch began (empty: not known, not compared).
    scheduler_id: str
    silence_seconds: float
    # The batch's guard file (attempts are revoked there), or None outside a batch.
    guard: Path | None
    # Checks workers that join mid-batch (None: an embedded cluster, whose workers are ours).
    check_joiners: Callable[[list[WorkerInfo]], WorkerFindings] | None = None
    # The result of an MS committed before its attempt was revoked (from its record).
    committed: Callable[[Task], TaskResult | None] | None = None
    # Worker → why it gets no work in this batch (named in the failure report).
    excluded: dict[str, str] = field(default_factory=dict)
    # Every worker looked at so far (checked, or there at pre-flight).
    known: set[str] = field(default_factory=set)
    silences: dict[str, Silence] = field(default_factory=dict)
    workers: list[WorkerInfo] = field(default_factory=list)
    # Worker → DP3 start failures in a row; MS name → attempts so far, start failures.
    start_failures: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    ms_start_failures: dict[str, list[str]] = field(default_factory=dict)
    # MS name → worker deaths counted against it so far (see worker_deaths), and how many
    # times it ran again after dask gave up on it.
    deaths: dict[str, int] = field(default_factory=dict)
    runs_after_deaths: dict[str, int] = field(default_factory=dict)
    # Workers excluded for their silence alone (they held no task): readmitted if heard again.
    silent_only: set[str] = field(default_factory=set)
    # Workers left out at pre-flight for their silence, never checked: heard from again,
    # they are checked as joiners are.
    unchecked: set[str] = field(default_factory=set)
    # The checks of joined workers under way (`check_joiners`, each in a thread of its own:
    # a frozen joiner takes the check's whole deadline).
    checks: list[JoinerCheck] = field(default_factory=list)
    # Futures submitted with a restriction, and to which workers.
    restricted: dict[Any, frozenset[str]] = field(default_factory=dict)
    # Workers that returned a result of this batch (its code and DP3 ran there).
    proven: set[str] = field(default_factory=set)
    # The worker deaths the scheduler announced since `begin` (None: not listening; the
    # scheduler's recent events are read instead).
    deaths_heard: DeathsHeard | None = None

    def begin(self, workers: list[WorkerInfo]) -> None:
        """The workers found at pre-flight (checked there)."""
        self.workers = workers
        self.known.update(worker.address for worker in workers)
        self.silences = first_silences(workers, time.monotonic())
        # Before any task is submitted (on the same connection): every death is heard, and
        # every start.
        self.deaths_heard = DeathsHeard()
        self.client.subscribe_topic(EVENTS_TOPIC, self.deaths_heard)
        self.client.subscribe_topic(STARTED_TOPIC, self.deaths_heard.started)
        bound = silence_bound(self.silence_seconds, len(workers))
        if bound > self.silence_seconds:
            log.info(
                "a worker silent for %.0f s is taken as frozen (%d workers heartbeat every "
                "%.1f s; worker_silence_seconds is %.0f)",
                bound,
                len(workers),
                heartbeat_interval(len(workers)),
                self.silence_seconds,
            )

    def end(self) -> None:
        """Stop listening: a scheduler kept for many batches would otherwise keep every
        batch's client among the topic's subscribers for good (dask does not drop a closed
        client's subscriptions), and go through them all at each of its events."""
        if self.deaths_heard is None:
            return
        for topic in (EVENTS_TOPIC, STARTED_TOPIC):
            try:
                self.client.unsubscribe_topic(topic)
            except Exception as error:  # noqa: BLE001 - a lost scheduler: nothing to drop
                log.debug("could not unsubscribe from the scheduler's %s: %s", topic, error)

    # --- the scheduler and its workers ----------------------------------------------

    def look(self) -> None:
        """Ask the scheduler for its workers; SchedulerLost if it is gone or another one."""
        self.raise_if_scheduler_lost()
        try:
            scheduler_id, workers = describe_cluster(self.client, SCHEDULER_ANSWER_SECONDS)
        except SchedulerUnresponsive:
            raise SchedulerLost(
                f"the dask scheduler at {self.scheduler_address} stopped answering (nothing "
                f"for {SCHEDULER_ANSWER_SECONDS} s): is it stopped, overloaded, or its host "
                "down?",
                unanswered=True,
            ) from None
        except (OSError, RuntimeError) as error:  # the connection closed: the scheduler is gone
            raise SchedulerLost(
                f"lost the dask scheduler at {self.scheduler_address}: {error}"
            ) from error
        if self.scheduler_id and scheduler_id and scheduler_id != self.scheduler_id:
            raise SchedulerLost(self._restarted())
        now = time.monotonic()
        for worker in workers:
            silence = self.silences.setdefault(worker.address, Silence(worker.last_seen, now))
            silence.update(worker.last_seen, now)
        present = {worker.address for worker in workers}
        for address in list(self.silences):
            if address not in present:
                del self.silences[address]
        self._readmit_heard_again(now)
        self.workers = workers
        joined = [w for w in workers if w.address not in self.known and w.process_slots >= 1]
        self.known.update(worker.address for worker in workers)
        if joined and self.check_joiners is not None:
            log.info(
                "worker(s) joined: %s; checked (dp3batch, `DP3 --version`) before any work",
                ", ".join(worker.address for worker in joined),
            )
            self.checks.append(JoinerCheck.start(self.check_joiners, joined))
        self._apply_checks()

    @property
    def checking(self) -> set[str]:
        """The joined workers whose check has not answered yet."""
        return {worker.address for check in self.checks for worker in check.joined}

    def unanswered_checks(self, longer_than: float = UNANSWERED_CHECK_SECONDS) -> dict[str, str]:
        """Joiners whose check has gone on for over `longer_than` s (their DP3 or filesystem
        hung?), and why they got no work: said at the end of a batch that ended first."""
        now = time.monotonic()
        return {
            worker.address: (
                f"it joined mid-batch and its check (its dp3batch, `DP3 --version`) had not "
                f"answered after {now - check.started:.0f} s when the batch ended"
            )
            for check in self.checks
            if now - check.started > longer_than and not check.ended.is_set()
            for worker in check.joined
        }

    def _apply_checks(self) -> None:
        """What the checks that ended found: each joiner counts from now, or is excluded."""
        for check in [check for check in self.checks if check.ended.is_set()]:
            self.checks.remove(check)
            self._check(check.joined, check.findings, check.error)

    def raise_if_scheduler_lost(self) -> None:
        """The client's connection broke (it cancels every future and reconnects, to a new
        scheduler if one was started at the address): the batch's tasks are lost."""
        status = getattr(self.client, "status", "running")
        if status in ("connecting", "closing", "closed", "failed"):
            raise SchedulerLost(
                f"lost the connection to the dask scheduler at {self.scheduler_address} "
                "(stopped or restarted?): the tasks it held are lost, and its workers with "
                "it. Restart the workers if the scheduler was restarted, then run again."
            )

    def _restarted(self) -> str:
        return (
            f"the dask scheduler at {self.scheduler_address} was restarted during the batch "
            "(another scheduler answers there): the tasks it held are lost, and the workers "
            "that were connected to it closed with it. Start workers for the new scheduler "
            f"({worker_command(self.scheduler_address)}), then run again."
        )

    def _check(
        self,
        joined: list[WorkerInfo],
        findings: WorkerFindings | None,
        error: Exception | None,
    ) -> None:
        names = ", ".join(worker.address for worker in joined)
        if findings is None:  # a check that fails excludes, never ends the batch
            for worker in joined:
                self.exclude(worker.address, f"it joined and could not be checked ({error})")
            return
        for address, why in {**findings.mismatched, **findings.cannot_start}.items():
            self.exclude(address, why)
        for address in findings.silent:
            self.exclude(address, "it joined and did not answer the check (frozen?)")
        for warning in findings.oversubscribed:
            log.warning("Warning: %s", warning)
        good = [w.address for w in joined if w.address not in self.excluded]
        if good:
            log.info("worker(s) joined and can run DP3: %s", ", ".join(good))
        elif names:
            log.info("worker(s) joined: %s", names)

    def exclude(self, address: str, why: str) -> None:
        """`address` gets no more tasks in this batch (said once); a worker excluded only
        for its silence so far is then excluded for good."""
        if address in self.excluded and address not in self.silent_only:
            return
        self.silent_only.discard(address)
        self.excluded[address] = why
        log.error("worker %s gets no more DP3 tasks in this batch: %s", address, why)

    # --- what the batch may use -----------------------------------------------------

    def eligible(self) -> list[WorkerInfo]:
        checking = self.checking
        return [
            worker
            for worker in self.workers
            if worker.process_slots >= 1
            and worker.address not in self.excluded
            and worker.address not in checking
        ]

    def slots(self, among: list[str] | None = None) -> int:
        """The `process` slots the batch may fill (excluded workers left out), of the
        workers `among` when given."""
        return sum(
            int(worker.process_slots)
            for worker in self.eligible()
            if among is None or worker.address in among
        )

    def restriction(self) -> list[str] | None:
        """The workers a task may go to: None (any worker with `process`) unless some such
        worker is excluded. A restriction also keeps away a worker that joins before it
        is checked."""
        checking = self.checking
        if not any(
            worker.address in self.excluded or worker.address in checking
            for worker in self.workers
            if worker.process_slots
        ):
            return None
        return sorted(worker.address for worker in self.eligible())

    def no_slots_message(self, grace: float) -> str:
        if self.excluded:
            return (
                f"no worker that can run this batch's DP3 is left ({len(self.excluded)} "
                f"excluded): waiting up to {grace:.0f} s for other workers"
            )
        return (
            f"no worker holds the process resource any more: waiting up to {grace:.0f} s for "
            "workers to come back"
        )

    # --- attempts -------------------------------------------------------------------

    def key(self, task: Task, first_key: str) -> str:
        """The dask key of the next attempt at `task`: its first key, then `<key>-<n>` (a
        fresh key per attempt: a revoked attempt's key stays revoked)."""
        number = self.attempts.get(task.name, 0) + 1
        self.attempts[task.name] = number
        return first_key if number == 1 else f"{first_key}-{number}"

    def submitted(self, future: Any, restriction: list[str] | None) -> None:
        if restriction is not None:
            self.restricted[future] = frozenset(restriction)

    def finished(self, future: Any) -> None:
        self.restricted.pop(future, None)
        if self.deaths_heard is not None:
            self.deaths_heard.forget(str(future.key))

    def stranded(self, in_flight: dict[Any, Task]) -> list[Any]:
        """Futures whose every allowed worker has gone: they would wait forever."""
        present = {worker.address for worker in self.workers}
        return [
            future
            for future, allowed in self.restricted.items()
            if future in in_flight and not allowed & present
        ]

    def ran(self, result: TaskResult) -> None:
        """DP3 started on this result's worker: its start failures in a row end."""
        if result.worker:
            self.start_failures.pop(result.worker, None)
            self.proven.add(result.worker)

    def proven_workers(self) -> list[str]:
        """The eligible workers that returned a result of this batch: where a task may wait
        for a slot (see dispatch.next_submission). Not a worker that joined since, whose
        check may still be under way, nor one whose DP3 cannot start: a task waiting there
        would be stolen by it (where work stealing is on) or fail there."""
        return sorted(worker.address for worker in self.eligible() if worker.address in self.proven)

    def cannot_run(self, fault: WorkerCannotRun, task: Task) -> bool:
        """A task met a worker that cannot run it; True if its MS may run again elsewhere."""
        failures = self.start_failures.get(fault.worker, 0) + 1
        self.start_failures[fault.worker] = failures
        log.warning("%s: not run on %s: %s", task.name, fault.worker, fault.problem)
        if failures >= START_FAILURES_TO_EXCLUDE or fault.problem.startswith(
            ("runs dp3batch", "cannot import dp3batch")
        ):
            self.exclude(fault.worker, fault.problem)
        on_workers = self.ms_start_failures.setdefault(task.name, [])
        on_workers.append(fault.worker)
        return len(on_workers) < START_FAILURES_PER_MS

    def survives_deaths(self, task: Task, error: Exception) -> bool:
        """dask gave up on `task` because workers holding it died (`error`: KilledWorker);
        True if it may run again: the deaths that count against it (workers that died
        together count once, and a worker it only waited on not at all, see
        worker_deaths), over all its attempts, are within the scheduler's allowed failures.
        """
        allowed = getattr(error, "allowed_failures", None)
        key = str(getattr(error, "task", ""))
        if not isinstance(allowed, int) or not key:
            return False
        if self.runs_after_deaths.get(task.name, 0) >= RUNS_AFTER_DEATHS_PER_MS:
            return False
        started_on = None
        if self.deaths_heard is not None:
            events = self.deaths_heard.events()
            started_on = self.deaths_heard.started_on(key)
        else:  # the scheduler's recent events: an old death may have rolled out of them
            try:
                events = call_with_deadline(
                    lambda: self.client.get_events(EVENTS_TOPIC),
                    SCHEDULER_ANSWER_SECONDS,
                    "a request for the scheduler's events",
                )
            except Exception as error_reading:  # noqa: BLE001 - unknown deaths: dask's verdict
                log.error("could not read which workers died: %s", error_reading)
                return False
        deaths = deaths_of(events)  # all of them: a death between two joins their groups
        counted = deaths_charged(deaths, key, started_on)
        charged = self.deaths.get(task.name, 0) + counted
        self.deaths[task.name] = charged
        if charged > allowed:
            return False
        self.runs_after_deaths[task.name] = self.runs_after_deaths.get(task.name, 0) + 1
        held, ran = workers_met(deaths, key), workers_met(deaths, key, started_on)
        how = []
        if ran:
            text = f"{ran} while it ran"
            if counted < ran:
                text += ", together: a whole dask worker command, its host or its job went down"
            how.append(text)
        if held > ran:
            how.append(f"{held - ran} before it started there")
        log.warning(
            "%s: the %d worker(s) that held it died (%s); %d of %d allowed failure(s) "
            "counted: it runs again",
            task.name,
            held,
            "; ".join(how),
            charged,
            allowed,
        )
        return True

    # --- silent workers -------------------------------------------------------------

    def silent_workers(self) -> dict[str, float]:
        """Workers silent for longer than the bound → for how long (seconds)."""
        now = time.monotonic()
        bound = silence_bound(self.silence_seconds, len(self.workers))
        return {
            address: silence.seconds(now)
            for address, silence in self.silences.items()
            if silence.seconds(now) > bound
        }

    def take_from_silent(
        self, in_flight: dict[Any, Task], groups: Mapping[Any, tuple[Task, ...]] | None = None
    ) -> tuple[list[Any], list[TaskResult]]:
        """The batch's futures held by silent workers, revoked and cancelled, each worker
        removed from the scheduler; returns those futures (their MSs run again) and the
        results of MSs found committed before their attempt was revoked. `groups`: the
        MSs of each future that runs several (`in_flight` has only the first)."""
        silent = self.silent_workers()
        if not silent or not in_flight:
            for address, seconds in silent.items():
                self._exclude_silent(address, seconds, [])
            return [], []
        processing = call_with_deadline(
            lambda: self.client.processing(workers=list(silent)),
            SCHEDULER_ANSWER_SECONDS,
            "a request for the tasks of silent workers",
        )
        by_key = {str(future.key): future for future in in_flight}
        taken: list[Any] = []
        results: list[TaskResult] = []
        for address, seconds in sorted(silent.items()):
            held = [by_key[str(key)] for key in processing.get(address, ()) if str(key) in by_key]
            if not held:
                self._exclude_silent(address, seconds, [])
                continue
            if self.guard is not None:
                try:
                    revoke_attempts(self.guard, [str(future.key) for future in held])
                except LockTimeout as error:
                    log.error(
                        "Error: cannot move the tasks of silent worker %s: %s", address, error
                    )
                    continue
            self._cancel(held)
            self._remove_from_scheduler(address)
            names = [
                member.name
                for future in held
                for member in (groups or {}).get(future, (in_flight[future],))
            ]
            self._exclude_silent(address, seconds, names)
            for future in held:
                done = self.committed(in_flight[future]) if self.committed else None
                if done is not None:
                    results.append(done)
            taken += held
        return taken, results

    def _exclude_silent(self, address: str, seconds: float, names: list[str]) -> None:
        if address in self.excluded:
            return
        held = f"; its task(s) {', '.join(names)} run again elsewhere" if names else ""
        why = (
            f"the scheduler has not heard from it for {seconds:.0f} s (frozen, paused or cut "
            f"off?){held}"
        )
        if names:
            why += "; it was removed from the scheduler, and a late result of it is never kept"
        self.exclude(address, why)
        if not names:  # it held none of the batch's tasks: it stays in the cluster, may return
            self.silent_only.add(address)

    def _readmit_heard_again(self, now: float) -> None:
        """Workers excluded for their silence alone (they held no task of the batch, so none
        was revoked) that the scheduler hears from again get tasks again: a worker paused
        for a minute is not lost for the rest of a night's batch. One that was silent at
        pre-flight is checked first."""
        bound = silence_bound(self.silence_seconds, len(self.workers))
        for address in sorted(self.unchecked):
            silence = self.silences.get(address)
            if silence is None or self.check_joiners is None:
                self.unchecked.discard(address)
            elif silence.seconds(now) < bound:
                # Not known any more: `look` checks it as a worker that joins.
                self.unchecked.discard(address)
                self.known.discard(address)
                del self.excluded[address]
                log.info("worker %s, silent at pre-flight, is heard from again", address)
        for address in sorted(self.silent_only):
            silence = self.silences.get(address)
            if silence is None:  # it left the cluster
                self.silent_only.discard(address)
            elif silence.seconds(now) < bound:
                self.silent_only.discard(address)
                del self.excluded[address]
                log.info("worker %s is heard from again: it gets DP3 tasks again", address)

    def _cancel(self, futures: list[Any]) -> None:
        try:
            call_with_deadline(
                lambda: self.client.cancel(futures, force=True),
                SCHEDULER_ANSWER_SECONDS,
                "cancel",
            )
        except Exception as error:  # noqa: BLE001 - revoked already: it cannot commit
            log.error("could not cancel the tasks of a silent worker: %s", error)

    def _remove_from_scheduler(self, address: str) -> None:
        """What dask's worker-ttl would do, sooner: the scheduler forgets the worker, which
        closes if it ever wakes up (its DP3 dies with it)."""
        try:
            call_with_deadline(
                lambda: self.client.run_on_scheduler(
                    _remove_worker_function(), address, self.batch_id
                ),
                SCHEDULER_ANSWER_SECONDS,
                "removing a silent worker",
            )
        except Exception as error:  # noqa: BLE001 - it is excluded all the same
            log.error("could not remove silent worker %s from the scheduler: %s", address, error)


@dataclass
class JoinerCheck:
    """The check of workers that joined mid-batch, run in a thread of its own so that the
    batch goes on meanwhile (the check's own deadline bounds it)."""

    joined: list[WorkerInfo]
    started: float = field(default_factory=time.monotonic)
    ended: threading.Event = field(default_factory=threading.Event)
    findings: WorkerFindings | None = None
    error: Exception | None = None

    @classmethod
    def start(
        cls, check: Callable[[list[WorkerInfo]], WorkerFindings], joined: list[WorkerInfo]
    ) -> JoinerCheck:
        started = cls(joined)

        def run() -> None:
            try:
                started.findings = check(joined)
            except Exception as error:  # noqa: BLE001 - said when the check is applied
                started.error = error
            finally:
                started.ended.set()

        threading.Thread(target=run, name="dp3batch-joiner-check", daemon=True).start()
        return started


def _remove_worker_function():
    """Runs on the scheduler (pickled by value: the scheduler need not import dp3batch)."""

    async def remove_worker(address, batch_id, dask_scheduler=None):
        return await dask_scheduler.remove_worker(
            address, stimulus_id=f"dp3batch-silent-worker-{batch_id}", close=True
        )

    return remove_worker
