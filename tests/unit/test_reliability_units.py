"""Unit tests of the reliability rules: what may be deleted, which paths are refused, how
failures are named, the summary's format, and the order of dispatch."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python
from contract_examples import make_spec
from dp3batch.books.batch_spec import PendingMS
from dp3batch.books.commit import remove_leftovers
from dp3batch.books.layout import leftover_owner, replaced_path, temporary_path
from dp3batch.books.status import Status
from dp3batch.config.errors import ConfigError
from dp3batch.dask_stage.dispatch import (
    PREFETCH_MAX_BYTES,
    Submission,
    largest_first,
    next_submission,
)
from dp3batch.dask_stage.execution import exit_description
from dp3batch.dask_stage.task import Task
from dp3batch.dp3.parset import literal, parset_text
from dp3batch.inputs.discovery import discover_measurement_sets
from dp3batch.report.summary import SummaryRow, Verdict, verdict_of_batch, write_summary


def fake_ms(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "table.dat").write_bytes(b"main")
    return path


# --- what the workflow deletes -------------------------------------------------------------


def test_leftover_names_are_exactly_the_workflows_own(tmp_path):
    output = tmp_path / "obs_1.ms"
    assert leftover_owner(temporary_path(output).name) == "obs_1.ms"
    assert leftover_owner(replaced_path(output).name) == "obs_1.ms"
    for name in (".config.old-2023", ".git.old-backup", ".cache.tmp-abc", ".x.ms.tmp-XYZ"):
        assert leftover_owner(name) is None


def test_only_leftovers_of_known_outputs_are_removed(tmp_path):
    ours = temporary_path(tmp_path / "obs_1.ms")
    ours.mkdir()
    (ours / "table.dat").write_bytes(b"partial")
    replaced = replaced_path(tmp_path / "obs_1.ms")
    replaced.mkdir()
    unknown_output = temporary_path(tmp_path / "someone_else.ms")
    unknown_output.mkdir()
    unrelated = [tmp_path / ".config.old-2023" / "app", tmp_path / ".git.old-backup"]
    unrelated.append(tmp_path / ".cache.tmp-abc")
    for path in unrelated:
        path.mkdir(parents=True)
    removed = remove_leftovers(tmp_path, {"obs_1.ms"})
    assert sorted(removed) == sorted([ours, replaced])
    assert not ours.exists() and not replaced.exists()
    assert unknown_output.is_dir()
    assert all(path.exists() for path in unrelated)


def test_a_leftover_name_that_is_a_link_is_not_followed(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_bytes(b"keep me")
    output_dir = tmp_path / "results"
    output_dir.mkdir()
    link = temporary_path(output_dir / "obs_1.ms")
    link.symlink_to(precious)
    assert remove_leftovers(output_dir, {"obs_1.ms"}) == []
    assert (precious / "data").read_bytes() == b"keep me"


# --- paths -----------------------------------------------------------------------------------


def test_double_star_matches_any_depth(tmp_path):
    fake_ms(tmp_path / "data" / "night1" / "a.ms")
    fake_ms(tmp_path / "data" / "night2" / "deep" / "b.ms")
    found = discover_measurement_sets(["data/**/*.ms"], "results", tmp_path)
    assert [ms.name for ms in found] == ["a", "b"]


def test_outputs_matched_by_an_input_pattern_are_left_out(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    output = fake_ms(tmp_path / "data" / "results" / "a.ms")
    (output / "dp3_completion.json").write_text("{}")
    found = discover_measurement_sets(["data/**/*.ms"], "data/results", tmp_path)
    assert [ms.input for ms in found] == [tmp_path / "data" / "a.ms"]


def test_output_dir_with_a_tilde_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fake_ms(tmp_path / "data" / "a.ms")
    found = discover_measurement_sets(["data/a.ms"], "~/out", tmp_path)
    assert found[0].output == tmp_path / "home" / "out" / "a.ms"


@pytest.mark.parametrize("output_dir", ["/", "~"])
def test_root_and_home_are_refused_as_output_dir(tmp_path, output_dir):
    fake_ms(tmp_path / "data" / "a.ms")
    with pytest.raises(ConfigError, match="output_dir: .* is (the root|a home) directory"):
        discover_measurement_sets(["data/a.ms"], output_dir, tmp_path)


def test_an_input_link_inside_output_dir_is_refused(tmp_path):
    real = fake_ms(tmp_path / "data" / "a.ms")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.ms").symlink_to(real)
    with pytest.raises(ConfigError, match="output_dir"):
        discover_measurement_sets(["results/a.ms"], "results", tmp_path)


def test_an_output_path_that_is_a_link_is_refused(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    elsewhere = fake_ms(tmp_path / "elsewhere" / "a.ms")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.ms").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a link"):
        discover_measurement_sets(["data/a.ms"], "results", tmp_path)


def test_the_same_ms_through_a_link_is_refused(tmp_path):
    real = fake_ms(tmp_path / "data" / "a.ms")
    (tmp_path / "data" / "alias.ms").symlink_to(real)
    with pytest.raises(ConfigError, match="are the same MS"):
        discover_measurement_sets(["data/*.ms"], "results", tmp_path)


def test_a_name_with_glob_characters_is_refused(tmp_path):
    fake_ms(tmp_path / "data" / "[x].ms")
    with pytest.raises(ConfigError, match="reads as a pattern"):
        discover_measurement_sets([str(tmp_path / "data" / "[x].ms")], "results", tmp_path)


def test_a_hash_in_a_path_is_quoted_in_the_parset():
    parset = parset_text([("msin", literal("/data/run#2/a.ms")), ("steps", "[]")])
    assert 'msin="/data/run#2/a.ms"' in parset.splitlines()


# --- failures named, summary format, dispatch order --------------------------------------


def test_a_signal_is_named():
    assert exit_description(-signal.SIGSEGV) == "DP3 was killed by SIGSEGV (DP3 crashed)"
    assert exit_description(-signal.SIGKILL) == "DP3 was killed by SIGKILL"
    assert exit_description(1) == "DP3 exited with code 1"


def test_summary_cells_hold_no_line_breaks(tmp_path):
    rows = [SummaryRow(name="a", status=Status.FAILED, error="line one\nline two\tend")]
    assert write_summary(rows, tmp_path / "s.json", tmp_path / "s.tsv")[1] is None
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert len(lines) == 2
    row = next(csv.DictReader(lines, delimiter="\t"))
    assert row["error"] == "line one line two end"


def test_a_summary_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    rows = [SummaryRow(name=name, status=Status.UP_TO_DATE) for name in ("a", "b")]
    kept, problem = write_summary(iter(rows), blocker / "s.json", blocker / "s.tsv")
    assert problem and "could not write the summary" in problem
    assert sorted(os.listdir(tmp_path)) == ["not-a-directory"]
    # Every row is still returned: the run's verdict is counted from them.
    assert kept == rows


def test_two_runs_writing_the_summary_at_once_leave_a_whole_summary(tmp_path):
    """Two runs on one output directory write their summaries after their batches, outside
    the directory's lock: neither may take the other's half-written file, or fail and
    remove the summary (the e2e two-runs test found summary.tsv gone)."""
    import threading

    paths = (tmp_path / "summary.json", tmp_path / "summary.tsv")
    problems: list[str] = []

    def writer(status: Status) -> None:
        rows = [SummaryRow(name=f"obs_{index}", status=status) for index in range(300)]
        for _ in range(30):
            problem = write_summary(rows, *paths, batch_id=status.value)[1]
            if problem:
                problems.append(problem)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (Status.DONE, Status.FAILED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert problems == []
    summary = json.loads(paths[0].read_text())
    assert len(summary["measurement_sets"]) == 300
    assert len(paths[1].read_text().splitlines()) == 301
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "summary.tsv"]


def test_largest_first_is_stable_for_equal_sizes():
    batch = make_spec()
    tasks = [
        Task.of(
            batch, PendingMS(name=name, input="/i", output="/o", band=None, reason="", size=size)
        )
        for name, size in [("a", 1), ("b", 8), ("c", 8), ("d", 2)]
    ]
    assert [task.name for task in largest_first(tasks)] == ["b", "c", "d", "a"]


def test_small_tasks_wait_one_per_proven_slot_and_large_ones_wait_for_a_free_slot():
    batch = make_spec()

    def task(size: int) -> Task:
        return Task.of(
            batch, PendingMS(name="a", input="/i", output="/o", band=None, reason="", size=size)
        )

    small, large = task(800_000), task(PREFETCH_MAX_BYTES + 1)
    assert next_submission(small, 1, 0, slots=2, proven_slots=2) is Submission.OPEN
    assert next_submission(small, 2, 1, slots=2, proven_slots=2) is Submission.WAITING
    assert next_submission(task(PREFETCH_MAX_BYTES), 3, 2, slots=3, proven_slots=3) is (
        Submission.WAITING
    )
    assert next_submission(small, 2, 2, slots=2, proven_slots=2) is None
    assert next_submission(large, 2, 0, slots=2, proven_slots=2) is None
    assert next_submission(large, 1, 0, slots=2, proven_slots=2) is Submission.OPEN
    # Unknown size: it may be large.
    assert next_submission(task(0), 2, 0, slots=2, proven_slots=2) is None
    # Nothing returned yet: no task waits anywhere.
    assert next_submission(small, 1, 0, slots=1, proven_slots=0) is None


def test_a_worker_that_joins_gets_an_open_task_however_many_wait_on_the_others():
    """One proven worker with its open task and its waiting one; a second worker joins (2
    slots): the next task is open to it, and no more wait on the first."""
    batch = make_spec()
    small = Task.of(
        batch, PendingMS(name="a", input="/i", output="/o", band=None, reason="", size=1000)
    )
    assert next_submission(small, 1, 1, slots=2, proven_slots=1) is Submission.OPEN
    assert next_submission(small, 2, 1, slots=2, proven_slots=1) is None


# --- locks ----------------------------------------------------------------------------------


# --- the batch guard ------------------------------------------------------------------------


def test_no_output_is_committed_once_the_batch_stopped(tmp_path):
    from dp3batch.books.commit import BatchStopped, commit, stop_commits

    guard = tmp_path / "batch.guard"
    guard.write_text("running\n")
    first, second = temporary_path(tmp_path / "a.ms"), temporary_path(tmp_path / "b.ms")
    first.mkdir()
    second.mkdir()
    commit(first, tmp_path / "a.ms", str(guard))
    assert (tmp_path / "a.ms").is_dir()
    stop_commits(guard)
    with pytest.raises(BatchStopped):
        commit(second, tmp_path / "b.ms", str(guard))
    assert not (tmp_path / "b.ms").exists()


def test_a_guard_locked_elsewhere_is_a_clear_error_within_its_deadline(tmp_path):
    import time

    from dp3batch.books.commit import LockTimeout, flock_with_deadline

    guard = tmp_path / "batch.guard"
    guard.write_text("running\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\nhandle = open(sys.argv[1])\n"
            "fcntl.flock(handle, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n",
            str(guard),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with open(guard) as handle, pytest.raises(LockTimeout, match="stayed locked"):
            import fcntl

            flock_with_deadline(handle, fcntl.LOCK_SH, seconds=0.3)
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()


def test_the_central_job_keeps_dasks_chatter_quiet_after_importing_dask():
    # Importing distributed sets its loggers from dask's config (INFO): a comm closed as the
    # embedded cluster stops then printed a traceback into the run's output.
    script = (
        "import logging\n"
        "from dp3batch.dask_stage.central_job import _configure_logging\n"
        "_configure_logging(None)\n"
        "import distributed  # as the cluster's start does\n"
        "print(logging.getLogger('distributed.batched').getEffectiveLevel())\n"
        "print(logging.getLogger('distributed.client').getEffectiveLevel())\n"
    )
    answer = run_python(script)
    assert answer.stdout.split() == [str(logging.CRITICAL)] * 2, answer.stderr[-2000:]


def test_the_verdict_is_read_from_the_summary_only_when_that_batch_wrote_it(tmp_path):
    # onsuccess takes the verdict of the summary the central job wrote right after the
    # batch, and builds the rows itself from the records only when the summary is another
    # batch's (or unreadable).
    summary = tmp_path / "summary.json"
    rows = [
        SummaryRow(name="a", status=Status.DONE),
        SummaryRow(name="b", status=Status.FAILED),
        SummaryRow(name="c", status=Status.UP_TO_DATE, qa="suspect", qa_reason="all flagged"),
    ]
    assert write_summary(rows, summary, tmp_path / "summary.tsv", "b1")[1] is None
    verdict = verdict_of_batch(summary, "b1")
    assert verdict == Verdict.of(rows)
    assert (verdict.complete, verdict.total) == (2, 3)
    assert verdict.suspect == ({"name": "c", "reason": "all flagged"},)
    assert verdict_of_batch(summary, "b2") is None
    assert verdict_of_batch(tmp_path / "missing.json", "b1") is None
    summary.write_text('{"batch": "b1", "counts": {"done": 1}, "measurement_sets": []}')
    assert verdict_of_batch(summary, "b1") is None  # not laid out as written
