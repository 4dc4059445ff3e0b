"""Unit tests of the configuration checks: scheduler address, `steps:` parsing, JSON schema."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import yaml
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import STEP_TYPES, Step, parse_steps
from dp3batch.config.validation import coerce_scheduler, validate_config

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPOSITORY / "config" / "config.yaml"

BPP_CONFIG_TEXT = """\
steps:
  - MsIn:
      datacolumn: DATA
  - PreFlagger:
  - AOFlagger:
      memorymax: 8.0
  - Averager:
      timestep: 4
      freqstep: 4
  - MsOut:
      overwrite: true
"""


def default_config() -> dict:
    with open(DEFAULT_CONFIG) as handle:
        return yaml.safe_load(handle)


def merged(base: dict, override: dict) -> dict:
    """Snakemake's merge of a `--configfile` over the `configfile:` one (mappings recursively,
    everything else replaced)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def config_with_steps(steps: list) -> dict:
    return merged(default_config(), {"steps": steps})


def validation_error(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(config)
    return str(caught.value)


def parse_error(steps) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_steps(steps)
    return str(caught.value)


# --- coerce_scheduler ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "  ", "\t"])
def test_empty_scheduler_means_embedded_cluster(value):
    assert coerce_scheduler(value) is None


def test_integer_scheduler_is_a_local_port():
    assert coerce_scheduler(8786) == "tcp://localhost:8786"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:8786", "tcp://localhost:8786"),
        ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
        ("  node-01.cluster:9000 ", "tcp://node-01.cluster:9000"),
        ("[::1]:8786", "tcp://[::1]:8786"),
    ],
)
def test_host_port_scheduler_is_accepted(value, expected):
    assert coerce_scheduler(value) == expected


@pytest.mark.parametrize("value", ["nonsense", "host:", "host:99999", ":8786", "host:0", True])
def test_bad_scheduler_is_rejected_with_host_port_hint(value):
    with pytest.raises(ConfigError, match="HOST:PORT") as caught:
        coerce_scheduler(value)
    assert str(caught.value).startswith("scheduler:")


def test_validate_config_returns_the_coerced_scheduler():
    config = merged(default_config(), {"scheduler": 8786})
    scheduler, _ = validate_config(config)
    assert scheduler == "tcp://localhost:8786"


def test_validate_config_rejects_a_bad_scheduler():
    assert "HOST:PORT" in validation_error(merged(default_config(), {"scheduler": "host:"}))


# --- parse_steps: structure ---------------------------------------------------------------


def test_unknown_step_type_is_named_and_known_types_listed():
    message = parse_error([{"PreFlagger": None}, {"Flagger": {"x": 1}}])
    assert "steps[1] (Flagger)" in message
    assert "'Flagger'" in message
    for step_type in STEP_TYPES:
        assert step_type in message


@pytest.mark.parametrize(
    ("key", "expected"), [("PreFlagger", "preflagger"), ("AOFLAGGER", "aoflagger")]
)
def test_step_types_are_case_insensitive(key, expected):
    chain = parse_steps([{key: {"baseline": "CS*"}}])
    assert chain.steps == (Step(expected, {"baseline": "CS*"}),)


def test_null_parameters_are_allowed():
    chain = parse_steps([{"MsIn": None}, {"PreFlagger": None}, {"MsOut": None}])
    assert chain.msin == {}
    assert chain.msout == {}
    assert chain.steps == (Step("preflagger", {}),)


def test_none_and_empty_steps_give_a_copy_chain():
    for steps in (None, []):
        chain = parse_steps(steps)
        assert (chain.msin, chain.msout, chain.steps) == ({}, {}, ())


def test_steps_must_be_a_list():
    assert "steps:" in parse_error({"Averager": {"timestep": 2}})


def test_msin_and_msout_are_separated_from_processing_steps_in_order():
    chain = parse_steps(yaml.safe_load(BPP_CONFIG_TEXT)["steps"])
    assert chain.msin == {"datacolumn": "DATA"}
    assert chain.msout == {"overwrite": True}
    assert [step.type for step in chain.steps] == ["preflagger", "aoflagger", "averager"]
    assert chain.steps[2].params == {"timestep": 4, "freqstep": 4}


def test_mapping_with_two_keys_is_rejected():
    message = parse_error([{"PreFlagger": None}, {"Averager": {"timestep": 2}, "AOFlagger": None}])
    assert "steps[1]" in message
    assert "exactly one key" in message
    assert "Averager" in message and "AOFlagger" in message


@pytest.mark.parametrize("entry", ["PreFlagger", ["PreFlagger"], 3, {}])
def test_non_mapping_or_empty_entry_is_rejected(entry):
    message = parse_error([entry])
    assert "steps[0]" in message
    assert "exactly one key" in message


def test_parameters_must_be_a_mapping():
    message = parse_error([{"Averager": [2, 2]}])
    assert "steps[0] (Averager)" in message
    assert "mapping" in message


@pytest.mark.parametrize("io_type", ["MsIn", "MsOut"])
def test_msin_or_msout_twice_is_rejected(io_type):
    message = parse_error([{io_type: None}, {"PreFlagger": None}, {io_type.upper(): None}])
    assert f"steps[2] ({io_type.upper()})" in message
    assert "at most once" in message


# --- parse_steps: parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "location", "name"),
    [
        ({"MsIn": {"name": "x.ms"}}, "steps[0] (MsIn)", "'name'"),
        ({"MsOut": {"Name": "y.ms"}}, "steps[0] (MsOut)", "'Name'"),
        ({"AOFlagger": {"numthreads": 4}}, "steps[0] (AOFlagger)", "'numthreads'"),
        ({"MsIn": {"NumThreads": 4}}, "steps[0] (MsIn)", "'NumThreads'"),
        ({"Averager": {"type": "averager"}}, "steps[0] (Averager)", "'type'"),
    ],
)
def test_managed_parameters_are_rejected(entry, location, name):
    message = parse_error([entry])
    assert location in message
    assert name in message
    assert "set by the workflow" in message


def test_name_is_managed_only_for_msin_and_msout():
    # `name` is not special for a processing step (it would just be a DP3 parameter).
    chain = parse_steps([{"PreFlagger": {"name": "x"}}])
    assert chain.steps[0].params == {"name": "x"}


@pytest.mark.parametrize("name", ["a b", "x=y", "1abc", ".x", "a-b", "", "ä"])
def test_parameter_names_that_are_not_dp3_keys_are_rejected(name):
    message = parse_error([{"Averager": {name: 2}}])
    assert "steps[0] (Averager)" in message
    assert repr(name) in message
    assert "not a DP3 parameter name" in message


def test_non_string_parameter_name_is_rejected():
    assert "not a DP3 parameter name" in parse_error([{"Averager": {2: 2}}])


@pytest.mark.parametrize("name", ["timestep", "_x", "baseline.select", "CorrectType", "a1_b2"])
def test_dp3_style_parameter_names_are_accepted(name):
    assert parse_steps([{"Averager": {name: 2}}]).steps[0].params == {name: 2}


@pytest.mark.parametrize("name", ["strategy\n", "numthreads\n"])
def test_parameter_name_with_trailing_newline_is_rejected(name):
    with pytest.raises(ConfigError):
        parse_steps([{"AOFlagger": {name: "x"}}])


@pytest.mark.parametrize(
    "value",
    ["a\nb", "a\rb", ["ok", "x\ny"], [["ok"], ["x\ny"]]],
    ids=["lf", "cr", "list", "nested"],
)
def test_values_with_line_breaks_are_rejected(value):
    message = parse_error([{"PreFlagger": {"baseline": value}}])
    assert "steps[0] (PreFlagger).baseline" in message
    assert "line break" in message


@pytest.mark.parametrize("value", [None, [1, None]], ids=["none", "in-list"])
def test_none_values_are_rejected(value):
    message = parse_error([{"MsIn": None}, {"Averager": {"timestep": value}}])
    assert "steps[1] (Averager).timestep" in message
    assert "no value" in message


@pytest.mark.parametrize("value", [{"a": 1}, [{"a": 1}]], ids=["dict", "dict-in-list"])
def test_mapping_values_are_rejected(value):
    message = parse_error([{"PreFlagger": {"baseline": value}}])
    assert "steps[0] (PreFlagger).baseline" in message
    assert "mapping is not a DP3 value" in message


def test_scalar_and_list_values_are_accepted():
    params = {"a": 1, "b": 2.5, "c": True, "d": "CS*&", "e": [1, [2, 3]], "f": []}
    assert parse_steps([{"PreFlagger": params}]).steps[0].params == params


# --- validate_config with the schema ------------------------------------------------------


def test_default_config_is_valid():
    scheduler, chain = validate_config(default_config())
    assert scheduler is None
    assert [step.type for step in chain.steps] == ["preflagger", "aoflagger", "averager"]


def test_batch_preprocessing_config_merged_over_default_is_valid():
    config = merged(default_config(), yaml.safe_load(BPP_CONFIG_TEXT))
    assert config["inputs"] == default_config()["inputs"]
    scheduler, chain = validate_config(config)
    assert scheduler is None
    assert chain.msin == {"datacolumn": "DATA"}
    assert chain.msout == {"overwrite": True}
    assert chain.steps[1] == Step("aoflagger", {"memorymax": 8.0})
    assert chain.steps[2] == Step("averager", {"timestep": 4, "freqstep": 4})


def test_empty_steps_list_is_valid():
    _, chain = validate_config(config_with_steps([]))
    assert chain.steps == ()


@pytest.mark.parametrize("key", ["timestep", "freqstep"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_averager_steps_must_be_positive_integers(key, value):
    config = config_with_steps(
        [{"MsIn": None}, {"PreFlagger": None}, {"Averager": {key: value}}, {"MsOut": None}]
    )
    message = validation_error(config)
    assert f"steps[2] (Averager).{key}" in message


@pytest.mark.parametrize("value", [1, 4])
def test_averager_steps_accept_positive_integers(value):
    _, chain = validate_config(config_with_steps([{"Averager": {"timestep": value}}]))
    assert chain.steps[0].params["timestep"] == value


def test_averager_float_with_integral_value_is_rejected():
    validation_error(config_with_steps([{"Averager": {"timestep": 2.0}}]))


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_msout_overwrite_must_be_boolean(value):
    message = validation_error(config_with_steps([{"MsOut": {"overwrite": value}}]))
    assert "steps[0] (MsOut).overwrite" in message
    assert "boolean" in message


@pytest.mark.parametrize("value", [-1, -0.5, "8GB"])
def test_aoflagger_memorymax_must_be_a_non_negative_number(value):
    message = validation_error(config_with_steps([{"AOFlagger": {"memorymax": value}}]))
    assert "steps[0] (AOFlagger).memorymax" in message


@pytest.mark.parametrize("value", [0, 8, 8.5])
def test_aoflagger_memorymax_accepts_non_negative_numbers(value):
    _, chain = validate_config(config_with_steps([{"AOFlagger": {"memorymax": value}}]))
    assert chain.steps[0].params == {"memorymax": value}


@pytest.mark.parametrize("value", [-1, 100.5, 101, "50"])
def test_aoflagger_memoryperc_must_be_between_0_and_100(value):
    message = validation_error(
        config_with_steps([{"PreFlagger": None}, {"AOFlagger": {"memoryperc": value}}])
    )
    assert "steps[1] (AOFlagger).memoryperc" in message


@pytest.mark.parametrize("value", [0, 50, 100])
def test_aoflagger_memoryperc_accepts_0_to_100(value):
    validate_config(config_with_steps([{"AOFlagger": {"memoryperc": value}}]))


def test_unknown_top_level_key_is_rejected():
    config = default_config()
    config["ouput_dir"] = "results"
    message = validation_error(config)
    assert "ouput_dir" in message


def test_unknown_local_cluster_key_is_named_with_its_location():
    config = merged(default_config(), {"local_cluster": {"workers": 2}})
    message = validation_error(config)
    assert "local_cluster" in message
    assert "workers" in message


def test_local_cluster_sizes_must_be_positive():
    config = merged(default_config(), {"local_cluster": {"n_workers": 0}})
    assert "local_cluster.n_workers" in validation_error(config)


def test_applycal_requires_parmdb():
    message = validation_error(config_with_steps([{"ApplyCal": {"correction": "gain"}}]))
    assert "steps[0] (ApplyCal)" in message
    assert "parmdb" in message


def test_step_checks_come_before_schema_checks():
    # A structural step problem is reported even when the schema would also complain.
    config = config_with_steps([{"Averager": {"timestep": 0}}, {"Flagger": None}])
    config["ouput_dir"] = "x"
    assert "unknown step type 'Flagger'" in validation_error(config)


def test_validation_gives_left_out_keys_their_schema_defaults_and_keeps_the_others():
    from dp3batch.config.validation import validate_config

    config = {"steps": [{"Averager": {"timestep": 2}}], "worker_wait_seconds": 5}
    validate_config(config)
    assert config["output_dir"] == "results"
    assert config["dask_report_min_seconds"] == 60
    assert config["local_cluster"] == {}
    assert config["worker_wait_seconds"] == 5
    assert config["steps"] == [{"Averager": {"timestep": 2}}]


def test_parameters_beside_their_step_type_are_named_as_misindented():
    """The reference pipeline's shipped example config has its Demixer's parameters at the
    indentation of `Demixer:` itself: YAML reads them as keys beside it."""
    text = (
        "steps:\n  - Demixer:\n    skymodel: bright_sources.txt\n"
        "    subtractsources: [bright_a, bright_b]\n"
    )
    with pytest.raises(ConfigError) as error:
        parse_steps(yaml.safe_load(text)["steps"])
    assert str(error.value) == (
        "steps[0] (Demixer): its parameters (skymodel, subtractsources) are not indented "
        "under `Demixer:`, so YAML reads them beside it; indent them two spaces further than "
        "`Demixer`"
    )


def test_a_config_read_from_json_is_made_plain_data_in_place():
    # Snakemake reads a JSON configfile into OrderedDicts, which yaml.safe_dump refuses.
    steps = [OrderedDict([("PreFlagger", OrderedDict())]), OrderedDict([("Averager", {})])]
    config = {"inputs": ["inputs/*.ms"], "steps": steps}
    validate_config(config)
    assert type(config["steps"][0]) is dict and type(config["steps"][0]["PreFlagger"]) is dict
    assert yaml.safe_load(yaml.safe_dump(config))["steps"] == [
        {"PreFlagger": {}},
        {"Averager": {}},
    ]
