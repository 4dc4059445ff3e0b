"""Unit tests of the reference pipeline's current `step: <type>` config format: every mapped
field, every refusal, and that the schema (ours and Snakemake's validation) accepts it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dp3batch.config.errors import ConfigError
from dp3batch.config.reference_format import (
    aoflagger_parameters,
    is_reference_entry,
    translate_entry,
    wheel_strategy_directory,
)
from dp3batch.config.steps import Step, parse_steps
from dp3batch.config.validation import SCHEMA_PATH, validate_config
from dp3batch.dp3.translation import chain_parameters
from snakemake.utils import validate as snakemake_validate
from test_config import config_with_steps

REPOSITORY = Path(__file__).resolve().parents[2]

REFERENCE_CONFIG_TEXT = """\
steps:
  - step: preflagger
    frequency_ranges_mhz:
      - {start: 87.5, stop: 108.0}
      - {start: 130, stop: 131.5}
  - step: aoflagger
    strategy: {kind: file, path: /strategies/mine.lua}
    memory_max_gb: 8
  - step: averager
    timestep: 4
    freqstep: 2
"""


def steps_error(steps: list) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_steps(steps)
    return str(caught.value)


def reference_steps() -> list:
    return yaml.safe_load(REFERENCE_CONFIG_TEXT)["steps"]


# --- recognising the format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"step": "averager"}, True),
        ({"step": "preflagger", "frequency_ranges_mhz": []}, True),
        ({"Averager": {"timestep": 2}}, False),
        ({"PreFlagger": None}, False),
        ("step", False),
    ],
)
def test_an_entry_with_a_step_key_is_the_reference_format(entry, expected):
    assert is_reference_entry(entry) is expected


def test_documented_example_becomes_the_same_chain_as_the_one_key_format():
    chain = parse_steps(reference_steps())
    assert chain.steps == (
        Step("preflagger", {"freqrange": ["87.5..108 MHz", "130..131.5 MHz"]}),
        Step("aoflagger", {"strategy": "/strategies/mine.lua", "memorymax": 8}),
        Step("averager", {"timestep": 4, "freqstep": 2}),
    )
    one_key = parse_steps(
        [
            {"PreFlagger": {"freqrange": ["87.5..108 MHz", "130..131.5 MHz"]}},
            {"AOFlagger": {"strategy": "/strategies/mine.lua", "memorymax": 8}},
            {"Averager": {"timestep": 4, "freqstep": 2}},
        ]
    )
    assert chain_parameters(chain) == chain_parameters(one_key)


def test_formats_may_be_mixed_in_one_list():
    chain = parse_steps([{"MsIn": {"datacolumn": "DATA"}}, {"step": "averager", "timestep": 2}])
    assert chain.msin == {"datacolumn": "DATA"}
    assert chain.steps == (Step("averager", {"timestep": 2}),)


def test_step_type_is_case_insensitive():
    assert parse_steps([{"step": "Averager", "timestep": 2}]).steps[0].type == "averager"


@pytest.mark.parametrize("step_type", ["msin", "msout"])
def test_msin_and_msout_take_dp3_parameters(step_type):
    chain = parse_steps([{"step": step_type, "datacolumn": "DATA"}])
    assert getattr(chain, step_type) == {"datacolumn": "DATA"}


@pytest.mark.parametrize("step_type", ["demixer", "predict"])
def test_steps_with_undocumented_fields_take_dp3_parameters(step_type):
    chain = parse_steps([{"step": step_type, "skymodel": "a.skymodel"}])
    assert chain.steps == (Step(step_type, {"skymodel": "a.skymodel"}),)


@pytest.mark.parametrize("step_type", ["flagger", 3, None])
def test_unknown_step_type_is_refused(step_type):
    message = steps_error([{"step": "averager"}, {"step": step_type}])
    assert f"steps[1] (step: {step_type})" in message
    assert "unknown step type" in message and "preflagger" in message


def test_one_key_checks_apply_to_translated_entries():
    message = steps_error([{"step": "averager", "numthreads": 4}])
    assert "'numthreads' is set by the workflow" in message
    message = steps_error([{"step": "msout", "name": "x.ms"}])
    assert "steps[0] (msout)" in message and "set by the workflow" in message


# --- preflagger ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([{"start": 87.5, "stop": 108.0}], ["87.5..108 MHz"]),
        ([{"start": 100, "stop": 101}], ["100..101 MHz"]),
        ([{"start": 0.125, "stop": 1e3}], ["0.125..1000 MHz"]),
    ],
)
def test_frequency_ranges_become_dp3_freqrange_in_mhz(ranges, expected):
    chain = parse_steps([{"step": "preflagger", "frequency_ranges_mhz": ranges}])
    assert chain.steps[0].params == {"freqrange": expected}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "frequency_ranges_mhz: required"),
        ({"frequency_ranges_mhz": []}, "frequency_ranges_mhz: required"),
        ({"frequency_ranges_mhz": {"start": 1, "stop": 2}}, "frequency_ranges_mhz: required"),
        ({"frequency_ranges_mhz": [[1, 2]]}, "frequency_ranges_mhz[0]: expected a mapping"),
        ({"frequency_ranges_mhz": [{"start": 1}]}, "needs both start and stop"),
        ({"frequency_ranges_mhz": [{"start": "1", "stop": 2}]}, "start: expected a number"),
        ({"frequency_ranges_mhz": [{"start": 1, "stop": True}]}, "stop: expected a number"),
        ({"frequency_ranges_mhz": [{"start": 2, "stop": 2}]}, "start (2) must be below stop"),
        ({"frequency_ranges_mhz": [{"start": 3, "stop": 2}]}, "start (3) must be below stop"),
        (
            {"frequency_ranges_mhz": [{"start": 1, "stop": 2, "unit": "Hz"}]},
            "unknown field(s) unit",
        ),
        ({"frequency_ranges_mhz": [{"start": 1, "stop": 2}], "baseline": "CS*"}, "baseline"),
    ],
)
def test_bad_preflagger_fields_are_refused(fields, expected):
    message = steps_error([{"step": "preflagger", **fields}])
    assert "steps[0] (step: preflagger)" in message
    assert expected in message


def test_unknown_preflagger_field_points_at_the_one_key_format():
    message = steps_error(
        [{"step": "preflagger", "frequency_ranges_mhz": [{"start": 1, "stop": 2}], "x": 1}]
    )
    assert "frequency_ranges_mhz" in message and "- PreFlagger: {...}" in message


# --- aoflagger ----------------------------------------------------------------------------


def test_strategy_file_becomes_dp3_strategy_resolved_like_other_step_files(tmp_path):
    chain = parse_steps([{"step": "aoflagger", "strategy": {"kind": "file", "path": "s.lua"}}])
    assert chain.steps[0].params == {"strategy": "s.lua"}
    parameters = dict(chain_parameters(chain, str(tmp_path)).pairs())
    assert parameters["aoflagger.strategy"] == str(tmp_path / "s.lua")


def test_lofar_default_preset_is_the_wheel_strategy():
    chain = parse_steps(
        [{"step": "aoflagger", "strategy": {"kind": "preset", "name": "lofar_default"}}]
    )
    strategy = Path(chain.steps[0].params["strategy"])
    assert strategy.name == "lofar-default.lua"
    assert strategy.parent == wheel_strategy_directory()
    assert strategy.is_file()


def test_lofar_default_without_the_wheel_is_refused_with_the_alternative(tmp_path):
    with pytest.raises(ConfigError) as caught:
        aoflagger_parameters(
            "steps[0] (step: aoflagger)",
            {"strategy": {"kind": "preset", "name": "lofar_default"}},
            directory=tmp_path,
        )
    assert "lofar-default.lua" in str(caught.value)
    assert "kind: file" in str(caught.value)


@pytest.mark.parametrize("preset", ["ska_low_sharp", "ska_low_extended"])
def test_ska_low_presets_are_refused_asking_for_a_file(preset):
    message = steps_error([{"step": "aoflagger", "strategy": {"kind": "preset", "name": preset}}])
    assert "steps[0] (step: aoflagger).strategy" in message
    assert f"preset {preset!r}" in message and "not available here" in message
    assert "kind: file" in message


def test_memory_max_gb_becomes_memorymax():
    chain = parse_steps(
        [
            {
                "step": "aoflagger",
                "strategy": {"kind": "file", "path": "/s.lua"},
                "memory_max_gb": 2.5,
            }
        ]
    )
    assert chain.steps[0].params["memorymax"] == 2.5


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "strategy: required"),
        ({"strategy": "/s.lua"}, "strategy: expected a mapping"),
        ({"strategy": {"kind": "url", "path": "x"}}, "strategy.kind: 'url' is not one of"),
        ({"strategy": {"path": "/s.lua"}}, "strategy.kind: None is not one of"),
        ({"strategy": {"kind": "file"}}, "strategy.path: required"),
        ({"strategy": {"kind": "file", "path": " "}}, "strategy.path: required"),
        ({"strategy": {"kind": "file", "name": "x"}}, "unknown field(s) name"),
        ({"strategy": {"kind": "preset", "name": "generic"}}, "unknown preset 'generic'"),
        ({"strategy": {"kind": "preset"}}, "unknown preset None"),
        ({"strategy": {"kind": "preset", "name": "lofar_default", "path": "x"}}, "path"),
        ({"strategy": {"kind": "file", "path": "/s.lua"}, "memory_max_gb": 0}, "above 0"),
        ({"strategy": {"kind": "file", "path": "/s.lua"}, "memory_max_gb": -1}, "above 0"),
        (
            {"strategy": {"kind": "file", "path": "/s.lua"}, "memory_max_gb": "8GB"},
            "memory_max_gb: expected a number",
        ),
        ({"strategy": {"kind": "file", "path": "/s.lua"}, "memorymax": 8}, "memorymax"),
    ],
)
def test_bad_aoflagger_fields_are_refused(fields, expected):
    message = steps_error([{"step": "aoflagger", **fields}])
    assert "steps[0] (step: aoflagger)" in message
    assert expected in message


# --- applycal -----------------------------------------------------------------------------


def test_applycal_table_file_becomes_parmdb():
    chain = parse_steps([{"step": "applycal", "table": {"kind": "file", "path": "cal.h5"}}])
    assert chain.steps == (Step("applycal", {"parmdb": "cal.h5"}),)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "table: expected a mapping"),
        ({"table": "cal.h5"}, "table: expected a mapping"),
        (
            {"table": {"kind": "sdm", "field_id": 0, "purpose": "bandpass"}},
            "kind sdm reads the calibration table from an SDM: give its directory as `sdm_path`",
        ),
        (
            {"table": {"kind": "h5parm", "path": "x.h5"}},
            "table.kind: 'h5parm' is not one of file, sdm",
        ),
        ({"table": {"kind": "file"}}, "table.path: required"),
        ({"table": {"kind": "file", "path": "x.h5", "solset": "a"}}, "unknown field(s) solset"),
        ({"table": {"kind": "file", "path": "x.h5"}, "correction": "gain"}, "correction"),
    ],
)
def test_bad_applycal_fields_are_refused(fields, expected):
    message = steps_error([{"step": "applycal", **fields}])
    assert "steps[0] (step: applycal)" in message
    assert expected in message


def _sdm(tmp_path: Path, purpose: str = "bandpass", field: str = "0") -> Path:
    table = tmp_path / "sdm" / "calibration" / purpose / field / "gaintable.h5parm"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"")
    return table


def test_an_sdm_table_is_the_sdm_s_gaintable_for_that_purpose_and_field(tmp_path):
    table = _sdm(tmp_path, "bandpass", "3")
    entry = {"step": "applycal", "table": {"kind": "sdm", "field_id": 3, "purpose": "bandpass"}}
    chain = parse_steps([entry], str(tmp_path / "sdm"))
    assert chain.steps == (Step("applycal", {"parmdb": str(table)}),)


def test_a_relative_sdm_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    table = _sdm(tmp_path)
    monkeypatch.chdir(tmp_path)
    entry = {"step": "applycal", "table": {"kind": "sdm", "field_id": "0", "purpose": "bandpass"}}
    assert parse_steps([entry], "sdm").steps[0].params["parmdb"] == str(table)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"kind": "sdm", "field_id": 1, "purpose": "bandpass"},
            "has no calibration table for purpose 'bandpass', field '1': ",
        ),
        ({"kind": "sdm", "purpose": "bandpass"}, "table.field_id: required"),
        ({"kind": "sdm", "field_id": 0, "purpose": "../x"}, "is not a directory name"),
        ({"kind": "sdm", "field_id": 0, "purpose": "a", "path": "x"}, "unknown field(s) path"),
    ],
)
def test_a_missing_or_malformed_sdm_table_is_refused_by_path(tmp_path, table, expected):
    _sdm(tmp_path)
    with pytest.raises(ConfigError) as error:
        parse_steps([{"step": "applycal", "table": table}], str(tmp_path / "sdm"))
    assert "steps[0] (step: applycal).table" in str(error.value)
    assert expected in str(error.value)


def test_translate_entry_leaves_the_entry_unchanged():
    entry = {"step": "averager", "timestep": 2}
    assert translate_entry(0, entry) == {"averager": {"timestep": 2}}
    assert entry == {"step": "averager", "timestep": 2}


# --- schema -------------------------------------------------------------------------------


def test_reference_config_merged_over_the_default_is_valid():
    _, chain = validate_config(config_with_steps(reference_steps()))
    assert [step.type for step in chain.steps] == ["preflagger", "aoflagger", "averager"]


def test_snakemake_validation_accepts_both_formats_mixed():
    config = config_with_steps([*reference_steps(), {"MsOut": {"overwrite": True}}])
    snakemake_validate(config, schema=str(SCHEMA_PATH))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([{"step": "averager", "timestep": 0}], "steps[0] (step: averager).timestep"),
        ([{"step": "msout", "overwrite": "yes"}], "steps[0] (step: msout).overwrite"),
        ([{"step": "demixer"}], "skymodel"),
    ],
)
def test_schema_checks_dp3_parameters_of_pass_through_steps(steps, expected):
    with pytest.raises(ConfigError) as caught:
        validate_config(config_with_steps(steps))
    assert expected in str(caught.value)
