"""Unit tests of opening an MS's subtables: through their directories, or through the main
table's keywords when they are elsewhere."""

import shutil
import threading

import pytest
from dp3batch.inputs.tables import held_open, open_subtable, read_table, station_names
from dp3batch.testing.harness import make_ms


def test_a_subtable_is_read_from_its_directory_as_through_the_main_table(tmp_path):
    from casacore import tables

    ms = make_ms(tmp_path / "obs.ms")
    with tables.table(f"{ms}::ANTENNA", ack=False) as through_keyword:
        expected = list(through_keyword.getcol("NAME"))
    with open_subtable(ms, "ANTENNA") as antennas:
        assert antennas.name() == str(ms / "ANTENNA")
        assert list(antennas.getcol("NAME")) == expected


def test_a_subtable_stored_elsewhere_is_found_through_the_main_tables_keyword(tmp_path):
    from casacore import tables

    ms = make_ms(tmp_path / "obs.ms")
    expected = station_names(ms)
    moved = tmp_path / "antennas_elsewhere"
    shutil.move(ms / "ANTENNA", moved)
    with tables.table(str(ms), ack=False, readonly=False) as main:
        main.putkeyword("ANTENNA", f"Table: {moved}")
    assert not (ms / "ANTENNA").exists()
    assert station_names(ms) == expected


def test_read_table_reads_what_casacore_reads_and_cannot_write(tmp_path):
    import numpy as np
    from casacore import tables

    ms = make_ms(tmp_path / "obs.ms")
    with tables.table(str(ms), ack=False) as plain, read_table(ms) as lean:
        assert lean.nrows() == plain.nrows() > 0
        assert lean.colnames() == plain.colnames()
        for column in ("TIME", "ANTENNA1", "FLAG", "DATA"):
            assert np.array_equal(lean.getcol(column), plain.getcol(column))
        assert not lean.iswritable()
    with read_table(f"{ms}::SPECTRAL_WINDOW") as windows:
        assert windows.nrows() == 1


def test_reads_inside_held_open_share_its_tables_and_leave_them_open(tmp_path):
    ms = make_ms(tmp_path / "obs.ms")
    with held_open(ms, ["ANTENNA"]):
        with read_table(ms) as first:
            rows = first.nrows()
        with read_table(ms) as second, open_subtable(ms, "ANTENNA") as antennas:
            # The first read's `with` has ended: the table it was lent is still readable.
            assert first.nrows() == second.nrows() == rows > 0
            assert list(antennas.getcol("NAME")) == station_names(ms)
        held = read_table(ms)
        held.close()
        assert held.nrows() == rows
    with read_table(ms) as own:
        assert own.nrows() == rows
    # Once held_open has ended, its table is closed: casacore refuses to read it.
    with pytest.raises(RuntimeError):
        held.nrows()


def test_held_open_lends_its_tables_only_to_its_own_thread(tmp_path):
    ms = make_ms(tmp_path / "obs.ms")
    seen = {}

    def read_elsewhere() -> None:
        table = read_table(ms)
        table.close()
        try:
            table.nrows()
            seen["closed"] = False
        except RuntimeError:
            seen["closed"] = True

    with held_open(ms):
        other = threading.Thread(target=read_elsewhere)
        other.start()
        other.join(timeout=60)
    assert seen == {"closed": True}  # the other thread opened, and closed, its own


def test_nested_held_open_restores_the_outer_tables(tmp_path):
    first = make_ms(tmp_path / "first.ms")
    second = make_ms(tmp_path / "second.ms")
    with held_open(first):
        with held_open(second):
            inner = read_table(second)
            outer = read_table(first)
        inner.close()
        outer.close()
        assert outer.nrows() > 0  # still held by the outer held_open
        with pytest.raises(RuntimeError):  # the inner held_open closed its table
            inner.nrows()
