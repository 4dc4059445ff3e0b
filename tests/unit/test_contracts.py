"""The typed contracts between the layers: each reads back what it writes, reads the JSON the
workflow has always written, ignores keys it does not know, and refuses a field of the wrong
type with a message naming it."""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
from contract_examples import (
    make_record,
    make_spec,
    written_marker,
    written_record,
    written_spec,
)
from dp3batch.books.batch_spec import BatchSpec, MSPaths, PendingMS, task_entries
from dp3batch.books.codec import ContractError, write_contract, write_json_object
from dp3batch.books.records import CompletionRecord, write_record
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult, results_from_json, results_to_json
from dp3batch.dask_stage.central_job import (
    failure_report,
    main,
    task_for,
    write_batch_result,
)
from dp3batch.dp3.parameters import DP3Parameters, DP3Step
from dp3batch.report.summary import COLUMNS, iter_rows

# --- round trips --------------------------------------------------------------------------


def test_a_completion_record_round_trips():
    record = make_record(band=1, telescope=None, required_files=("instrument",))
    assert CompletionRecord.from_json(record.to_json()) == record
    assert CompletionRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_dp3s_cpu_time_is_written_after_its_peak_memory_and_reaches_the_summary(tmp_path):
    """A record keeps DP3's CPU time (a record without it reads back unchanged); its
    result and its summary row (JSON and TSV column) carry it."""
    record = make_record(peak_memory_bytes=502534144, dp3_cpu_seconds=12.345)
    data = record.to_json()
    assert list(data)[-2:] == ["peak_memory_bytes", "dp3_cpu_seconds"]
    assert CompletionRecord.from_json(json.loads(json.dumps(data))) == record
    assert "dp3_cpu_seconds" not in make_record().to_json()
    result = TaskResult.from_record(record, "a.log")
    assert result.dp3_cpu_seconds == 12.345
    assert TaskResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    output = tmp_path / "a.ms"
    output.mkdir()
    write_record(output, replace(record, name="a", output=str(output)))
    paths = [MSPaths("a", record.input, str(output))]
    (row,) = iter_rows(paths, [], tmp_path / "logs", set(), None)
    assert row.to_json()["dp3_cpu_seconds"] == 12.345
    assert COLUMNS[-1] == "dp3_cpu_seconds"  # after the older columns of summary.tsv


def test_a_batch_specification_round_trips_through_json():
    spec = make_spec(scheduler="localhost:8786", worker_wait_seconds=2.5)
    assert BatchSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_equal_parameters_of_pending_mss_are_one_object_once_parsed():
    def pending(name: str, strategy: str, fingerprint: str) -> PendingMS:
        parameters = DP3Parameters({}, {}, (DP3Step("flag", "aoflagger", {"strategy": strategy}),))
        return PendingMS(
            name=name,
            input=f"/i/{name}.ms",
            output=f"/o/{name}.ms",
            band=None,
            reason="missing",
            size=1,
            parameters=parameters,
            parameters_fingerprint=fingerprint,
        )

    spec = make_spec(
        measurement_sets=(
            pending("a", "lofar.lua", "f1"),
            pending("b", "lofar.lua", "f1"),
            pending("c", "mwa.lua", "f2"),
            pending("d", "lofar.lua", "f1"),
        )
    )
    parsed = BatchSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert parsed == spec
    a, b, c, d = (ms.parameters for ms in parsed.measurement_sets)
    assert a is b is d
    assert c is not a and c == spec.measurement_sets[2].parameters


@pytest.mark.parametrize(
    "ms",
    [
        PendingMS(name="a", input="/i/a.ms", output="/o/a.ms", band=None, reason="missing", size=0),
        PendingMS(
            name="b_spw1",
            input="/i/b.ms",
            output="/o/b_spw1.ms",
            band=1,
            reason="forced",
            size=12,
            parameters=DP3Parameters({}, {}, ()),
            parameters_fingerprint="f",
            locked_by=4242,
        ),
    ],
    ids=["shared-parameters", "own-parameters"],
)
def test_a_pending_ms_round_trips(ms):
    assert PendingMS.from_json(json.loads(json.dumps(ms.to_json()))) == ms


def test_ms_paths_round_trip():
    paths = MSPaths("a", "/i/a.ms", "/o/a.ms")
    assert MSPaths.from_json(paths.to_json()) == paths


@pytest.mark.parametrize("index", [0, 1, 2], ids=["done", "failed", "not-processed"])
def test_a_task_result_round_trips(index):
    result = TaskResult.from_json(written_marker()[index])
    assert TaskResult.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.parametrize("pending", [0, 1, 3], ids=["no-pending", "one", "three"])
def test_a_specification_written_as_it_is_made_is_the_json_of_to_json(pending):
    """The central job's input, written a field and an MS at a time: the same JSON value as
    `to_json`, hostile names included, and it parses back to the same specification."""
    names = ["a b", 'q"uote', "nön-ascii ✓"][:pending]
    spec = make_spec(
        measurement_sets=tuple(
            PendingMS(
                name=name,
                input=f"/i/{name}.ms",
                output=f"/o/{name}.ms",
                band=None,
                reason="missing",
                size=index,
            )
            for index, name in enumerate(names)
        ),
        all_measurement_sets=tuple(
            MSPaths(name, f"/i/{name}.ms", f"/o/{name}.ms") for name in names
        ),
    )
    handle = io.StringIO()
    write_contract(handle, spec)
    written = handle.getvalue()
    assert json.loads(written) == spec.to_json()
    assert list(json.loads(written)) == list(spec.to_json())
    assert BatchSpec.from_json(json.loads(written)) == spec
    assert written.count("\n") >= 2 * pending  # an MS per line, in both lists


@pytest.mark.parametrize("count", [0, 1, 2])
def test_a_task_list_written_as_its_entries_are_made_reads_back_whole(count):
    spec = make_spec(
        measurement_sets=tuple(
            PendingMS(
                name=f"ms {index}",
                input=f"/i/ms {index}.ms",
                output=f"/o/ms {index}.ms",
                band=None,
                reason="missing",
                size=1,
            )
            for index in range(count)
        )
    )
    handle = io.StringIO()
    write_json_object(handle, (("batch", "b1"), ("tasks", task_entries(spec))))
    written = json.loads(handle.getvalue())
    assert written == {"batch": "b1", "tasks": list(task_entries(spec))}
    assert [task["name"] for task in written["tasks"]] == [f"ms {i}" for i in range(count)]


def test_a_marker_written_as_results_come_is_the_list_of_their_json(tmp_path):
    results = results_from_json(written_marker(), "marker")
    marker = tmp_path / "batch.json"
    write_batch_result(marker, results)
    assert json.loads(marker.read_text()) == written_marker()
    write_batch_result(marker, [])
    assert json.loads(marker.read_text()) == []


# --- what the workflow wrote reads back unchanged -----------------------------------------


def test_the_written_record_reads_back_to_the_same_json():
    assert CompletionRecord.from_json(written_record()).to_json() == written_record()
    assert list(CompletionRecord.from_json(written_record()).to_json()) == list(written_record())


def test_the_written_specification_reads_back_to_the_same_json():
    assert BatchSpec.from_json(written_spec()).to_json() == written_spec()


def test_the_written_marker_reads_back_to_the_same_json_with_each_result_s_keys():
    results = results_from_json(written_marker(), "marker")
    assert [result.status for result in results] == [
        Status.DONE,
        Status.FAILED,
        Status.NOT_PROCESSED,
    ]
    assert list(results_to_json(results)) == written_marker()
    assert [list(entry) for entry in results_to_json(results)] == [
        list(entry) for entry in written_marker()
    ]


def test_a_result_from_a_record_has_the_keys_of_a_done_result():
    """A result lost with the scheduler and rebuilt from the record reads like a live one."""
    done = written_marker()[0]
    record = make_record(name=done["name"], input=done["input"], output=done["output"])
    result = TaskResult.from_record(record, done["log"])
    assert list(result.to_json()) == list(done)
    assert result.status == Status.DONE


# --- unknown keys, wrong types ------------------------------------------------------------


def test_unknown_keys_are_ignored():
    record = CompletionRecord.from_json({**written_record(), "written_by": "a later version"})
    assert record == CompletionRecord.from_json(written_record())
    spec = written_spec()
    spec["measurement_sets"][0]["priority"] = 3
    spec["all_measurement_sets"][0]["note"] = "x"
    assert BatchSpec.from_json({**spec, "new": 1}) == BatchSpec.from_json(written_spec())
    assert TaskResult.from_json({**written_marker()[1], "attempts": 2}) == TaskResult.from_json(
        written_marker()[1]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"numthreads": "1"}, "'numthreads' must be an integer, not str"),
        ({"numthreads": True}, "'numthreads' must be an integer, not bool"),
        ({"duration_seconds": "0.3"}, "'duration_seconds' must be a number, not str"),
        ({"band": "0"}, "'band' must be an integer or null, not str"),
        ({"stations": ["CS001", 2]}, "'stations' must be a list of strings"),
        ({"shape_before": [600]}, "'shape_before' must be an object, not list"),
        ({"parameters": [["steps"]]}, "'parameters' must hold [key, value] pairs"),
        ({"parameters": [["averager.timestep", 2]]}, "'parameters' must hold [key, value] pairs"),
        ({"worker": None}, "'worker' must be a string, not null"),
        ({"format": 2}, "format 2 is not 1"),
    ],
)
def test_a_record_field_of_the_wrong_type_is_refused_by_name(change, message):
    with pytest.raises(ContractError) as error:
        CompletionRecord.from_json({**written_record(), **change}, "completion record /o/a.ms")
    assert str(error.value).startswith("completion record /o/a.ms: ")
    assert message in str(error.value)


def test_a_record_of_an_earlier_version_without_the_size_estimate_still_reads():
    record = written_record()
    del record["size_estimate_bytes"]
    assert CompletionRecord.from_json(record).size_estimate_bytes is None


def test_a_missing_required_field_is_refused_by_name():
    record = written_record()
    del record["dp3_version"]
    with pytest.raises(ContractError, match="'dp3_version' is missing"):
        CompletionRecord.from_json(record)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_id": 7}, "batch specification: 'batch_id' must be a string, not int"),
        ({"local_cluster": {"n_workers": "2"}}, "local_cluster: 'n_workers' must be an integer"),
        ({"worker_wait_seconds": "60"}, "'worker_wait_seconds' must be a number, not str"),
        ({"dask_report_min_seconds": None}, "'dask_report_min_seconds' must be a number, not null"),
        ({"measurement_sets": {}}, "'measurement_sets' must be a list of objects"),
        ({"all_measurement_sets": ["a.ms"]}, "all_measurement_sets[0]: expected a JSON object"),
        ({"parameters": [["steps", "[]"]]}, "'parameters' must be an object, not list"),
        ({"parameters": {"msin": {}}}, "'parameters' is not DP3 parameters"),
    ],
)
def test_a_specification_field_of_the_wrong_type_is_refused_by_name(change, message):
    with pytest.raises(ContractError) as error:
        BatchSpec.from_json({**written_spec(), **change})
    assert message in str(error.value)


def test_a_pending_ms_field_of_the_wrong_type_is_refused_by_name():
    spec = written_spec()
    spec["measurement_sets"][1]["size"] = 1.5
    with pytest.raises(ContractError, match=r"measurement_sets\[1\]: 'size' must be an integer"):
        BatchSpec.from_json(spec)
    spec = written_spec()
    del spec["measurement_sets"][0]["parameters_fingerprint"]
    with pytest.raises(ContractError, match="go together"):
        BatchSpec.from_json(spec)


def test_an_unknown_status_is_refused_naming_the_known_ones():
    with pytest.raises(ContractError, match="'status' 'finished' is not one of 'done'"):
        results_from_json([{**written_marker()[0], "status": "finished"}], "marker m.json")


# --- the consumers --------------------------------------------------------------------------


def test_a_task_takes_the_ms_s_own_parameters_else_the_batch_s():
    spec = make_spec()
    own, shared = (task_for(spec, ms) for ms in spec.measurement_sets)
    assert own.parameters == spec.measurement_sets[0].parameters
    assert own.parameters_fingerprint == spec.measurement_sets[0].parameters_fingerprint
    assert shared.parameters == spec.parameters
    assert shared.parameters_fingerprint == spec.parameters_fingerprint
    assert shared.locked_by == 4242
    assert shared.log == "/data/results/logs/demo_1.log"
    assert own.guard == "/data/results/logs/batches/b1.guard"


def test_the_failure_report_reads_the_typed_results():
    results = results_from_json(written_marker(), "marker")
    assert failure_report(results).splitlines() == [
        "1 of 3 MS(s) failed:",
        "  demo_1 (/data/demo_data/demo_1.ms): DP3 exited with code 1",
        "      DP3: std::exception: No such MS",
        "      log: /data/results/logs/demo_1.log",
        "1 of 3 MS(s) not processed:",
        "  demo_2",
        "  (not run)",
        "Fix the cause and run again: only the MSs not done will be processed.",
    ]


def test_summary_rows_from_typed_results_and_records(tmp_path):
    """A record made by this batch is done, a failed result without one is failed, a record
    of an earlier run is up to date: the rows carry what each says."""
    outputs = {name: tmp_path / f"{name}.ms" for name in ("demo_0", "demo_1", "demo_3")}
    for name in ("demo_0", "demo_3"):
        outputs[name].mkdir()
        record = make_record(name=name, output=str(outputs[name]), batch_id=f"b-{name}")
        write_record(outputs[name], record)
    paths = [MSPaths(name, f"/in/{name}.ms", str(output)) for name, output in outputs.items()]
    results = [replace(TaskResult.from_json(written_marker()[1]), output=str(outputs["demo_1"]))]
    rows = list(iter_rows(paths, results, tmp_path / "logs", {"demo_0", "demo_1"}, "b-demo_0"))
    by_name = {row.name: row.to_json() for row in rows}
    assert {name: row["status"] for name, row in by_name.items()} == {
        "demo_0": Status.DONE,
        "demo_1": Status.FAILED,
        "demo_3": Status.UP_TO_DATE,
    }
    assert by_name["demo_0"]["rows_after"] == 300
    # The dispatch's estimate beside the measured time, for done and failed MSs alike.
    assert by_name["demo_0"]["size_estimate_bytes"] == 1843200
    assert by_name["demo_1"]["size_estimate_bytes"] == 1843200
    assert by_name["demo_0"]["flagged_aoflagger_pct"] == 6.323
    assert by_name["demo_0"]["log"] == str(tmp_path / "logs" / "demo_0.log")
    assert by_name["demo_1"]["error"] == "std::exception: No such MS"
    assert by_name["demo_3"]["error"] is None
    assert json.loads(json.dumps(list(by_name.values())))  # plain JSON, as summary.json has
    assert Path(by_name["demo_0"]["output"]) == outputs["demo_0"]


def test_the_central_job_refuses_a_malformed_specification_with_one_message(tmp_path):
    log_file = tmp_path / "process.log"
    code = main(
        {**written_spec(), "measurement_sets": "demo_0"}, str(tmp_path / "m.json"), str(log_file)
    )
    assert code == 2
    text = log_file.read_text()
    assert "Error: batch specification: 'measurement_sets' must be a list of objects" in text
    assert "Traceback" not in text
    assert not (tmp_path / "m.json").exists()


def test_the_fields_of_issue_24_are_optional_and_written_last():
    """A record names its batch and DP3's peak memory; one of an earlier version (without
    them) reads back to the very same JSON (see the written record above)."""
    record = make_record(batch_id="20261202T101010-0a1b2c3d", peak_memory_bytes=502534144)
    data = record.to_json()
    assert list(data)[-2:] == ["batch_id", "peak_memory_bytes"]
    assert CompletionRecord.from_json(json.loads(json.dumps(data))) == record
    assert "batch_id" not in make_record().to_json()
    result = TaskResult.from_record(record, "a.log")
    assert result.to_json()["peak_memory_bytes"] == 502534144
    pending = PendingMS(
        name="a", input="/i", output="/o", band=None, reason="forced", size=1, record_origin="b"
    )
    assert PendingMS.from_json(pending.to_json()) == pending
    assert "record_origin" not in replace(pending, record_origin=None).to_json()


def test_a_done_result_kept_by_the_batch_names_its_report_files_and_nothing_heavier():
    record = make_record(flag_statistics={"total_pct": 5.0, "png": "/qa/a.png", "zarr": "/z"})
    whole = TaskResult.from_record(record, "/logs/a.log")
    kept = whole.without_statistics()
    assert kept.flag_statistics == {"png": "/qa/a.png", "zarr": "/z"}
    assert kept.flags_by_step is None and kept.stations is None
    assert replace(kept, flag_statistics=None) == replace(
        whole, flag_statistics=None, flags_by_step=None, stations=None
    )
    assert results_from_json(list(results_to_json([kept])), "marker") == [kept]


def test_done_results_kept_by_the_batch_share_the_names_they_repeat():
    """Each result arrives with its own copy of every key of its shapes and step times, and
    of its worker's address; those kept hold one copy for all (the values stay their own)."""

    def arrived(name: str) -> TaskResult:  # as a worker's pickled result is read back
        record = make_record(name=name, worker="tcp://10.0.0.1:40000")
        return pickle.loads(pickle.dumps(TaskResult.from_record(record, f"/logs/{name}.log")))

    first, second = arrived("a"), arrived("b")
    assert [key for key in first.shape_before] == [key for key in second.shape_before]
    assert next(iter(first.shape_before)) is not next(iter(second.shape_before))
    kept_first, kept_second = first.without_statistics(), second.without_statistics()
    assert kept_first.shape_before == first.shape_before
    assert kept_first.step_seconds == first.step_seconds
    for field_name in ("shape_before", "shape_after", "step_seconds"):
        keys = zip(getattr(kept_first, field_name), getattr(kept_second, field_name), strict=True)
        assert all(one is other for one, other in keys), field_name
    assert kept_first.worker is kept_second.worker
