"""Unit tests of opening an MS's subtables: through their directories, or through the main
table's keywords when they are elsewhere."""

import shutil

from dp3batch.inputs.tables import open_subtable, read_table, station_names
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
