"""Unit tests of the record checks kept between runs (record_checks) and of the record store
that trusts them (records.RecordStore)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
from contract_examples import make_record
from dp3batch.books import records as completion
from dp3batch.books.layout import RECORD_CHECKS_NAME, RECORD_NAME
from dp3batch.books.record_checks import without_collections
from dp3batch.books.records import RecordStore, write_record


@pytest.fixture
def kept(tmp_path):
    """An output whose settled record's check was kept, and a store that loaded it, as a
    rerun's pass has it; the checks file; and the record."""
    output = tmp_path / "results" / "a.ms"
    output.mkdir(parents=True)
    write_record(output, make_record(dp3_version="6.6.0"))
    _settle(output / RECORD_NAME)
    checks_file = tmp_path / "results" / RECORD_CHECKS_NAME
    RecordStore().keep_checks(checks_file, [output], "digest-1")
    return output, checks_file, RecordStore().record(output), RecordStore.load(checks_file)


def _settle(path: Path) -> None:
    """Date a file a minute back, as a record of an earlier run is."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - 60_000_000_000))


@pytest.fixture
def no_record_read(monkeypatch):
    """Reading a record's text is an error: what is returned must be the kept check."""

    def refuse(text, path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(completion, "_parse_record", refuse)


def test_a_kept_check_is_used_without_reading_the_record(kept, no_record_read):
    output, _, record, store = kept
    assert store.check(output) == record.check()


def test_a_record_rewritten_by_the_workflow_is_read_again(kept):
    output, _, _, store = kept
    write_record(output, make_record(dp3_version="6.7.0"))
    assert store.check(output).dp3_version == "6.7.0"


def test_a_kept_check_asked_again_is_built_once_and_not_trusted_once_its_record_changes(kept):
    """Planning asks for an output's check up to three times in its pass: the second answer
    is the first, while the record's file is the same."""
    output, _, _, store = kept
    first = store.check(output)
    assert store.check(output) is first
    write_record(output, make_record(dp3_version="6.7.0"))
    assert store.check(output).dp3_version == "6.7.0"
    (output / RECORD_NAME).unlink()
    assert store.check(output) is None


def test_a_record_edited_in_place_with_its_size_and_time_set_back_is_read_again(kept):
    output, _, _, store = kept
    path = output / RECORD_NAME
    status = path.stat()
    text = path.read_text()
    path.write_text(text.replace('"6.6.0"', '"6.9.0"'))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size
    assert path.stat().st_mtime_ns == status.st_mtime_ns
    assert store.check(output).dp3_version == "6.9.0"  # its change time gives it away


def test_a_deleted_record_has_no_check(kept):
    output, _, _, store = kept
    (output / RECORD_NAME).unlink()
    assert store.check(output) is None


@pytest.mark.parametrize(
    "content", ["", "{not json", "[]", json.dumps({"format": 99, "entries": {}})]
)
def test_an_unreadable_checks_file_means_every_record_is_read(kept, content):
    output, checks_file, record, _ = kept
    checks_file.write_text(content)
    store = RecordStore.load(checks_file)
    reads = []
    original = completion._parse_record
    completion._parse_record = lambda text, path: reads.append(path) or original(text, path)
    try:
        assert store.check(output) == record.check()
    finally:
        completion._parse_record = original
    assert reads == [str(output / RECORD_NAME)]


@pytest.mark.parametrize(
    "change",
    [
        lambda entry, lists: entry.__setitem__(10, 6),  # dp3_version not text
        lambda entry, lists: entry.__setitem__(13, 7),  # no such list of files
        lambda entry, lists: lists[0].append(3),  # a file name that is not text
        lambda entry, lists: entry.__setitem__(6, "windows"),  # not an object
        lambda entry, lists: entry.pop(),  # too short
    ],
    ids=["version", "file list", "file name", "windows", "short"],
)
def test_an_entry_that_does_not_fit_is_not_used(kept, change):
    output, checks_file, record, _ = kept
    data = json.loads(checks_file.read_text())
    (entry,) = data["entries"].values()
    change(entry, data["file_lists"])
    checks_file.write_text(json.dumps(data))
    assert RecordStore.load(checks_file).check(output) == record.check()


def test_the_file_is_rewritten_only_when_the_records_changed(kept):
    output, checks_file, _, store = kept
    inode = checks_file.stat().st_ino
    store.keep_checks(checks_file, [output], "digest-1")
    assert checks_file.stat().st_ino == inode  # the same records: not looked at
    store.keep_checks(checks_file, [output], "digest-2")
    assert checks_file.stat().st_ino != inode
    assert json.loads(checks_file.read_text())["digest"] == "digest-2"


def test_checks_of_outputs_no_longer_asked_for_are_dropped_when_rewritten(kept, tmp_path):
    _, checks_file, _, store = kept
    other = tmp_path / "results" / "b.ms"
    other.mkdir()
    write_record(other, make_record(name="b"))
    _settle(other / RECORD_NAME)
    store.keep_checks(checks_file, [other], "digest-2")
    assert list(json.loads(checks_file.read_text())["entries"]) == [str(other / RECORD_NAME)]


def test_a_record_written_just_now_is_kept_only_once_it_has_settled(tmp_path):
    """File times tick coarsely: an edit in the same tick as the write would go unseen. The
    digest is not noted either, so a later run with the same records looks again."""
    output = tmp_path / "a.ms"
    output.mkdir()
    write_record(output, make_record())
    checks_file = tmp_path / RECORD_CHECKS_NAME
    store = RecordStore()
    store.keep_checks(checks_file, [output], "digest-1")
    assert not checks_file.exists()
    _settle(output / RECORD_NAME)  # as time passes
    store.keep_checks(checks_file, [output], "digest-1")
    data = json.loads(checks_file.read_text())
    assert data["digest"] == "digest-1"
    assert list(data["entries"]) == [str(output / RECORD_NAME)]


def test_keeping_checks_takes_a_record_the_store_read_already_from_memory(tmp_path, monkeypatch):
    output = tmp_path / "a.ms"
    output.mkdir()
    write_record(output, make_record(dp3_version="6.6.0"))
    _settle(output / RECORD_NAME)
    store = RecordStore()
    record = store.record(output)  # as the summary reads every record
    monkeypatch.setattr(completion, "_parse_record", lambda text, path: pytest.fail(path))
    checks_file = tmp_path / RECORD_CHECKS_NAME
    store.keep_checks(checks_file, [output], "digest-1")
    assert RecordStore.load(checks_file).check(output) == record.check()


@pytest.mark.parametrize("collecting", [True, False])
def test_without_collections_restores_the_collector_as_it_was(collecting):
    (gc.enable if collecting else gc.disable)()
    try:
        with without_collections():
            assert not gc.isenabled()
        assert gc.isenabled() == collecting
        with pytest.raises(RuntimeError), without_collections():
            raise RuntimeError("a failure inside")
        assert gc.isenabled() == collecting
    finally:
        gc.enable()
