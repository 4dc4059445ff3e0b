"""Unit tests of input discovery on fake MeasurementSets (a directory holding `table.dat`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp3batch.config.errors import ConfigError
from dp3batch.inputs.discovery import (
    WorkItem,
    check_is_measurement_set,
    check_output_dir,
    discover_measurement_sets,
    expand_inputs,
    output_name,
)


def fake_ms(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "table.dat").touch()
    return path


def discovery_error(patterns, output_dir, base_dir) -> str:
    with pytest.raises(ConfigError) as caught:
        discover_measurement_sets(patterns, output_dir, base_dir)
    return str(caught.value)


# --- output_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("obs_SB001.ms", "obs_SB001"),
        ("obs.MS", "obs"),
        ("obs", "obs"),
        ("obs.ms.bak", "obs.ms.bak"),
        ("a.b.ms", "a.b"),
    ],
)
def test_output_name(name, expected):
    assert output_name(Path("/data") / name) == expected


# --- expansion ----------------------------------------------------------------------------


def test_glob_expansion_is_sorted_and_keeps_pattern_order(tmp_path):
    for name in ("b.ms", "a.ms", "c.ms"):
        fake_ms(tmp_path / "late" / name)
    fake_ms(tmp_path / "early" / "z.ms")
    found = expand_inputs(["late/*.ms", "early/z.ms"], tmp_path)
    assert found == [
        tmp_path / "late" / "a.ms",
        tmp_path / "late" / "b.ms",
        tmp_path / "late" / "c.ms",
        tmp_path / "early" / "z.ms",
    ]


def test_expansion_removes_duplicates_and_normalises(tmp_path):
    fake_ms(tmp_path / "d" / "a.ms")
    fake_ms(tmp_path / "d" / "b.ms")
    found = expand_inputs(["d/b.ms", "d/*.ms", "./d/../d/a.ms"], tmp_path)
    assert found == [tmp_path / "d" / "b.ms", tmp_path / "d" / "a.ms"]


def test_absolute_patterns_ignore_the_base_directory(tmp_path):
    fake_ms(tmp_path / "abs" / "a.ms")
    found = expand_inputs([str(tmp_path / "abs" / "*.ms")], tmp_path / "elsewhere")
    assert found == [tmp_path / "abs" / "a.ms"]


def test_discovery_pairs_inputs_with_outputs(tmp_path):
    fake_ms(tmp_path / "data" / "obs_SB001.ms")
    fake_ms(tmp_path / "data" / "obs_SB000.MS")
    found = discover_measurement_sets(["data/*"], "results", tmp_path)
    assert found == [
        WorkItem(
            "obs_SB000", tmp_path / "data" / "obs_SB000.MS", tmp_path / "results" / "obs_SB000.ms"
        ),
        WorkItem(
            "obs_SB001", tmp_path / "data" / "obs_SB001.ms", tmp_path / "results" / "obs_SB001.ms"
        ),
    ]


def test_glob_relative_to_a_base_directory_with_glob_characters(tmp_path):
    base = tmp_path / "run[1]"
    fake_ms(base / "a.ms")
    assert expand_inputs(["*.ms"], base) == [base / "a.ms"]


# --- inputs that are not MeasurementSets --------------------------------------------------


def test_pattern_matching_nothing_is_named(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    message = discovery_error(["data/*.ms", "other/*.ms"], "results", tmp_path)
    assert "'other/*.ms'" in message
    assert "matches nothing" in message


def test_missing_path_is_named(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    message = discovery_error(["data/a.ms", "data/missing.ms"], "results", tmp_path)
    assert str(tmp_path / "data" / "missing.ms") in message
    assert "does not exist" in message


def test_file_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.ms").write_text("not a table")
    message = discovery_error(["data/*.ms"], "results", tmp_path)
    assert str(tmp_path / "data" / "x.ms") in message
    assert "is a file" in message


def test_directory_without_table_dat_is_named(tmp_path):
    (tmp_path / "data" / "x.ms").mkdir(parents=True)
    (tmp_path / "data" / "x.ms" / "table.f0").touch()
    message = discovery_error(["data/x.ms"], "results", tmp_path)
    assert str(tmp_path / "data" / "x.ms") in message
    assert "table.dat" in message


def test_table_dat_that_is_a_directory_is_not_a_measurement_set(tmp_path):
    (tmp_path / "x.ms" / "table.dat").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a MeasurementSet"):
        check_is_measurement_set(tmp_path / "x.ms")


def test_fake_measurement_set_passes_the_structural_check(tmp_path):
    check_is_measurement_set(fake_ms(tmp_path / "x.ms"))


# --- names and the output directory -------------------------------------------------------


def test_duplicate_output_names_name_both_paths(tmp_path):
    first = fake_ms(tmp_path / "night1" / "obs.ms")
    second = fake_ms(tmp_path / "night2" / "obs.ms")
    message = discovery_error(["night1/*.ms", "night2/*.ms"], "results", tmp_path)
    assert str(first) in message
    assert str(second) in message
    assert "obs.ms" in message


def test_names_differing_only_in_the_ms_suffix_collide(tmp_path):
    fake_ms(tmp_path / "a" / "obs.MS")
    fake_ms(tmp_path / "b" / "obs")
    message = discovery_error(["a/obs.MS", "b/obs"], "results", tmp_path)
    assert str(tmp_path / "a" / "obs.MS") in message
    assert str(tmp_path / "b" / "obs") in message


def test_output_dir_equal_to_an_input_is_rejected(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    message = discovery_error(["data/a.ms"], "data/a.ms", tmp_path)
    assert message.startswith("output_dir:")
    assert str(tmp_path / "data" / "a.ms") in message


def test_output_dir_inside_an_input_is_rejected(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    message = discovery_error(["data/a.ms"], "data/a.ms/results", tmp_path)
    assert message.startswith("output_dir:")
    assert "inside the input" in message


def test_output_dir_holding_an_input_is_rejected(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    fake_ms(tmp_path / "other" / "b.ms")
    message = discovery_error(["other/b.ms", "data/a.ms"], "data", tmp_path)
    assert message.startswith("output_dir:")
    assert "holds the input" in message
    assert str(tmp_path / "data" / "a.ms") in message


def test_output_dir_given_as_the_working_directory_holding_inputs_is_rejected(tmp_path):
    fake_ms(tmp_path / "a.ms")
    assert "holds the input" in discovery_error(["*.ms"], ".", tmp_path)


def test_output_dir_through_a_symlink_to_the_input_directory_is_rejected(tmp_path):
    fake_ms(tmp_path / "data" / "a.ms")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(ConfigError, match="holds the input"):
        check_output_dir(tmp_path / "link", [tmp_path / "data" / "a.ms"])


@pytest.mark.parametrize("output_dir", ["results", "data/results", "../elsewhere"])
def test_good_output_dir_is_accepted(tmp_path, output_dir):
    base = tmp_path / "work"
    fake_ms(base / "data" / "a.ms")
    found = discover_measurement_sets(["data/*.ms"], output_dir, base)
    expected_dir = (base / output_dir).resolve()
    assert [ms.output for ms in found] == [expected_dir / "a.ms"]
    assert not expected_dir.exists()  # discovery checks, it creates nothing


def test_resolve_all_agrees_with_path_resolve(tmp_path):
    """Parents resolved once per directory give what a full resolve of each path gives: links
    in a parent directory, an input that is itself a link, a dangling link."""
    from dp3batch.inputs.discovery import resolve_all

    real = tmp_path / "real"
    (real / "a.ms").mkdir(parents=True)
    (real / "b.ms").mkdir()
    (tmp_path / "via").symlink_to(real)
    (tmp_path / "link.ms").symlink_to(real / "b.ms")
    (tmp_path / "dangling.ms").symlink_to(tmp_path / "nowhere.ms")
    paths = [
        tmp_path / "via" / "a.ms",
        tmp_path / "via" / "b.ms",
        real / "a.ms",
        tmp_path / "link.ms",
        tmp_path / "dangling.ms",
        tmp_path / "via" / "missing.ms",
    ]
    assert resolve_all(paths) == {path: path.resolve() for path in paths}


def test_a_table_whose_data_are_in_other_tables_is_refused_and_its_plain_copy_is_not(
    tmp_path,
):
    """DP3 reads a reference table (a TaQL selection saved with GIVING) or a concatenation,
    but their data are in other tables, which the input's fingerprint and lock do not cover."""
    from casacore import tables
    from conftest import make_ms
    from dp3batch.inputs.discovery import check_readable
    from dp3batch.inputs.tables import table_kind

    parent = make_ms(tmp_path / "parent.ms")
    other = make_ms(tmp_path / "other.ms", seed=1)
    selection = tmp_path / "selection.ms"
    tables.taql(f"SELECT FROM '{parent}' WHERE ANTENNA1 != 0 GIVING '{selection}'").close()
    joined = tmp_path / "joined.ms"
    concatenation = tables.table([str(parent), str(other)], ack=False)
    concatenation.rename(str(joined))
    concatenation.close()
    with tables.table(str(selection), ack=False) as table:  # the fix the message gives
        table.copy(str(tmp_path / "plain.ms"), deep=True).close()

    assert [table_kind(tmp_path / f"{name}.ms") for name in ("parent", "selection", "joined")] == [
        "PlainTable",
        "RefTable",
        "ConcatTable",
    ]
    assert table_kind(tmp_path / "plain.ms") == "PlainTable"
    assert table_kind(tmp_path / "nothing.ms") is None
    with pytest.raises(ConfigError) as caught:
        check_readable(selection)
    assert str(caught.value).startswith(
        f"inputs: {selection} is a reference table (rows selected from another table"
    )
    assert "give that table as the input" in str(caught.value)
    with pytest.raises(ConfigError, match="is a concatenation of other tables"):
        check_readable(joined)
    check_readable(parent)
    check_readable(tmp_path / "plain.ms")


def test_a_directory_of_measurement_sets_given_as_an_input_says_the_pattern(tmp_path):
    """The reference pipeline's users name MSs; one who names their directory is told how."""
    fake_ms(tmp_path / "obs42" / "b.ms")
    fake_ms(tmp_path / "obs42" / "a.ms")
    (tmp_path / "obs42" / "notes").mkdir()
    with pytest.raises(ConfigError) as caught:
        check_is_measurement_set(tmp_path / "obs42")
    assert str(caught.value) == (
        f"inputs: {tmp_path / 'obs42'} is a directory but not a MeasurementSet (it has no "
        "table.dat); it holds 2 MeasurementSet(s) (a.ms, …): to process them, give the "
        f"pattern '{tmp_path / 'obs42' / '*.ms'}'"
    )
    fake_ms(tmp_path / "mixed" / "a.MS")
    fake_ms(tmp_path / "mixed" / "b.ms")
    with pytest.raises(ConfigError, match=r"2 MeasurementSet\(s\) .*mixed/\*'$"):
        check_is_measurement_set(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as caught:
        check_is_measurement_set(tmp_path / "empty")
    assert str(caught.value).endswith("(it has no table.dat)")
