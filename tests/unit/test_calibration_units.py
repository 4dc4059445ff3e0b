"""Unit tests of the demixer's instrument model (per run, inside the output, required for
completion) and of the checks on sky model files."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract_examples import make_record
from dp3batch.books.fingerprints import (
    input_fingerprint,
    input_tree,
    output_fingerprint,
    output_tree,
)
from dp3batch.books.records import (
    Expectation,
    RecordStore,
    missing_required_files,
    pending_reason,
    read_record,
    write_record,
)
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.translation import chain_parameters, run_parameters
from dp3batch.inputs.step_files import check_extra_inputs

DEMIX = {"Demixer": {"skymodel": "/sky/a.skymodel", "subtractsources": ["CasA"]}}


# --- instrument model ---------------------------------------------------------------------


def test_instrument_model_is_a_run_parameter_inside_the_output():
    chain = chain_parameters(parse_steps([DEMIX]))
    assert not any(key.endswith(".instrumentmodel") for key, _ in chain.pairs())
    run = dict(run_parameters(chain, "/in/a.ms", "/out/.a.ms.tmp-1", 2))
    assert run["demixer.instrumentmodel"] == "/out/.a.ms.tmp-1/instrument"


def test_every_demixer_step_gets_its_own_instrument_model():
    chain = chain_parameters(parse_steps([DEMIX, {"Averager": None}, DEMIX]))
    run = dict(run_parameters(chain, "/in/a.ms", "/out/a.ms", 1))
    assert run["demixer.instrumentmodel"] == "/out/a.ms/instrument"
    assert run["demixer2.instrumentmodel"] == "/out/a.ms/instrument_demixer2"
    assert chain.required_output_files() == ["instrument", "instrument_demixer2"]


def test_no_required_files_without_a_demixer():
    chain = chain_parameters(parse_steps([{"PreFlagger": None}, {"Averager": None}]))
    assert chain.required_output_files() == []
    assert not any("instrumentmodel" in key for key, _ in run_parameters(chain, "i", "o", 1))


@pytest.mark.parametrize("name", ["instrumentmodel", "InstrumentModel"])
def test_user_cannot_set_the_instrument_model(name):
    steps = [{"Demixer": {"skymodel": "a.skymodel", name: "/tmp/instrument"}}]
    with pytest.raises(ConfigError, match="set by the workflow") as caught:
        parse_steps(steps)
    assert "steps[0] (Demixer)" in str(caught.value)


# --- completion needs the required files --------------------------------------------------


@pytest.fixture
def completed_output(tmp_path):
    """An input, its output holding an instrument model, and a record that requires it."""
    input_ms = tmp_path / "a.ms"
    input_ms.mkdir()
    (input_ms / "table.dat").write_bytes(b"main")
    output = tmp_path / "results" / "a.ms"
    (output / "instrument").mkdir(parents=True)
    (output / "instrument" / "table.dat").write_bytes(b"parmdb")
    expected = Expectation("parameters", "extra", "6.6.0")
    write_record(
        output,
        make_record(
            parameters_fingerprint="parameters",
            extra_inputs_fingerprint="extra",
            dp3_version="6.6.0",
            input_fingerprint=input_fingerprint(input_ms),
            output_fingerprint=output_fingerprint(output),
            input_files=input_tree(input_ms).files,
            output_files=output_tree(output).files,
            required_files=("instrument",),
        ),
    )
    return input_ms, output, expected


def test_output_with_its_required_files_is_complete(completed_output):
    input_ms, output, expected = completed_output
    assert pending_reason(input_ms, output, expected, RecordStore()) is None


def test_output_missing_a_required_file_is_incomplete(completed_output):
    input_ms, output, expected = completed_output
    (output / "instrument" / "table.dat").unlink()
    (output / "instrument").rmdir()
    assert missing_required_files(output, read_record(output)) == ["instrument"]
    assert pending_reason(input_ms, output, expected, RecordStore()) == "incomplete"


# --- sky model files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sky.skymodel", "sky.txt"])
def test_text_sky_model_names_dp3_reads_are_accepted(tmp_path, name):
    (tmp_path / name).write_text("FORMAT = Name, Type, Ra, Dec, I\n")
    check_extra_inputs([("demixer.skymodel", str(tmp_path / name))])
    check_extra_inputs([("predict.sourcedb", str(tmp_path / name))])


@pytest.mark.parametrize("key", ["demixer.skymodel", "predict2.sourcedb"])
def test_sky_model_with_another_name_is_refused(tmp_path, key):
    path = tmp_path / "sky.model"
    path.write_text("FORMAT = Name, Type, Ra, Dec, I\n")
    step, _, parameter = key.partition(".")
    with pytest.raises(ConfigError, match="ends in .skymodel or .txt; rename") as caught:
        check_extra_inputs([(key, str(path))])
    assert str(caught.value).startswith(f"steps: {step} {parameter} {path}")


def test_sourcedb_directory_is_refused_with_a_hint(tmp_path):
    sourcedb = tmp_path / "sky.sourcedb"
    sourcedb.mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a file") as caught:
        check_extra_inputs([("predict.sourcedb", str(sourcedb))])
    assert "showsourcedb" in str(caught.value)
    assert str(sourcedb) in str(caught.value)


def test_missing_sky_model_names_the_step_and_path(tmp_path):
    missing = Path(tmp_path / "sky" / "none.skymodel")
    with pytest.raises(ConfigError, match="does not exist") as caught:
        check_extra_inputs([("demixer.skymodel", str(missing))])
    assert str(caught.value).startswith(f"steps: demixer skymodel {missing}")
