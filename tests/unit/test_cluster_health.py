"""Unit tests of what keeps a long-lived cluster healthy for the batches on it: a DP3 that
cannot start, the code a worker imports, silent workers and revoked attempts, a restarted
scheduler, threads per core, and the dashboard's port taken for the scheduler's."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from contract_examples import make_spec
from dp3batch.books.commit import (
    AttemptRevoked,
    BatchStopped,
    commit,
    revoke_attempts,
    stop_commits,
)
from dp3batch.books.layout import temporary_path
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage import watchdog
from dp3batch.dask_stage.central_job import failure_report
from dp3batch.dask_stage.cluster import SchedulerLost, WorkerInfo, describe_cluster, speaks_http
from dp3batch.dask_stage.preflight import mismatch_message
from dp3batch.dask_stage.watchdog import (
    RUNS_AFTER_DEATHS_PER_MS,
    ClusterWatch,
    Silence,
    first_silences,
    heartbeat_interval,
    silence_bound,
)
from dp3batch.dask_stage.worker_checks import WorkerFindings, judge_workers, oversubscribed_hosts
from dp3batch.dask_stage.worker_deaths import (
    STARTED_TOPIC,
    deaths_charged,
    deaths_of,
    together,
    workers_met,
)
from dp3batch.dask_stage.worker_faults import (
    WorkerCannotRun,
    describe_identity,
    dp3_start_problem,
    own_package_identity,
    package_identity_function,
    package_problem,
)
from dp3batch.testing.harness import wait_until

# --- a DP3 that cannot start ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "output", "expected"),
    [
        (127, "/opt/dp3/bin/DP3: not found\n", "DP3 could not start (exit 127): /opt/dp3/bin/DP3"),
        (126, "bash: /opt/DP3: Permission denied\n", "(exit 126): bash: /opt/DP3: Permission"),
        (
            127,
            "DP3: error while loading shared libraries: libcasa_tables.so.7: cannot open "
            "shared object file: No such file or directory\n",
            "(exit 127): DP3: error while loading shared libraries: libcasa_tables.so.7",
        ),
        (
            1,
            "Traceback (most recent call last):\nImportError: libaoflagger.so: cannot open "
            "shared object file: No such file or directory\n",
            "(exit 1): ImportError: libaoflagger.so: cannot open shared object file",
        ),
        (127, "# obs_1: DP3 on tcp://w:1\n", "(exit 127): it printed nothing"),
    ],
)
def test_a_dp3_that_cannot_start_is_told_from_a_failing_ms(exit_code, output, expected):
    assert expected in dp3_start_problem(exit_code, output)


@pytest.mark.parametrize(
    ("exit_code", "output"),
    [
        (1, "std::exception: No such MS /data/obs_1.ms\n"),  # the MS's fault
        (-9, ""),  # killed mid-run
        (0, "error while loading shared libraries: noise in a log of a run that worked"),
    ],
)
def test_a_dp3_that_started_is_not_a_worker_fault(exit_code, output):
    assert dp3_start_problem(exit_code, output) is None


def test_a_worker_fault_pickles_back_to_the_central_job_as_it_is():
    import pickle

    fault = pickle.loads(pickle.dumps(WorkerCannotRun("tcp://10.0.0.7:4000", "DP3 ...")))
    assert (fault.worker, fault.problem) == ("tcp://10.0.0.7:4000", "DP3 ...")
    assert str(fault) == "tcp://10.0.0.7:4000: DP3 ..."


# --- which dp3batch a worker imports -------------------------------------------------------


def _package(root: Path, source: str) -> Path:
    package = root / "dp3batch"
    (package / "books").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "books" / "commit.py").write_text(source)
    (package / "books" / "notes.txt").write_text("not code: not part of the digest")
    return root


def _identity_in(path_entry: Path, also: str = "") -> dict:
    """The identity a worker with PYTHONPATH=`path_entry` reports (a fresh interpreter)."""
    import json

    code = (
        "import json, sys\n"
        "from dp3batch.dask_stage.worker_faults import package_identity_function\n"
        "identify = package_identity_function()\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "for name in [m for m in sys.modules if m.startswith('dp3batch')]:\n"
        "    del sys.modules[name]\n"
        f"{also}"
        "print(json.dumps(identify()))\n"
    )
    here = Path(__file__).resolve().parents[2] / "scripts"
    answer = subprocess.run(
        [sys.executable, "-c", code, str(path_entry)],
        env={**os.environ, "PYTHONPATH": str(here)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def test_the_digest_is_of_the_code_only_and_tells_two_checkouts_apart(tmp_path):
    same_a = _identity_in(_package(tmp_path / "a", "X = 1\n"))
    same_b = _identity_in(_package(tmp_path / "b", "X = 1\n"))
    other = _identity_in(_package(tmp_path / "c", "X = 2\n"))
    assert same_a["digest"] == same_b["digest"] != other["digest"]
    assert same_a["path"] == str(tmp_path / "a" / "dp3batch")
    assert package_problem(same_b, same_a) is None
    problem = package_problem(other, same_a)
    assert f"runs dp3batch {other['digest']} from {tmp_path / 'c' / 'dp3batch'}" in problem
    assert f"not dp3batch {same_a['digest']}" in problem


def test_a_worker_whose_code_changed_under_it_runs_what_it_loaded(tmp_path):
    # A `git pull` under a running worker: it runs the modules it imported before.
    root = _package(tmp_path / "a", "X = 1\n")
    changed = _identity_in(
        root,
        also=(
            "identify()\nopen(sys.argv[1] + '/dp3batch/books/commit.py', 'w').write('X = 2\\n')\n"
        ),
    )
    assert changed["digest"] != changed["on_disk"]
    expected = {"digest": changed["digest"], "path": changed["path"]}
    assert "its files changed after it loaded them" in package_problem(changed, expected)


def test_a_worker_without_dp3batch_says_so():
    identity = _identity_in(
        Path("/nonexistent"),
        also="sys.path[:] = [p for p in sys.path if not p.endswith(('scripts', 'packages'))]\n",
    )
    assert "cannot import dp3batch" in identity["error"]
    assert package_problem(identity, {"digest": "0" * 16}) == identity["error"]
    assert describe_identity(identity) == identity["error"]


def test_this_process_and_the_identity_function_agree():
    assert own_package_identity() == package_identity_function()()
    assert len(own_package_identity()["digest"]) == 16


# --- what pre-flight makes of each worker's answer -----------------------------------------

EXPECTED = {"digest": "a" * 16, "path": "/checkout/scripts/dp3batch", "on_disk": "a" * 16}


def _worker(address: str, host: str = "10.0.0.7", threads: int = 1, slots: float = 1) -> WorkerInfo:
    return WorkerInfo(address, threads, slots, None, host)


def _answer(version: str | None = "6.6.0", exit_code: int | None = 0, cpus: str = "0,1", **kw):
    output = kw.pop("output", f"DP3 {version}" if version else "")
    dp3 = {"exit": exit_code, "output": output, "version": version}
    return {"package": kw.pop("package", EXPECTED), "hostname": "node7", "cpus": cpus, "dp3": dp3}


def test_pre_flight_sorts_workers_into_good_mismatched_and_cannot_start():
    workers = [_worker(f"tcp://10.0.0.7:{port}") for port in (1, 2, 3, 4, 5)]
    answers = {
        "tcp://10.0.0.7:1": _answer(),
        "tcp://10.0.0.7:2": _answer(package={"digest": "b" * 16, "path": "/old/dp3batch"}),
        "tcp://10.0.0.7:3": _answer(version="6.5.0"),
        "tcp://10.0.0.7:4": _answer(
            version=None,
            exit_code=127,
            output="DP3: error while loading shared libraries: libhdf5.so.103",
        ),
        "tcp://10.0.0.7:5": RuntimeError("boom"),
    }
    findings = judge_workers(answers, workers, EXPECTED, "6.6.0")
    assert sorted(findings.mismatched) == ["tcp://10.0.0.7:2", "tcp://10.0.0.7:3"]
    assert (
        "runs dp3batch bbbbbbbbbbbbbbbb from /old/dp3batch"
        in findings.mismatched["tcp://10.0.0.7:2"]
    )
    assert "its DP3 is version 6.5.0, not 6.6.0" in findings.mismatched["tcp://10.0.0.7:3"]
    assert findings.cannot_start["tcp://10.0.0.7:4"] == (
        "`DP3 --version` exited 127: DP3: error while loading shared libraries: libhdf5.so.103"
    )
    assert "the check failed there: RuntimeError: boom" in findings.cannot_start["tcp://10.0.0.7:5"]


def test_the_mismatch_message_names_each_worker_and_how_to_restart_it():
    batch = make_spec(scheduler="node1:8786")
    message = mismatch_message(
        {"tcp://10.0.0.7:2": "runs dp3batch bbbb from /old/dp3batch, not ..."}, EXPECTED, batch
    )
    assert message.startswith("1 worker(s) do not run this batch's code and DP3")
    assert "  worker tcp://10.0.0.7:2: runs dp3batch bbbb from /old/dp3batch" in message
    assert (
        "PYTHONPATH=/checkout/scripts dask worker node1:8786 --nworkers N --nthreads T "
        '--resources "process=1"'
    ) in message


def test_more_threads_than_cores_on_a_host_is_named_with_the_fix():
    # The seed's `dask worker --nworkers 4` without --nthreads on 2 cores: 2 threads each.
    workers = [_worker(f"tcp://10.0.0.7:{port}", threads=2) for port in (1, 2, 3, 4)]
    workers.append(_worker("tcp://10.0.0.8:1", host="10.0.0.8", threads=2))  # 2 cores: fine
    answers = {worker.address: _answer() for worker in workers}
    warnings = oversubscribed_hosts(answers, workers)
    assert warnings == [
        "host node7 (10.0.0.7): 4 worker(s) holding process hold 8 thread(s) for its 2 core(s), "
        "so their DP3s compete for the cores. Start them with --nthreads so that workers x "
        "threads = cores (here --nworkers 2 --nthreads 1)."
    ]


def test_two_batch_jobs_on_one_host_are_judged_by_their_own_cores():
    # Two Slurm jobs on one node, each bound to its own core: not oversubscribed.
    workers = [_worker("tcp://10.0.0.7:1"), _worker("tcp://10.0.0.7:2")]
    answers = {"tcp://10.0.0.7:1": _answer(cpus="0"), "tcp://10.0.0.7:2": _answer(cpus="1")}
    assert oversubscribed_hosts(answers, workers) == []


# --- silent workers --------------------------------------------------------------------------


def test_the_silence_bound_never_undercuts_the_heartbeats():
    assert heartbeat_interval(2) == 0.5 and heartbeat_interval(5000) == 26
    assert silence_bound(60, 4) == 60
    assert silence_bound(1, 4) == 2.0
    assert silence_bound(60, 5000) == 104


def test_silence_is_measured_by_our_clock_from_when_the_note_stops_changing():
    # The scheduler's clock may be hours off ours: only a change of its note counts.
    silence = Silence(last_seen=1_000_000.0, changed_at=10.0)
    silence.update(1_000_000.5, 11.0)
    silence.update(1_000_000.5, 30.0)
    assert silence.seconds(30.0) == 19.0


def test_at_the_start_a_worker_lagging_the_freshest_heartbeat_is_silent_already():
    workers = [
        replace(_worker("tcp://a:1"), last_seen=5000.0),
        replace(_worker("tcp://b:1"), last_seen=4900.0),
        _worker("tcp://c:1"),  # the scheduler did not say
    ]
    silences = first_silences(workers, now=100.0)
    assert silences["tcp://a:1"].seconds(100.0) == 0
    assert silences["tcp://b:1"].seconds(100.0) == 100
    assert silences["tcp://c:1"].seconds(100.0) == 0


class FakeClient:
    """The calls ClusterWatch makes of a dask client, answered from plain attributes."""

    def __init__(self):
        self.status = "running"
        self.scheduler_id = "Scheduler-1"
        self.workers: dict[str, dict] = {}
        self.held: dict[str, list[str]] = {}
        self.cancelled: list = []
        self.removed: list[str] = []
        self.events: list[tuple[float, dict]] = []
        self.handlers: dict = {}

    def scheduler_info(self, n_workers=-1):
        return {"id": self.scheduler_id, "workers": self.workers}

    def processing(self, workers):
        return {address: self.held.get(address, []) for address in workers}

    def cancel(self, futures, force=False):
        self.cancelled += futures

    def run_on_scheduler(self, function, address, batch_id):
        self.removed.append(address)

    def get_events(self, topic):
        return self.events

    def subscribe_topic(self, topic, handler):
        self.handlers[topic] = handler

    def unsubscribe_topic(self, topic):
        del self.handlers[topic]


def _join(client: FakeClient, address: str, last_seen: float, slots: int = 1) -> None:
    client.workers[address] = {
        "nthreads": 1,
        "resources": {"process": slots},
        "host": "h",
        "last_seen": last_seen,
    }


def _watching(*addresses: str) -> tuple[FakeClient, ClusterWatch]:
    """A watch of batch B1 that has seen `addresses` join (one slot each)."""
    client = FakeClient()
    for address in addresses:
        _join(client, address, 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    watch.look()
    return client, watch


def _task(name: str):
    return SimpleNamespace(name=name)


class Future:
    """What ClusterWatch reads of a dask future: its key (and that it can be a dict key)."""

    def __init__(self, key: str):
        self.key = key


def test_a_silent_worker_s_task_is_revoked_cancelled_and_given_back(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://frozen:1", 1.0)
    _join(client, "tcp://alive:1", 1.0)
    guard = tmp_path / "batch.guard"
    guard.write_text("running\n")
    watch = ClusterWatch(client, "B1", "s:8786", "Scheduler-1", 10.0, guard)
    watch.look()
    frozen_task, alive_task = _task("obs_0"), _task("obs_1")
    frozen_future = Future("dp3 obs_0-B1-0")
    alive_future = Future("dp3 obs_1-B1-1")
    in_flight = {frozen_future: frozen_task, alive_future: alive_task}
    client.held = {"tcp://frozen:1": [frozen_future.key], "tcp://alive:1": [alive_future.key]}
    for second in range(1, 12):  # the alive worker heartbeats, the frozen one does not
        clock[0] = 100.0 + second
        client.workers["tcp://alive:1"]["last_seen"] = 1.0 + second
        watch.look()
        taken, committed = watch.take_from_silent(in_flight)
        if taken:
            break
    assert clock[0] == 111.0  # the first look past the 10 s bound
    assert taken == [frozen_future] and committed == []
    assert client.cancelled == [frozen_future]
    assert client.removed == ["tcp://frozen:1"]
    assert "revoked dp3 obs_0-B1-0" in guard.read_text().splitlines()
    assert "obs_0 run again elsewhere" in watch.excluded["tcp://frozen:1"]
    assert watch.restriction() == ["tcp://alive:1"]
    # The next attempt has a key of its own, which the revocation does not cover.
    assert watch.key(frozen_task, "dp3 obs_0-B1-0") == "dp3 obs_0-B1-0"
    assert watch.key(frozen_task, "dp3 obs_0-B1-0") == "dp3 obs_0-B1-0-2"


def test_an_ms_a_silent_worker_committed_just_before_is_kept(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://frozen:1", 1.0)
    done = TaskResult(name="obs_0", input="i", output="o", log="l", status=Status.DONE)
    watch = ClusterWatch(client, "B1", "s:8786", "", 5.0, None, committed=lambda task: done)
    watch.look()
    future = Future("k0")
    client.held = {"tcp://frozen:1": ["k0"]}
    clock[0] = 6.0
    watch.look()
    assert watch.take_from_silent({future: _task("obs_0")}) == ([future], [done])


def test_a_silent_worker_s_group_names_every_ms_it_held(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://frozen:1", 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "", 5.0, None)
    watch.look()
    future = Future("k0")
    members = (_task("obs_0"), _task("obs_1"), _task("obs_2"))
    client.held = {"tcp://frozen:1": ["k0"]}
    clock[0] = 6.0
    watch.look()
    taken, _ = watch.take_from_silent({future: members[0]}, {future: members})
    assert taken == [future]
    assert "obs_0, obs_1, obs_2 run again elsewhere" in watch.excluded["tcp://frozen:1"]


def test_a_worker_silent_without_a_task_gets_tasks_again_once_heard_from(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://paused:1", 1.0)
    _join(client, "tcp://busy:1", 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "", 5.0, None)
    watch.look()
    future = Future("k0")
    client.held = {"tcp://busy:1": ["k0"]}
    clock[0] = 6.0  # both silent past the 5 s bound; only the busy one held a task
    watch.look()
    taken, _ = watch.take_from_silent({future: _task("obs_0")})
    assert taken == [future]
    assert set(watch.excluded) == {"tcp://paused:1", "tcp://busy:1"}
    assert watch.slots() == 0
    clock[0] = 7.0  # both heartbeat again
    client.workers["tcp://paused:1"]["last_seen"] = 7.0
    client.workers["tcp://busy:1"]["last_seen"] = 7.0
    watch.look()
    # The paused one had no task: it is used again. The busy one's attempt was revoked and
    # it was removed from the scheduler: it stays out.
    assert set(watch.excluded) == {"tcp://busy:1"}
    assert watch.restriction() == ["tcp://paused:1"]
    assert watch.take_from_silent({}) == ([], [])
    assert set(watch.excluded) == {"tcp://busy:1"}


def test_a_worker_silent_at_preflight_is_checked_once_heard_from_and_then_used(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://good:1", 90.0)
    _join(client, "tcp://paused:1", 80.0)  # 10 s behind the freshest heartbeat
    checked: list[list[str]] = []
    answer = threading.Event()

    def check(joined):
        checked.append([worker.address for worker in joined])
        assert answer.wait(10)
        return WorkerFindings()

    watch = ClusterWatch(client, "B1", "s:8786", "", 5.0, None, check_joiners=check)
    # As the central job sets it up from pre-flight, which left the paused one out unchecked.
    watch.excluded["tcp://paused:1"] = "the scheduler has not heard from it for 10 s"
    watch.unchecked.add("tcp://paused:1")
    watch.begin(describe_cluster(client)[1])
    watch.look()
    assert watch.restriction() == ["tcp://good:1"] and checked == []
    clock[0] = 101.0  # it heartbeats again
    client.workers["tcp://paused:1"]["last_seen"] = 101.0
    watch.look()
    assert "tcp://paused:1" not in watch.excluded
    assert watch.restriction() == ["tcp://good:1"]  # no work before its check answers
    assert checked == [["tcp://paused:1"]]
    answer.set()
    assert wait_until(lambda: not watch.look() and not watch.checking, 10)
    assert watch.restriction() is None and watch.slots() == 2  # both used
    watch.look()
    assert len(checked) == 1


def test_a_worker_silent_at_preflight_stays_out_while_silent():
    client = FakeClient()
    _join(client, "tcp://good:1", 90.0)
    _join(client, "tcp://paused:1", 80.0)
    watch = ClusterWatch(
        client, "B1", "s:8786", "", 5.0, None, check_joiners=lambda j: WorkerFindings()
    )
    watch.excluded["tcp://paused:1"] = "the scheduler has not heard from it for 10 s"
    watch.unchecked.add("tcp://paused:1")
    watch.begin(describe_cluster(client)[1])
    for _ in range(3):
        client.workers["tcp://good:1"]["last_seen"] += 1.0
        watch.look()
    assert "tcp://paused:1" in watch.excluded and not watch.checking
    assert watch.restriction() == ["tcp://good:1"]


def test_a_silent_worker_also_found_unable_to_run_dp3_stays_excluded(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    _join(client, "tcp://w:1", 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "", 5.0, None)
    watch.look()
    clock[0] = 6.0
    watch.look()
    watch.take_from_silent({})
    assert "has not heard from it" in watch.excluded["tcp://w:1"]
    # Its check ends meanwhile (it was silent because the check blocked it): DP3 hangs.
    watch.exclude("tcp://w:1", "`DP3 --version` did not end")
    client.workers["tcp://w:1"]["last_seen"] = 7.0
    clock[0] = 7.0
    watch.look()
    assert watch.excluded == {"tcp://w:1": "`DP3 --version` did not end"}


def test_a_restarted_scheduler_or_a_broken_connection_is_a_lost_scheduler():
    client = FakeClient()
    _join(client, "tcp://w:1", 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "Scheduler-1", 60.0, None)
    watch.look()
    client.scheduler_id = "Scheduler-2"
    with pytest.raises(SchedulerLost, match="was restarted during the batch"):
        watch.look()
    client.scheduler_id = "Scheduler-1"
    client.status = "connecting"  # the client lost its connection and tries again
    with pytest.raises(SchedulerLost, match="lost the connection to the dask scheduler"):
        watch.look()


def test_a_worker_whose_dp3_keeps_failing_to_start_gets_no_more_work():
    client, watch = _watching("tcp://broken:1", "tcp://good:1", "tcp://good:2")
    fault = WorkerCannotRun("tcp://broken:1", "DP3 could not start (exit 127): libx.so")
    assert watch.cannot_run(fault, _task("obs_0")) is True  # to another worker
    assert "tcp://broken:1" not in watch.excluded  # once may be a fluke
    assert watch.cannot_run(fault, _task("obs_1")) is True
    assert watch.excluded["tcp://broken:1"] == "DP3 could not start (exit 127): libx.so"
    assert watch.restriction() == ["tcp://good:1", "tcp://good:2"]
    assert watch.slots() == 2


def test_a_worker_whose_dp3_started_again_is_not_counted_against():
    client, watch = _watching("tcp://w:1")
    fault = WorkerCannotRun("tcp://w:1", "DP3 could not start (exit 127): NFS hiccup")
    watch.cannot_run(fault, _task("obs_0"))
    watch.ran(
        TaskResult(
            name="obs_1", input="i", output="o", log="l", worker="tcp://w:1", status=Status.DONE
        )
    )
    watch.cannot_run(fault, _task("obs_2"))
    assert not watch.excluded


def test_an_ms_whose_dp3_fails_to_start_everywhere_fails_after_three_workers():
    client = FakeClient()
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    task = _task("obs_0")
    faults = [WorkerCannotRun(f"tcp://w:{n}", "DP3 could not start (exit 127)") for n in (1, 2, 3)]
    assert [watch.cannot_run(fault, task) for fault in faults] == [True, True, False]


def test_a_task_whose_allowed_workers_all_left_is_stranded():
    client, watch = _watching("tcp://a:1")
    future = Future("k")
    watch.submitted(future, ["tcp://a:1"])
    assert watch.stranded({future: _task("x")}) == []
    del client.workers["tcp://a:1"]
    _join(client, "tcp://b:1", 1.0)
    watch.look()
    assert watch.stranded({future: _task("x")}) == [future]


def test_a_joiner_is_checked_beside_the_batch_and_counts_only_once_checked():
    client = FakeClient()
    _join(client, "tcp://old:1", 1.0)
    answer = threading.Event()
    asked: list[list[str]] = []

    def slow_check(joined):  # a frozen joiner: the check waits for its deadline
        asked.append([worker.address for worker in joined])
        assert answer.wait(10)
        return WorkerFindings(cannot_start={"tcp://broken:1": "DP3 could not start"})

    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None, check_joiners=slow_check)
    watch.known.add("tcp://old:1")  # checked at pre-flight
    watch.look()
    _join(client, "tcp://new:1", 1.0)
    _join(client, "tcp://broken:1", 1.0)
    started = time.monotonic()
    watch.look()
    assert time.monotonic() - started < 1  # the batch goes on while they are checked
    assert asked == [["tcp://new:1", "tcp://broken:1"]]
    # Not used meanwhile: tasks go only to the checked worker.
    assert watch.slots() == 1 and watch.restriction() == ["tcp://old:1"]
    answer.set()
    assert wait_until(lambda: not watch.look() and not watch.checking, 10)
    assert watch.slots() == 2
    assert watch.restriction() == ["tcp://new:1", "tcp://old:1"]
    assert watch.excluded == {"tcp://broken:1": "DP3 could not start"}
    watch.look()
    assert len(asked) == 1  # each joiner is checked once


def test_a_joiner_whose_check_fails_is_excluded_and_the_batch_goes_on():
    client = FakeClient()
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None, check_joiners=_failing_check)
    _join(client, "tcp://new:1", 1.0)
    watch.look()
    assert wait_until(lambda: not watch.look() and not watch.checking, 10)
    assert "could not be checked (no answer)" in watch.excluded["tcp://new:1"]
    assert watch.slots() == 0


def _failing_check(joined):
    raise RuntimeError("no answer")


def test_a_joiner_whose_check_is_still_under_way_long_after_it_joined_is_named():
    client = FakeClient()
    answer = threading.Event()
    watch = ClusterWatch(
        client,
        "B1",
        "s:8786",
        "",
        60.0,
        None,
        check_joiners=lambda joined: answer.wait(10) and WorkerFindings(),
    )
    _join(client, "tcp://hung:1", 1.0)
    watch.look()
    assert watch.unanswered_checks(longer_than=0.2) == {}  # a check takes a moment
    time.sleep(0.3)
    (why,) = watch.unanswered_checks(longer_than=0.2).values()
    assert list(watch.unanswered_checks(longer_than=0.2)) == ["tcp://hung:1"]
    assert why.startswith("it joined mid-batch and its check") and "had not answered" in why
    answer.set()
    assert wait_until(lambda: not watch.unanswered_checks(longer_than=0.2), 10)


# --- workers that die together -----------------------------------------------------------


def _removed(at: float, worker: str, *tasks: str, expected: bool = False) -> tuple[float, dict]:
    """A scheduler `remove-worker` event, as `client.get_events("all")` gives it."""
    message = {
        "action": "remove-worker",
        "processing-tasks": set(tasks),
        "expected": expected,
        "worker": worker,
    }
    return at, message


# As a scheduler logged it: a `dask worker --nworkers 4` killed while each of its workers ran
# one task; dask handed each task to the next worker before it learnt that one died too.
WHOLE_COMMAND_KILLED = [
    (1000.0, {"action": "add-worker", "worker": "tcp://a:1"}),
    _removed(1796304573.391, "tcp://a:1", "t1"),
    _removed(1796304573.398, "tcp://a:2", "t1", "t2"),
    _removed(1796304573.399, "tcp://a:3", "t2", "t0"),
    _removed(1796304573.400, "tcp://a:4", "t3", "t0"),
]


def test_workers_that_died_together_count_once_against_each_task_they_held():
    deaths = deaths_of(WHOLE_COMMAND_KILLED)
    assert [death.worker for death in deaths] == [f"tcp://a:{n}" for n in (1, 2, 3, 4)]
    assert [workers_met(deaths, task) for task in ("t0", "t1", "t2", "t3")] == [2, 2, 2, 1]
    assert [deaths_charged(deaths, task) for task in ("t0", "t1", "t2", "t3")] == [1, 1, 1, 1]
    assert deaths_charged(deaths, "another batch's task") == 0


def test_workers_that_died_apart_each_count_and_expected_removals_do_not():
    events = [
        _removed(10.0, "tcp://a:1", "t0"),  # killed by its task, say
        _removed(70.0, "tcp://b:1", "t0"),  # and again a minute later
        _removed(71.0, "tcp://c:1", "t0", expected=True),  # retired, not dead
        _removed(71.5, "tcp://d:1", "t1"),  # died 1.5 s after b: together with it
    ]
    deaths = deaths_of(reversed(events))  # sorted by time whatever the order given
    assert [death.worker for death in deaths] == ["tcp://a:1", "tcp://b:1", "tcp://d:1"]
    assert deaths_charged(deaths, "t0") == 2
    assert [[death.worker for death in group] for group in together(deaths)] == [
        ["tcp://a:1"],
        ["tcp://b:1", "tcp://d:1"],
    ]


def _killed_worker(key: str, allowed: int):
    """What ClusterWatch reads of dask's KilledWorker."""
    return SimpleNamespace(task=key, allowed_failures=allowed)


def test_an_ms_whose_workers_died_together_runs_again_while_within_allowed_failures():
    client = FakeClient()
    client.events = WHOLE_COMMAND_KILLED
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    task = _task("obs_0")
    assert watch.survives_deaths(task, _killed_worker("t0", allowed=1)) is True
    # Its next attempt met another whole command's death: two, over the one allowed.
    client.events = [*WHOLE_COMMAND_KILLED, _removed(2e9, "tcp://b:1", "t0-2")]
    assert watch.survives_deaths(task, _killed_worker("t0-2", allowed=1)) is False


def test_an_ms_whose_worker_died_alone_with_no_failure_allowed_fails():
    client = FakeClient()
    client.events = [_removed(5.0, "tcp://a:1", "t0")]
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    assert watch.survives_deaths(_task("obs_0"), _killed_worker("t0", allowed=0)) is False


def test_deaths_heard_since_the_batch_began_count_when_the_scheduler_no_longer_holds_them():
    client = FakeClient()
    _join(client, "tcp://a:1", 1.0)
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    watch.begin(describe_cluster(client)[1])
    heard, started = client.handlers["all"], client.handlers[STARTED_TOPIC]
    heard((9.0, {"action": "gather", "count": 1}))
    started(_started(9.5, "t0", "tcp://a:1"))
    heard(_removed(10.0, "tcp://a:1", "t0"))  # its worker died an hour before the next
    started(_started(11.0, "t0", "tcp://b:1"))
    for result in range(2000):
        heard((11.0 + result, {"action": "gather", "count": 1}))
    heard(_removed(3610.0, "tcp://b:1", "t0"))
    # The scheduler's events moved on: they hold the second death alone.
    client.events = [_removed(3610.0, "tcp://b:1", "t0")]
    assert [death.worker for death in deaths_of(watch.deaths_heard.events())] == [
        "tcp://a:1",
        "tcp://b:1",
    ]
    assert watch.survives_deaths(_task("obs_0"), _killed_worker("t0", allowed=1)) is False
    watch.end()
    assert client.handlers == {}


def _started(at: float, key: str, worker: str) -> tuple[float, dict]:
    """A task's start on a worker, as the scheduler sends it on STARTED_TOPIC."""
    return at, {"key": key, "worker": worker}


def _listening(*events: tuple[float, dict], starts=()) -> tuple[FakeClient, ClusterWatch]:
    """A watch that began a batch, and heard `events` and `starts` since."""
    client = FakeClient()
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    watch.begin([])
    for event in events:
        client.handlers["all"](event)
    for start in starts:
        client.handlers[STARTED_TOPIC](start)
    return client, watch


def test_a_worker_an_ms_only_waited_on_does_not_count_against_it(caplog):
    """With no failure allowed, dask gives up on every task a dying worker held: the one it
    ran (t0) and the one waiting there for its slot (t1), which may run again."""
    _, watch = _listening(
        _removed(10.0, "tcp://a:1", "t0", "t1"), starts=[_started(5.0, "t0", "tcp://a:1")]
    )
    assert watch.survives_deaths(_task("obs_0"), _killed_worker("t0", allowed=0)) is False
    with caplog.at_level("WARNING", logger="dp3batch"):
        assert watch.survives_deaths(_task("obs_1"), _killed_worker("t1", allowed=0)) is True
    assert "obs_1: the 1 worker(s) that held it died (1 before it started there); 0 of 0" in (
        caplog.text
    )


def test_an_ms_that_started_where_it_waited_before_counts_that_death():
    _, watch = _listening(
        _removed(10.0, "tcp://a:1", "t1"),
        starts=[_started(4.0, "t0", "tcp://a:1"), _started(9.0, "t1", "tcp://a:1")],
    )
    assert watch.survives_deaths(_task("obs_1"), _killed_worker("t1", allowed=0)) is False


def test_an_ms_runs_again_after_deaths_a_bounded_number_of_times():
    """Deaths that never count (its starts lost with its workers, say) still end an MS after
    RUNS_AFTER_DEATHS_PER_MS more runs."""
    deaths = [_removed(100.0 * n, f"tcp://w:{n}", f"t0-{n}") for n in range(1, 6)]
    _, watch = _listening(*deaths)
    verdicts = [
        watch.survives_deaths(_task("obs_0"), _killed_worker(f"t0-{n}", allowed=0))
        for n in range(1, 6)
    ]
    assert verdicts == [True] * RUNS_AFTER_DEATHS_PER_MS + [False] * (5 - RUNS_AFTER_DEATHS_PER_MS)


def test_the_starts_of_a_finished_task_are_forgotten():
    _, watch = _listening(starts=[_started(1.0, "t0", "tcp://a:1")])
    assert watch.deaths_heard.started_on("t0") == {"tcp://a:1"}
    watch.finished(SimpleNamespace(key="t0"))
    assert watch.deaths_heard.started_on("t0") == frozenset()


def test_a_death_given_twice_is_one_death():
    death = _removed(10.0, "tcp://a:1", "t0")
    assert len(deaths_of([death, death, _removed(10.0, "tcp://b:1", "t0")])) == 2


def test_deaths_that_cannot_be_read_leave_dask_s_verdict():
    client = FakeClient()

    def unanswered(topic):
        raise OSError("connection closed")

    client.get_events = unanswered
    watch = ClusterWatch(client, "B1", "s:8786", "", 60.0, None)
    assert watch.survives_deaths(_task("obs_0"), _killed_worker("t0", allowed=3)) is False
    assert watch.survives_deaths(_task("obs_0"), RuntimeError("no task, no allowance")) is False


# --- revoked attempts never commit -----------------------------------------------------------


def test_a_revoked_attempt_never_commits_and_a_later_one_does(tmp_path):
    guard = tmp_path / "batch.guard"
    guard.write_text("running\n")
    output = tmp_path / "obs_0.ms"
    late, retry = temporary_path(output), temporary_path(output)
    late.mkdir()
    retry.mkdir()
    (retry / "made_by").write_text("the retry")
    revoke_attempts(guard, ["dp3 obs_0-B1-0"])
    commit(retry, output, str(guard), "dp3 obs_0-B1-0-2")
    (late / "made_by").write_text("the frozen worker, waking up")
    with pytest.raises(AttemptRevoked, match="was revoked"):
        commit(late, output, str(guard), "dp3 obs_0-B1-0")
    assert (output / "made_by").read_text() == "the retry"
    assert issubclass(AttemptRevoked, BatchStopped)  # the task cleans up as for a stop
    stop_commits(guard)  # a guard of several lines still stops every commit
    with pytest.raises(BatchStopped):
        commit(late, tmp_path / "obs_1.ms", str(guard), "dp3 obs_1-B1-1")


# --- the dashboard's port is not the scheduler's -------------------------------------------


def _serve(server) -> int:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def test_a_web_server_is_told_from_a_scheduler_without_sending_a_scheduler_anything():
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    talker = socket.create_server(("127.0.0.1", 0))
    received = []

    def speak_first():  # a dask scheduler greets first, and must never be sent HTTP
        connection, _ = talker.accept()
        connection.sendall(b"\x00\x00\x00\x00dask handshake")
        connection.settimeout(1)
        try:
            received.append(connection.recv(100))
        except OSError:  # silence, or the probe closed the connection: nothing was sent
            received.append(b"")
        connection.close()

    try:
        assert speaks_http("127.0.0.1", _serve(web)) is True
        greeter = threading.Thread(target=speak_first, daemon=True)
        greeter.start()
        assert speaks_http("127.0.0.1", talker.getsockname()[1]) is False
        greeter.join(timeout=5)
        assert received == [b""]
    finally:
        web.shutdown()
        talker.close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OSError):
        speaks_http("127.0.0.1", port)


# --- the failure report ------------------------------------------------------------------------


def test_the_failure_report_names_excluded_workers_and_what_ended_the_batch():
    result = TaskResult(
        name="obs_3",
        input="/d/obs_3.ms",
        output="/r/obs_3.ms",
        log="/r/logs/obs_3.log",
        status=Status.NOT_PROCESSED,
        reason="lost the connection to the dask scheduler",
    )
    report = failure_report(
        [result],
        {"tcp://10.0.0.7:4000": "DP3 could not start (exit 127): libx.so"},
        "lost the connection to the dask scheduler at s:8786 (stopped or restarted?)\nmore",
    )
    assert "1 worker(s) were left out of this batch (no DP3 task, or no more):" in report
    assert "  tcp://10.0.0.7:4000: DP3 could not start (exit 127): libx.so" in report
    assert report.count("stopped or restarted?") == 1
    assert report.splitlines()[-1].startswith("Fix the cause and run again")


def test_tasks_wait_for_a_slot_only_on_eligible_workers_that_returned_a_result():
    client, watch = _watching("tcp://a:1", "tcp://b:1", "tcp://broken:1")
    assert watch.proven_workers() == []  # nothing returned yet: no task waits anywhere
    watch.ran(
        TaskResult(
            name="obs_0", input="i", output="o", log="l", worker="tcp://b:1", status=Status.DONE
        )
    )
    watch.ran(
        TaskResult(
            name="obs_1", input="i", output="o", log="l", worker="tcp://a:1", status=Status.DONE
        )
    )
    assert watch.proven_workers() == ["tcp://a:1", "tcp://b:1"]
    watch.exclude("tcp://a:1", "its DP3 cannot start")
    _join(client, "tcp://joiner:1", 1.0)  # joined since: not proven
    watch.look()
    assert watch.proven_workers() == ["tcp://b:1"]
    assert watch.slots(watch.proven_workers()) == 1
    assert watch.slots() == 3  # b, broken (never returned a result) and the joiner
