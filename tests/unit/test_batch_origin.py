"""Which batch made a completion record is decided by the batch id written into it, never by
comparing one host's clock with another's: a record stamped by a worker whose clock runs
ahead (or behind) is neither taken for this batch's work nor for another run's."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from contract_examples import make_record, make_spec
from dp3batch.books.batch_spec import MSPaths, PendingMS
from dp3batch.books.fingerprints import input_tree, output_tree
from dp3batch.books.records import RecordStore, record_origin, write_record
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.dask_stage.central_job import BatchRun, still_pending
from dp3batch.report.summary import iter_rows

PLANNED_AT = "2026-12-01T10:00:00.000+00:00"
# Stamps of a worker whose clock runs a day ahead of, or behind, the host that planned.
AHEAD = "2026-12-02T10:00:00.000+00:00"
BEHIND = "2026-11-30T10:00:00.000+00:00"


def _fake_ms(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "table.dat").write_bytes(b"main table")
    return path


def _up_to_date_output(tmp_path: Path, name: str, **fields) -> tuple[Path, Path]:
    """An input and an output whose record matches them and the example batch."""
    spec = make_spec()
    source = _fake_ms(tmp_path / "in" / f"{name}.ms")
    output = _fake_ms(tmp_path / "out" / f"{name}.ms")
    inputs, outputs = input_tree(source), output_tree(output)
    record = make_record(
        name=name,
        input=str(source),
        output=str(output),
        parameters_fingerprint=spec.parameters_fingerprint,
        extra_inputs_fingerprint=spec.extra_inputs_fingerprint,
        dp3_version=spec.dp3_version,
        input_fingerprint=inputs.fingerprint,
        input_files=inputs.files,
        output_fingerprint=outputs.fingerprint,
        output_files=outputs.files,
        **fields,
    )
    write_record(output, record)
    return source, output


def _batch(tmp_path: Path, pending: list[PendingMS]):
    return make_spec(
        batch_id="this-batch",
        planned_at=PLANNED_AT,
        output_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "out" / "logs"),
        all_measurement_sets=tuple(MSPaths(ms.name, ms.input, ms.output) for ms in pending),
        measurement_sets=tuple(pending),
    )


def _pending(name: str, source: Path, output: Path, reason: str, origin: str | None):
    return PendingMS(
        name=name,
        input=str(source),
        output=str(output),
        band=None,
        reason=reason,
        size=1,
        record_origin=origin,
    )


def test_the_origin_is_the_batch_else_the_finished_stamp_of_an_earlier_version():
    assert record_origin(None) is None
    assert record_origin(make_record(batch_id="b7")) == "b7"
    assert record_origin(make_record()) == "finished 2026-11-28T04:14:06.830+00:00"


def test_forcing_an_ms_whose_record_a_fast_clock_stamped_in_the_future_processes_it(tmp_path):
    """-F: the record is the one seen at planning, whatever its clock said: not dropped."""
    source, output = _up_to_date_output(tmp_path, "a", batch_id="old", finished=AHEAD)
    ms = _pending("a", source, output, "forced", origin="old")
    pending, completed = still_pending(_batch(tmp_path, [ms]), RecordStore())
    assert [item.name for item in pending] == ["a"]
    assert completed == []


def test_a_record_another_run_made_meanwhile_drops_the_ms_whatever_its_clock(tmp_path):
    """Made by another batch since planning (its origin changed), stamped a day earlier than
    the planning by a slow clock: still completed by another run meanwhile."""
    source, output = _up_to_date_output(tmp_path, "a", batch_id="other", finished=BEHIND)
    for seen in (None, "old"):  # missing at planning, or an older record then
        ms = _pending("a", source, output, "missing", origin=seen)
        pending, completed = still_pending(_batch(tmp_path, [ms]), RecordStore())
        assert (pending, completed) == ([], ["a"])


def test_a_record_of_an_earlier_version_is_told_apart_by_its_finished_stamp(tmp_path):
    source, output = _up_to_date_output(tmp_path, "a", finished=AHEAD)
    seen = f"finished {AHEAD}"
    pending, _ = still_pending(
        _batch(tmp_path, [_pending("a", source, output, "forced", seen)]), RecordStore()
    )
    assert [item.name for item in pending] == ["a"]


def test_a_failure_of_this_batch_wins_over_a_record_it_did_not_write(tmp_path):
    """A stale record stamped in the future by a fast clock is not this batch's work."""
    source, output = _up_to_date_output(tmp_path, "a", batch_id="old", finished=AHEAD)
    paths = [MSPaths("a", str(source), str(output))]
    failed = TaskResult(
        name="a",
        input=str(source),
        output=str(output),
        log="a.log",
        status=Status.FAILED,
        reason="DP3 exited with code 1",
    )
    rows = list(iter_rows(paths, [failed], tmp_path / "logs", {"a"}, "this-batch"))
    assert rows[0].status == Status.FAILED
    run = BatchRun(_batch(tmp_path, [_pending("a", source, output, "input changed", "old")]))
    assert run.final_results("not run")[0].status == Status.NOT_PROCESSED


def test_a_record_this_batch_made_is_done_even_stamped_before_the_planning(tmp_path):
    """A worker whose clock runs behind: its record still counts as this batch's work, also
    when its result was lost (rebuilt from the record)."""
    source, output = _up_to_date_output(tmp_path, "a", batch_id="this-batch", finished=BEHIND)
    paths = [MSPaths("a", str(source), str(output))]
    rows = list(iter_rows(paths, [], tmp_path / "logs", {"a"}, "this-batch"))
    assert rows[0].status == Status.DONE
    run = BatchRun(_batch(tmp_path, [_pending("a", source, output, "missing", None)]))
    result = run.final_results("its worker was lost")[0]
    assert result.status == Status.DONE
    assert replace(result, log="").finished == BEHIND


def test_an_ms_another_run_completed_meanwhile_is_up_to_date_not_unprocessed(tmp_path):
    """The run that waited for the lock processes nothing of it and must not fail for it:
    its result and its summary row say up to date, from the other run's record."""
    source, output = _up_to_date_output(tmp_path, "a", batch_id="other", finished=BEHIND)
    batch = _batch(tmp_path, [_pending("a", source, output, "missing", None)])
    run = BatchRun(batch)
    run.completed_elsewhere = {"a"}
    (result,) = run.final_results("not run")
    assert result.status == Status.UP_TO_DATE
    paths = [MSPaths("a", str(source), str(output))]
    rows = list(iter_rows(paths, [result], tmp_path / "logs", {"a"}, "this-batch"))
    assert rows[0].status == Status.UP_TO_DATE


def test_a_store_that_keeps_only_checks_reads_each_record_once_and_keeps_its_check(
    tmp_path, monkeypatch
):
    """The central job's store: the summary parses every record once; what the next run
    checks of each is then kept without reading any again."""
    from dp3batch.books import records
    from dp3batch.books.record_checks import KeptChecks

    source, output = _up_to_date_output(tmp_path, "a", batch_id="b1")
    record_file = output / "dp3_completion.json"
    settled = record_file.stat().st_mtime_ns - 2 * records.SETTLED_NS
    os.utime(record_file, ns=(settled, settled))
    store = RecordStore(keep_records=False)
    record = store.record(output)
    assert record is not None and record.batch_id == "b1"
    assert not store._parsed  # the record itself is not kept

    def no_second_read(text, path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(records, "_parse_record", no_second_read)
    assert store.check(output) == record.check()
    checks = tmp_path / "checks.json"
    store.keep_checks(checks, [output])
    kept = KeptChecks.load(checks)
    assert kept.check(str(record_file), _identity(record_file)) == record.check()


def _identity(path: Path):
    from dp3batch.books.record_checks import file_identity

    return file_identity(os.stat(path))
