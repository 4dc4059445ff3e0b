"""Unit tests of completion records, fingerprints and pending reasons."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from contract_examples import make_record, written_record
from dp3batch.books.fingerprints import (
    extra_inputs_fingerprint,
    input_fingerprint,
    input_tree,
    listed_fingerprint,
    output_fingerprint,
    output_tree,
)
from dp3batch.books.layout import RECORD_CHECKS_NAME, RECORD_NAME
from dp3batch.books.record_checks import file_identity
from dp3batch.books.records import (
    NOT_MADE_HERE,
    RECORD_FORMAT,
    Expectation,
    RecordStore,
    pending_reason,
    read_record,
    write_record,
)
from dp3batch.dp3.parameters import parameters_fingerprint

PARAMETERS = [
    ("checkparset", "1"),
    ("steps", "[applycal,averager]"),
    ("applycal.type", "applycal"),
    ("applycal.parmdb", "/data/cal/solutions.h5"),
    ("averager.type", "averager"),
    ("averager.timestep", "2"),
]
FILE_KEYS = {"applycal.parmdb"}


def fake_ms(path: Path) -> Path:
    """A directory tree shaped like an MS: table files and a subtable."""
    path.mkdir(parents=True)
    (path / "table.dat").write_bytes(b"main table")
    (path / "table.f0").write_bytes(b"0123456789")
    (path / "table.lock").write_bytes(b"lock")
    (path / "ANTENNA").mkdir()
    (path / "ANTENNA" / "table.dat").write_bytes(b"antennas")
    (path / "ANTENNA" / "table.lock").write_bytes(b"lock")
    return path


def bump_mtime(path: Path, seconds: int = 10) -> None:
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + seconds * 1_000_000_000))


# --- input_fingerprint --------------------------------------------------------------------


def test_input_fingerprint_is_stable(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    assert input_fingerprint(ms) == input_fingerprint(ms)


def test_input_fingerprint_changes_with_size(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    before = input_fingerprint(ms)
    status = (ms / "table.f0").stat()
    (ms / "table.f0").write_bytes(b"0123456789 and more")
    os.utime(ms / "table.f0", ns=(status.st_atime_ns, status.st_mtime_ns))  # same mtime
    assert input_fingerprint(ms) != before


def test_input_fingerprint_changes_with_rewritten_content(tmp_path):
    # Same size; a rewrite moves the mtime (made explicit: timestamps may be coarse).
    ms = fake_ms(tmp_path / "a.ms")
    before = input_fingerprint(ms)
    (ms / "ANTENNA" / "table.dat").write_bytes(b"ANTENNAS")
    bump_mtime(ms / "ANTENNA" / "table.dat")
    assert input_fingerprint(ms) != before


def test_input_fingerprint_changes_with_mtime_alone(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    before = input_fingerprint(ms)
    bump_mtime(ms / "table.dat", seconds=1)
    assert input_fingerprint(ms) != before


def test_input_fingerprint_changes_with_a_new_file(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    before = input_fingerprint(ms)
    (ms / "table.f1").write_bytes(b"")
    assert input_fingerprint(ms) != before


def test_input_fingerprint_ignores_table_lock(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    before = input_fingerprint(ms)
    for lock in (ms / "table.lock", ms / "ANTENNA" / "table.lock"):
        lock.write_bytes(b"a longer lock content")
        bump_mtime(lock)
    assert input_fingerprint(ms) == before
    (ms / "table.lock").unlink()
    assert input_fingerprint(ms) == before


def test_input_fingerprint_differs_between_ms(tmp_path):
    first = fake_ms(tmp_path / "a.ms")
    second = fake_ms(tmp_path / "b.ms")
    (second / "table.f0").write_bytes(b"01234567890")
    assert input_fingerprint(first) != input_fingerprint(second)


def test_the_listed_fingerprint_equals_the_walk_over_the_same_files(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    for name in ("table.f1", "table.f10", "table.f1i", "table.f2_TSM0"):
        (ms / name).write_bytes(name.encode())
    (tmp_path / "data.bin").write_bytes(b"kept elsewhere")
    (ms / "table.f3").symlink_to(tmp_path / "data.bin")  # counted as the file it links to
    tree = input_tree(ms)
    # Line order, as records have always been hashed: `table.f10:` before `table.f1:`.
    assert tree.files.index("table.f10") < tree.files.index("table.f1")
    assert "table.lock" not in tree.files and "ANTENNA/table.lock" not in tree.files
    assert listed_fingerprint(ms, tree.files) == tree.fingerprint == input_fingerprint(ms)


def test_the_listed_fingerprint_sees_a_changed_or_missing_file(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    tree = input_tree(ms)
    bump_mtime(ms / "ANTENNA" / "table.dat")
    assert listed_fingerprint(ms, tree.files) not in (None, tree.fingerprint)
    (ms / "table.f0").unlink()
    assert listed_fingerprint(ms, tree.files) is None
    assert listed_fingerprint(tmp_path / "gone.ms", tree.files) is None


def test_the_listed_fingerprint_refuses_names_outside_the_tree(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    (tmp_path / "elsewhere").write_text("x")
    assert listed_fingerprint(ms, ["../elsewhere"]) is None
    assert listed_fingerprint(ms, [str(tmp_path / "elsewhere")]) is None
    assert listed_fingerprint(ms, ["table.dat", "ANTENNA/../../elsewhere"]) is None


def test_the_output_tree_leaves_out_the_record_and_parset(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    (ms / RECORD_NAME).write_text("{}")
    (ms / "dp3.parset").write_text("msin=x")
    tree = output_tree(ms)
    assert tree.files == ("ANTENNA/table.dat", "table.dat", "table.f0")
    assert tree.fingerprint == output_fingerprint(ms)


def test_a_tree_counts_the_bytes_of_every_file_the_fingerprint_leaves_out_included(tmp_path):
    ms = fake_ms(tmp_path / "a.ms")
    (ms / RECORD_NAME).write_text("{}")
    (ms / "dp3.parset").write_text("msin=x")
    (ms / "outside").write_bytes(b"x" * 1000)
    (ms / "link").symlink_to(ms / "outside")  # a link's target is counted once, as du does
    expected = sum(
        path.lstat().st_size for path in ms.rglob("*") if path.is_file() and not path.is_symlink()
    )
    assert expected == 10 + 10 + 4 + 8 + 4 + 2 + 6 + 1000
    assert output_tree(ms).total_bytes == expected
    assert input_tree(ms).total_bytes == expected


def _plain_fingerprint(path: Path, skipped: set[str]) -> str:
    """The fingerprint as the records written so far define it, computed the plain way."""
    import hashlib

    entries = []
    for root, _, files in os.walk(path):
        relative = os.path.relpath(root, path)
        for name in files:
            if name == "table.lock" or (relative == "." and name in skipped):
                continue
            status = os.stat(os.path.join(root, name))
            prefix = "" if relative == "." else f"{relative}/"
            entries.append(f"{prefix}{name}:{status.st_size}:{status.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def test_fingerprints_match_the_records_already_written(tmp_path):
    """The fast walk (directory descriptors) gives the same value as before, so outputs made
    by earlier versions stay up to date."""
    ms = fake_ms(tmp_path / "a.ms")
    (ms / "ANTENNA" / "sub").mkdir()
    (ms / "ANTENNA" / "sub" / "table.f1").write_bytes(b"nested")
    (ms / RECORD_NAME).write_text("{}")
    assert input_fingerprint(ms) == _plain_fingerprint(ms, set())
    assert output_fingerprint(ms) == _plain_fingerprint(ms, {RECORD_NAME, "dp3.parset"})


def _settled(path: Path) -> None:
    """Date a file a minute back, as a record from an earlier run is."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - 60_000_000_000))


def test_read_record_sees_a_record_edited_in_place(tmp_path):
    output = tmp_path / "out.ms"
    output.mkdir()
    path = output / RECORD_NAME
    path.write_text(json.dumps({**written_record(), "dp3_version": "6.6.0"}))
    _settled(path)
    assert read_record(output).dp3_version == "6.6.0"
    with open(path, "r+") as handle:  # same inode, same size, only the content differs
        handle.write(json.dumps({**written_record(), "dp3_version": "6.7.0"}))
    assert read_record(output).dp3_version == "6.7.0"


def test_a_store_sees_a_replaced_record_and_shares_a_frozen_one(tmp_path):
    output = tmp_path / "out.ms"
    output.mkdir()
    write_record(output, make_record(dp3_version="6.6.0"))
    _settled(output / RECORD_NAME)
    store = RecordStore()
    first = store.record(output)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.dp3_version = "changed by a caller"
    assert store.record(output) is first  # no copy per read: nobody can change it
    write_record(output, make_record(dp3_version="6.7.0"))
    assert store.record(output).dp3_version == "6.7.0"
    (output / RECORD_NAME).unlink()
    assert store.record(output) is None


# --- parameters_fingerprint / extra_inputs_fingerprint ------------------------------------


def replaced(parameters, key, value):
    return [(k, value if k == key else v) for k, v in parameters]


def test_parameters_fingerprint_ignores_paths_of_file_parameters():
    moved = replaced(PARAMETERS, "applycal.parmdb", "/elsewhere/solutions.h5")
    assert parameters_fingerprint(moved, FILE_KEYS) == parameters_fingerprint(PARAMETERS, FILE_KEYS)


def test_parameters_fingerprint_sees_paths_of_other_keys():
    moved = replaced(PARAMETERS, "applycal.parmdb", "/elsewhere/solutions.h5")
    assert parameters_fingerprint(moved) != parameters_fingerprint(PARAMETERS)


@pytest.mark.parametrize(
    "changed",
    [
        replaced(PARAMETERS, "averager.timestep", "4"),
        [*PARAMETERS, ("averager.freqstep", "2")],
        PARAMETERS[:-1],
        replaced(PARAMETERS, "steps", "[averager,applycal]"),
    ],
    ids=["value", "added", "removed", "steps"],
)
def test_parameters_fingerprint_sees_other_changes(changed):
    assert parameters_fingerprint(changed, FILE_KEYS) != parameters_fingerprint(
        PARAMETERS, FILE_KEYS
    )


def test_parameters_fingerprint_sees_a_file_parameter_appearing():
    without = [pair for pair in PARAMETERS if pair[0] != "applycal.parmdb"]
    assert parameters_fingerprint(without, FILE_KEYS) != parameters_fingerprint(
        PARAMETERS, FILE_KEYS
    )


def test_extra_inputs_fingerprint_changes_with_content(tmp_path):
    solutions = tmp_path / "solutions.h5"
    solutions.write_bytes(b"gains v1")
    files = [("applycal.parmdb", str(solutions))]
    before = extra_inputs_fingerprint(files)
    assert extra_inputs_fingerprint(files) == before
    solutions.write_bytes(b"gains v2")
    assert extra_inputs_fingerprint(files) != before


def test_extra_inputs_fingerprint_ignores_the_path(tmp_path):
    first = tmp_path / "a" / "solutions.h5"
    second = tmp_path / "b" / "renamed.h5"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"gains")
    assert extra_inputs_fingerprint([("applycal.parmdb", str(first))]) == extra_inputs_fingerprint(
        [("applycal.parmdb", str(second))]
    )


def test_extra_inputs_fingerprint_sees_a_missing_file(tmp_path):
    solutions = tmp_path / "solutions.h5"
    solutions.write_bytes(b"")
    files = [("applycal.parmdb", str(solutions))]
    before = extra_inputs_fingerprint(files)
    solutions.unlink()
    assert extra_inputs_fingerprint(files) != before


def test_extra_inputs_fingerprint_of_no_files_is_constant():
    assert extra_inputs_fingerprint([]) == extra_inputs_fingerprint([])


# --- records and pending_reason -----------------------------------------------------------


@pytest.fixture(params=["files listed", "files not listed", "checks kept"])
def setup(tmp_path, request):
    """An input MS, its complete output with a matching record, and the expectation. The
    record lists the files its fingerprints cover, as records do now, or not, as records of
    earlier versions (their files are then walked); or, as on a rerun after the one that
    first checked it, what a rerun checks of it was kept (see record_checks)."""
    input_ms = fake_ms(tmp_path / "data" / "a.ms")
    output = fake_ms(tmp_path / "results" / "a.ms")
    expected = Expectation(
        parameters_fingerprint=parameters_fingerprint(PARAMETERS, FILE_KEYS),
        extra_inputs_fingerprint="extra-1",
        dp3_version="6.6.0",
    )
    listed = request.param != "files not listed"
    write_record(
        output,
        make_record(
            parameters_fingerprint=expected.parameters_fingerprint,
            extra_inputs_fingerprint=expected.extra_inputs_fingerprint,
            dp3_version=expected.dp3_version,
            input_fingerprint=input_fingerprint(input_ms),
            output_fingerprint=output_fingerprint(output),
            input_files=input_tree(input_ms).files if listed else None,
            output_files=output_tree(output).files if listed else None,
            worker="tcp://127.0.0.1:40000",
        ),
    )
    store = RecordStore()
    if request.param == "checks kept":
        _settled(output / RECORD_NAME)
        checks_file = tmp_path / "results" / RECORD_CHECKS_NAME
        RecordStore().keep_checks(checks_file, [output])
        store = RecordStore.load(checks_file)
        assert store.kept.check(str(output / RECORD_NAME), _identity(output)) is not None
    return input_ms, output, expected, store


def _identity(output: Path):
    return file_identity(os.stat(output / RECORD_NAME))


def test_write_record_then_read_record(setup):
    _, output, _, _ = setup
    record = read_record(output)
    assert json.loads((output / RECORD_NAME).read_text())["format"] == RECORD_FORMAT
    assert record.dp3_version == "6.6.0"
    assert record.worker == "tcp://127.0.0.1:40000"
    assert [path.name for path in output.iterdir() if path.name.startswith(".")] == []


def test_a_record_as_the_workflow_writes_it_reads_back_unchanged(tmp_path):
    """The file on disk keeps its keys, types and order: outputs made before stay valid."""
    output = tmp_path / "out.ms"
    output.mkdir()
    (output / RECORD_NAME).write_text(json.dumps(written_record(), indent=2) + "\n")
    record = read_record(output)
    assert record.to_json() == written_record()
    write_record(output, record)
    assert (output / RECORD_NAME).read_text() == json.dumps(written_record(), indent=2) + "\n"


def test_up_to_date_output_is_not_pending(setup):
    assert pending_reason(*setup) is None


def test_missing_output_is_pending(tmp_path, setup):
    input_ms, _, expected, store = setup
    assert pending_reason(input_ms, tmp_path / "results" / "b.ms", expected, store) == "missing"


def test_output_without_any_record_was_not_made_by_the_workflow(setup):
    """Outputs are committed with their record: one without was made by something else."""
    input_ms, output, expected, store = setup
    (output / RECORD_NAME).unlink()
    assert pending_reason(input_ms, output, expected, store) == NOT_MADE_HERE


def test_an_empty_directory_at_the_output_path_is_only_incomplete(tmp_path, setup):
    input_ms, _, expected, store = setup
    output = tmp_path / "results" / "empty.ms"
    output.mkdir()
    assert pending_reason(input_ms, output, expected, store) == "incomplete"
    (tmp_path / "results" / "dangling.ms").symlink_to(tmp_path / "nowhere")
    assert (
        pending_reason(input_ms, tmp_path / "results" / "dangling.ms", expected, store)
        == NOT_MADE_HERE
    )


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[1, 2]",
        '"a string"',
        json.dumps({**written_record(), "format": RECORD_FORMAT + 1}),
        json.dumps({key: value for key, value in written_record().items() if key != "format"}),
        json.dumps({**written_record(), "numthreads": "2"}),
        json.dumps({key: value for key, value in written_record().items() if key != "worker"}),
    ],
    ids=[
        "empty",
        "garbage",
        "list",
        "string",
        "newer-format",
        "no-format",
        "wrong-type",
        "no-worker",
    ],
)
def test_unreadable_or_foreign_record_is_incomplete(setup, content):
    input_ms, output, expected, store = setup
    (output / RECORD_NAME).write_text(content)
    assert read_record(output) is None
    assert pending_reason(input_ms, output, expected, store) == "incomplete"


def test_binary_garbage_record_is_incomplete(setup):
    input_ms, output, expected, store = setup
    (output / RECORD_NAME).write_bytes(b"\xff\xfe\x00garbage")
    assert pending_reason(input_ms, output, expected, store) == "incomplete"


def test_output_that_is_a_file_was_not_made_by_the_workflow(tmp_path, setup):
    input_ms, _, expected, store = setup
    output = tmp_path / "results" / "file.ms"
    output.write_text("")
    assert pending_reason(input_ms, output, expected, store) == NOT_MADE_HERE


def test_changed_steps_are_pending(setup):
    input_ms, output, expected, store = setup
    changed = Expectation(
        parameters_fingerprint=parameters_fingerprint(
            replaced(PARAMETERS, "averager.timestep", "4"), FILE_KEYS
        ),
        extra_inputs_fingerprint=expected.extra_inputs_fingerprint,
        dp3_version=expected.dp3_version,
    )
    assert pending_reason(input_ms, output, changed, store) == "steps changed"


def test_changed_extra_inputs_are_pending(setup):
    input_ms, output, expected, store = setup
    changed = Expectation(expected.parameters_fingerprint, "extra-2", expected.dp3_version)
    assert (
        pending_reason(input_ms, output, changed, store) == "calibration or sky model file changed"
    )


def test_changed_dp3_version_is_pending(setup):
    input_ms, output, expected, store = setup
    changed = Expectation(
        expected.parameters_fingerprint, expected.extra_inputs_fingerprint, "6.7.0"
    )
    assert pending_reason(input_ms, output, changed, store) == "DP3 changed"


def test_changed_input_is_pending(setup):
    input_ms, output, expected, store = setup
    bump_mtime(input_ms / "table.f0")
    assert pending_reason(input_ms, output, expected, store) == "input changed"


def test_input_lock_file_change_is_not_pending(setup):
    input_ms, output, expected, store = setup
    (input_ms / "table.lock").write_bytes(b"opened by someone")
    bump_mtime(input_ms / "table.lock")
    assert pending_reason(input_ms, output, expected, store) is None


def test_record_of_an_older_version_without_output_fingerprint_is_pending(setup):
    """Fields later versions added are optional: such a record reads, and its output is
    pending for what it lacks."""
    input_ms, output, expected, store = setup
    record = json.loads((output / RECORD_NAME).read_text())
    del record["output_fingerprint"]
    (output / RECORD_NAME).write_text(json.dumps(record))
    assert read_record(output) is not None
    assert pending_reason(input_ms, output, expected, store) == "output changed"


@pytest.mark.parametrize(
    "damage",
    [
        lambda output: (output / "table.f0").unlink(),
        lambda output: os.truncate(output / "table.f0", 1),
        lambda output: shutil.rmtree(output / "ANTENNA"),
        lambda output: _rewrite(output / "ANTENNA" / "table.dat"),
    ],
    ids=["file deleted", "file truncated", "subtable removed", "file rewritten"],
)
def test_damaged_output_is_pending_as_output_changed(setup, damage):
    input_ms, output, expected, store = setup
    damage(output)
    assert pending_reason(input_ms, output, expected, store) == "output changed"


def _rewrite(path: Path) -> None:
    """Same size, new content and (explicitly: timestamps may be coarse) a later mtime."""
    path.write_bytes(path.read_bytes().upper())
    bump_mtime(path)


def test_a_file_added_to_an_output_counts_only_for_records_without_file_lists(setup, request):
    """casacore reads no file that its tables do not name, and naming one rewrites a listed
    `table.dat`: a listed record is checked by a stat of its files, no directory listing."""
    input_ms, output, expected, store = setup
    (output / "ANTENNA" / "notes.txt").write_text("looked fine")
    listed = request.node.callspec.params["setup"] != "files not listed"
    assert pending_reason(input_ms, output, expected, store) == (
        None if listed else "output changed"
    )


def test_output_record_and_parset_do_not_count_as_output_content(setup):
    input_ms, output, expected, store = setup
    (output / "dp3.parset").write_text("msin=x\n")
    record = read_record(output)
    write_record(output, dataclasses.replace(record, worker="elsewhere"))
    assert pending_reason(input_ms, output, expected, store) is None
