"""Spectral windows as work items: expansion, naming, the record cache, the band's shape
(generated MSs opened with casacore; no DP3, no snakemake)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_ms
from contract_examples import make_record
from dp3batch.books.fingerprints import input_fingerprint, input_tree
from dp3batch.books.records import CompletionRecord, RecordStore, write_record
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dask_stage.output_check import read_input_grid
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.dp3.translation import chain_parameters
from dp3batch.inputs.discovery import WorkItem, discover_measurement_sets, window_items
from dp3batch.inputs.tables import read_shape
from dp3batch.inputs.windows import Windows, read_windows, windows_from_record, windows_record
from dp3batch.planning.items import check_selected_band, per_window_items

OBS = WorkItem("obs", Path("/in/obs.ms"), Path("/out/obs.ms"))


def test_one_window_keeps_its_name_and_reads_dp3s_default():
    assert window_items(OBS, Windows(1, (0,))) == [OBS]


def test_one_used_window_of_several_descriptions_keeps_its_name_and_names_its_band():
    # DP3 without msin.band would describe the data with DATA_DESCRIPTION row 0's window.
    assert window_items(OBS, Windows(3, (2,))) == [WorkItem("obs", OBS.input, OBS.output, band=2)]


def test_several_windows_give_one_item_per_band_named_after_it():
    assert window_items(OBS, Windows(3, (0, 2))) == [
        WorkItem("obs_spw0", OBS.input, Path("/out/obs_spw0.ms"), band=0),
        WorkItem("obs_spw2", OBS.input, Path("/out/obs_spw2.ms"), band=2),
    ]


def test_band_parameters():
    chain = chain_parameters(parse_steps([{"MsIn": {"band": 0}}, {"Averager": None}]))
    assert chain.with_band(None) == chain
    assert chain.selected_band() == 0
    assert chain.with_band(3).pairs() == [
        ("checkparset", "1"),
        ("steps", "[averager]"),
        ("averager.type", "averager"),
        ("msin.band", "3"),
    ]
    assert chain.with_band(3).selected_band() == 3
    assert chain_parameters(parse_steps([])).selected_band() is None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("windows") / "inputs"
    make_ms(directory / "two.ms", n_windows=2, window_order="time")
    make_ms(directory / "one.ms")
    return directory


def _items(base: Path, patterns: list[str]) -> list[WorkItem]:
    output_dir = base / "results"
    return _window_items(discover_measurement_sets(patterns, output_dir, base), output_dir)


def _window_items(measurement_sets: list[WorkItem], output_dir: Path) -> list[WorkItem]:
    return [
        item
        for item, _ in per_window_items(
            measurement_sets, output_dir, RecordStore(), lambda item: None
        )
    ]


def test_each_window_of_an_ms_of_several_is_an_item(inputs):
    items = _items(inputs.parent, ["inputs/*.ms"])
    assert [(item.name, item.output.name, item.band) for item in items] == [
        ("one", "one.ms", None),
        ("two_spw0", "two_spw0.ms", 0),
        ("two_spw1", "two_spw1.ms", 1),
    ]
    assert read_windows(inputs / "two.ms") == Windows(2, (0, 1))


def test_a_window_output_name_that_another_input_has_is_refused(inputs, tmp_path):
    make_ms(tmp_path / "two_spw1.ms")
    patterns = [str(inputs / "two.ms"), str(tmp_path / "two_spw1.ms")]
    with pytest.raises(ConfigError) as raised:
        _items(tmp_path.parent, patterns)
    message = str(raised.value)
    assert f"{inputs / 'two.ms'} (spectral window 1) and {tmp_path / 'two_spw1.ms'}" in message
    assert "would both be written to two_spw1.ms" in message


def test_each_item_comes_with_its_answer_found_in_the_same_pass(inputs):
    """Planning asks each item's pending reason while the windows are looked up."""
    output_dir = inputs.parent / "results"
    found = discover_measurement_sets(["inputs/*.ms"], output_dir, inputs.parent)
    answered = per_window_items(
        found, output_dir, RecordStore(), lambda item: (item.name, item.band)
    )
    assert [answer for _, answer in answered] == [(item.name, item.band) for item, _ in answered]
    assert [answer for _, answer in answered] == [
        ("one", None),
        ("two_spw0", 0),
        ("two_spw1", 1),
    ]


def test_a_window_output_that_is_a_link_is_refused(inputs, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "two_spw0.ms").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="two_spw0.ms is a link"):
        _window_items(
            discover_measurement_sets([str(inputs / "two.ms")], results, tmp_path), results
        )


def _record(
    ms: Path, windows: dict, fingerprint: str | None = None, listed: bool = True
) -> CompletionRecord:
    """A record of `ms` that lists its input's files, as the workflow writes them now, or
    not, as earlier versions did (then the files are walked)."""
    return make_record(
        input=str(ms),
        input_fingerprint=fingerprint or input_fingerprint(ms),
        input_files=input_tree(ms).files if listed else None,
        windows=windows,
    )


@pytest.mark.parametrize("listed", [True, False], ids=["files listed", "files not listed"])
def test_a_rerun_takes_the_windows_from_the_record_while_the_input_is_unchanged(
    inputs, tmp_path, listed
):
    """The record's windows are trusted without opening the MS (here it claims a third
    window, which the MS does not have, so the items show where they came from); a changed
    input, or a record of another input, is not trusted."""
    two = inputs / "two.ms"
    results = tmp_path / "results"
    claimed = {**windows_record(two), "bands": [0, 1, 2], "descriptions": 3}
    (results / "two_spw0.ms").mkdir(parents=True)
    write_record(results / "two_spw0.ms", _record(two, claimed, listed=listed))
    items = _window_items(discover_measurement_sets([str(two)], results, tmp_path), results)
    assert [item.name for item in items] == ["two_spw0", "two_spw1", "two_spw2"]

    older = _record(two, claimed, fingerprint="older", listed=listed)
    write_record(results / "two_spw0.ms", older)
    items = _window_items(discover_measurement_sets([str(two)], results, tmp_path), results)
    assert [item.name for item in items] == ["two_spw0", "two_spw1"]

    other = replace(_record(two, claimed), input=str(inputs / "one.ms"))
    assert windows_from_record(other, two) is None


@pytest.mark.parametrize("listed", [True, False], ids=["files listed", "files not listed"])
def test_one_description_is_trusted_on_data_description_alone(inputs, tmp_path, listed):
    """A single-window MS: the record holds while DATA_DESCRIPTION's files are unchanged
    (the whole input need not be walked); a rewritten DATA_DESCRIPTION is read again."""
    one = tmp_path / "one.ms"
    make_ms(one)
    entry = windows_record(one)
    assert entry["bands"] == [0] and entry["descriptions"] == 1
    record = _record(one, {**entry, "bands": [7]}, fingerprint="not checked", listed=listed)
    assert windows_from_record(record, one) == Windows(1, (7,))
    table_file = one / "DATA_DESCRIPTION" / "table.dat"
    stat = table_file.stat()
    os.utime(table_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert windows_from_record(record, one) is None


def test_a_record_without_windows_is_not_trusted(inputs):
    without = replace(_record(inputs / "one.ms", {}), windows=None)
    assert windows_from_record(without, inputs / "one.ms") is None
    assert windows_from_record(None, inputs / "one.ms") is None


def test_the_shape_before_is_the_bands_own(inputs):
    two = inputs / "two.ms"
    whole = read_shape(str(two))
    band = read_shape(str(two), with_flags=True, band=1)
    assert whole.rows == 2 * band.rows
    assert (band.rows, band.times, band.channels) == (20 * 15, 20, 16)
    assert band.flagged_fraction is not None


def test_the_output_check_reads_one_band_of_rows_sorted_by_time(inputs):
    grid = read_input_grid(str(inputs / "two.ms"), DP3Parameters({}, {}, (), band=1))
    assert (grid.times, grid.baselines, grid.channels, grid.windows_in_rows) == (20, 15, 16, 1)
    assert read_input_grid(str(inputs / "two.ms"), DP3Parameters({}, {}, ())).windows_in_rows == 2


def test_a_band_the_steps_select_must_have_rows_in_every_ms(inputs):
    found = discover_measurement_sets(["inputs/*.ms"], "results", inputs.parent)
    with pytest.raises(ConfigError) as raised:
        check_selected_band(found, 1, inputs.parent / "results", RecordStore())
    assert str(raised.value) == (
        f"steps: MsIn band 1 selects no data of {inputs / 'one.ms'}: its rows are of band(s) "
        "0 (DATA_DESC_ID); choose one of those, or leave `band` out to process every window"
    )
    check_selected_band(found, 0, inputs.parent / "results", RecordStore())
