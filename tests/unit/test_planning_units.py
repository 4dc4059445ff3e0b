"""Unit tests of cluster sizing, the dry-run listing, batch ids, extra input checks and the
shape expectations of an output."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import pytest
from dp3batch.books.records import NOT_MADE_HERE, Expectation
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dask_stage.cluster import local_cluster_size, worker_command
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.inputs.discovery import WorkItem
from dp3batch.inputs.step_files import check_extra_inputs
from dp3batch.planning.plan import (
    Plan,
    batch_id,
    describe_pending,
    refuse_replacing_what_the_workflow_did_not_make,
)

NOW = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


# --- local_cluster_size -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "pending", "expected"),
    [
        (2, 10, (2, 1)),
        (2, 1, (1, 2)),
        (2, 2, (2, 1)),
        (8, 2, (2, 4)),
        (1, 5, (1, 1)),
        (2, 0, (1, 2)),
        (0, 3, (1, 1)),
    ],
)
def test_local_cluster_size_fits_the_machine(cores, pending, expected):
    assert local_cluster_size(cores, pending) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_workers": 3}, (3, 1)),
        ({"n_workers": 1}, (1, 4)),
        ({"threads_per_worker": 2}, (2, 2)),
        ({"threads_per_worker": 8}, (1, 8)),
        ({"n_workers": 3, "threads_per_worker": 3}, (3, 3)),
    ],
)
def test_local_cluster_size_respects_explicit_values(kwargs, expected):
    assert local_cluster_size(4, 10, **kwargs) == expected


@pytest.mark.parametrize("cores", [0, 1, 2, 3, 4, 16])
@pytest.mark.parametrize("pending", [0, 1, 2, 5, 100])
def test_local_cluster_size_is_never_zero_nor_oversubscribed(cores, pending):
    workers, threads = local_cluster_size(cores, pending)
    assert workers >= 1 and threads >= 1
    assert workers * threads <= max(1, cores)
    assert workers <= max(1, pending)


# --- worker_command -----------------------------------------------------------------------


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "10.0.0.5:8786"])
def test_worker_command_gives_the_process_resource(address):
    command = worker_command(address)
    assert command.startswith("dask worker 10.0.0.5:8786 ")
    assert '--resources "process=1"' in command
    assert "tcp://" not in command


# --- describe_pending / batch_id ----------------------------------------------------------


def make_plan(tmp_path: Path, names: list[str], pending: dict[str, str]) -> Plan:
    output_dir = tmp_path / "results"
    measurement_sets = [
        WorkItem(name, tmp_path / "data" / f"{name}.ms", output_dir / f"{name}.ms")
        for name in names
    ]
    return Plan(
        scheduler=None,
        chain=parse_steps([]),
        output_dir=output_dir,
        dp3_executable="/usr/bin/DP3",
        dp3_version="6.6.0",
        parameters=DP3Parameters({}, {}, ()),
        expectation=Expectation("p", "e", "6.6.0"),
        measurement_sets=measurement_sets,
        pending=[(ms, pending[ms.name]) for ms in measurement_sets if ms.name in pending],
    )


def test_describe_pending_when_nothing_is_pending(tmp_path):
    text = describe_pending(make_plan(tmp_path, ["a", "b", "c"], {}))
    assert "All 3 MS(s)" in text
    assert str(tmp_path / "results") in text
    assert "complete and up to date" in text


def test_describe_pending_lists_each_pending_ms_with_its_reason(tmp_path):
    plan = make_plan(tmp_path, ["a", "b", "c"], {"a": "missing", "c": "steps changed"})
    lines = describe_pending(plan).splitlines()
    assert "2 of 3 MS(s) to process" in lines[0]
    assert "6.6.0" in lines[0]
    assert lines[1:] == ["  a: missing", "  c: steps changed"]


def test_describe_pending_limits_a_long_listing(tmp_path):
    names = [f"ms{index:03d}" for index in range(12)]
    plan = make_plan(tmp_path, names, dict.fromkeys(names, "missing"))
    lines = describe_pending(plan, limit=5).splitlines()
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == "  ... and 7 more"


def test_batch_id_format():
    assert re.fullmatch(r"20250304T050607-[0-9a-f]{8}", batch_id(NOW))


def test_batch_id_uses_the_current_time_by_default():
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", batch_id())


def test_two_batches_planned_in_the_same_second_have_different_ids():
    # Two runs on one output directory: each must know its own records from the other's.
    assert len({batch_id(NOW) for _ in range(100)}) == 100


# --- check_extra_inputs -------------------------------------------------------------------


def test_check_extra_inputs_accepts_existing_files(tmp_path):
    (tmp_path / "solutions.h5").write_bytes(b"gains")
    check_extra_inputs([("applycal.parmdb", str(tmp_path / "solutions.h5"))])
    check_extra_inputs([])


def test_check_extra_inputs_names_step_and_missing_path(tmp_path):
    (tmp_path / "solutions.h5").write_bytes(b"gains")
    missing = tmp_path / "sky.skymodel"
    with pytest.raises(ConfigError) as caught:
        check_extra_inputs(
            [
                ("applycal.parmdb", str(tmp_path / "solutions.h5")),
                ("predict2.sourcedb", str(missing)),
            ]
        )
    message = str(caught.value)
    assert "predict2" in message
    assert "sourcedb" in message
    assert str(missing) in message
    assert "extra_inputs_dir" in message


def test_check_extra_inputs_rejects_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="applycal parmdb"):
        check_extra_inputs([("applycal.parmdb", str(tmp_path))])


def test_check_extra_inputs_names_an_unreadable_file(tmp_path, monkeypatch):
    solutions = tmp_path / "solutions.h5"
    solutions.write_bytes(b"gains")
    real_access = os.access
    # Root may read any file: simulate the permission check failing for this one.
    monkeypatch.setattr(
        os, "access", lambda path, mode: mode != os.R_OK and real_access(path, mode)
    )
    with pytest.raises(ConfigError, match="not readable") as caught:
        check_extra_inputs([("applycal.parmdb", str(solutions))])
    assert "applycal parmdb" in str(caught.value)
    assert str(solutions) in str(caught.value)


def test_outputs_the_workflow_did_not_make_are_named_and_never_replaced(tmp_path):
    items = [
        WorkItem(f"obs_{index}", tmp_path / f"obs_{index}.ms", tmp_path / "out" / f"obs_{index}.ms")
        for index in range(8)
    ]
    reasons = ["missing", None, *[NOT_MADE_HERE] * 6]
    with pytest.raises(ConfigError) as caught:
        refuse_replacing_what_the_workflow_did_not_make(items, reasons, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(
        f"output_dir: 6 output path(s) in {tmp_path / 'out'} already hold something without "
        "a completion record"
    )
    named = ", ".join(str(tmp_path / "out" / f"obs_{index}.ms") for index in range(2, 7))
    assert f"would replace it: {named} and 1 more. Nothing is deleted" in message
    assert message.endswith("move them away (or delete them), or choose another output_dir")
    refuse_replacing_what_the_workflow_did_not_make(items[:2], reasons[:2], tmp_path / "out")
