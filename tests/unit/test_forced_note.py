"""The forced MSs an interrupted or failed forced run (`-F`, `-R`) did not finish: noted in
the output directory, processed by the next run (issue 26)."""

from __future__ import annotations

from dp3batch.books.forced import (
    FORCED,
    FORCED_EARLIER,
    ForcedItem,
    is_forced,
    read_forced_note,
    write_forced_note,
)


def test_the_forced_note_holds_what_is_owed_and_goes_when_nothing_is(tmp_path):
    note = tmp_path / ".forced-unfinished.json"
    item = ForcedItem("obs_0", "/r/obs_0.ms", "2026-12-02T10:00:00.000+00:00")
    write_forced_note(note, [item])
    assert read_forced_note(note) == {"/r/obs_0.ms": item}
    assert item.owed(None) and item.owed("2026-12-02T09:59:59.999+00:00")
    assert not item.owed("2026-12-02T10:00:00.001+00:00")
    write_forced_note(note, [])
    assert not note.exists()
    note.write_text("{not json")  # losing the note costs a -F again, never an output
    assert read_forced_note(note) == {}


def test_forced_reasons_are_known_also_with_a_lock_noted_after_them():
    assert is_forced(FORCED) and is_forced(FORCED_EARLIER)
    assert is_forced(f"{FORCED}; LOCKED by another process (pid 7)")
    assert not is_forced("missing") and not is_forced("input changed")
