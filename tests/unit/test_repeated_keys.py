"""A key given twice in a config file or on --config is refused with both places named."""

import json

import pytest
import yaml
from dp3batch.config.errors import ConfigError
from dp3batch.config.repeated_keys import (
    refuse_repeated_keys,
    repeated_key_problem,
    repeated_override_problem,
)
from dp3batch.rule_layer.flags import command_line_flags


def written(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_top_level_key_given_twice_is_named_with_both_lines(tmp_path):
    path = written(
        tmp_path,
        "inputs:\n  - data/*.ms\noutput_dir: /scratch/a\nsteps: []\noutput_dir: /scratch/b\n",
    )
    assert repeated_key_problem(path) == (
        f"{path}, line 5: output_dir is given twice (also on line 3); only the last would be "
        "used, without a word: delete the one you do not mean"
    )
    # The loader Snakemake uses keeps the second without a word: the reason for the check.
    assert yaml.safe_load(path.read_text())["output_dir"] == "/scratch/b"


def test_a_step_parameter_given_twice_is_named_by_its_place_in_the_chain(tmp_path):
    path = written(
        tmp_path,
        "steps:\n  - PreFlagger:\n  - Averager:\n      timestep: 4\n      freqstep: 2\n"
        "      timestep: 8\n",
    )
    problem = repeated_key_problem(path)
    assert problem.startswith(f"{path}, line 6: steps[1].Averager.timestep is given twice")
    assert "(also on line 4)" in problem


def test_a_repeat_in_a_flow_mapping_and_in_the_current_step_format_are_found(tmp_path):
    flow = written(tmp_path, "steps:\n  - Averager: {timestep: 4, timestep: 2}\n", "flow.yaml")
    assert "steps[0].Averager.timestep is given twice" in repeated_key_problem(flow)
    current = written(
        tmp_path, "steps:\n  - step: preflagger\n    step: aoflagger\n", "current.yaml"
    )
    assert "line 3: steps[0].step is given twice (also on line 2)" in repeated_key_problem(current)


@pytest.mark.parametrize(
    "text",
    [
        "inputs: [a.ms]\noutput_dir: out\nsteps:\n  - PreFlagger:\n  - PreFlagger:\n",
        # The same key in two mappings is two keys.
        "steps:\n  - Averager: {timestep: 2}\n  - Averager: {timestep: 4}\n",
        # A merge key's keys may be overridden beside it.
        "base: &base {timestep: 2, freqstep: 2}\nsteps:\n  - Averager:\n      <<: *base\n"
        "      timestep: 4\n",
        # 1 and "1" are different keys.
        "windows:\n  1: a\n  '1': b\n",
        "",
        "# only a comment\n",
    ],
)
def test_configs_without_a_repeated_key_pass(tmp_path, text):
    assert repeated_key_problem(written(tmp_path, text)) is None


def test_a_json_config_with_a_repeated_key_is_refused(tmp_path):
    path = written(tmp_path, '{"output_dir": "a", "steps": [], "output_dir": "b"}', "c.json")
    assert "output_dir is given twice" in repeated_key_problem(path)
    # JSON that PyYAML cannot compose is checked as JSON: json.dumps writes a character
    # beyond the BMP as a surrogate pair, which YAML does not take.
    text = json.dumps({"output_dir": "/data/\U0001f52d"})[:-1] + ', "output_dir": "b"}'
    escaped = written(tmp_path, text, "escaped.json")
    with pytest.raises(yaml.YAMLError):
        yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert repeated_key_problem(escaped) == (
        f"{escaped}: the key output_dir is given twice in one object; only the last would be "
        "used, without a word: delete the one you do not mean"
    )
    assert json.loads(text)["output_dir"] == "b"


def test_a_yte_template_and_an_unreadable_file_are_left_to_snakemake(tmp_path):
    template = written(
        tmp_path, "__use_yte__: true\n?if True:\n  a: 1\n?if False:\n  b: 2\n", "yte.yaml"
    )
    assert repeated_key_problem(template) is None
    assert repeated_key_problem(tmp_path / "missing.yaml") is None
    assert repeated_key_problem(written(tmp_path, "a: [\n", "broken.yaml")) is None


def test_a_key_given_twice_on_the_command_line_is_refused():
    assert repeated_override_problem(["output_dir=a", "scheduler=", "output_dir=b"]) == (
        "--config gives output_dir twice (output_dir=a and output_dir=b); only the last "
        "would be used: give it once"
    )
    assert repeated_override_problem(["output_dir=a", "inputs=[x.ms]"]) is None
    flags = command_line_flags(["snakemake", "--cores", "1", "--config", "a=1", "a=2"])
    assert flags.config_items == ("a=1", "a=2")


def test_refuse_repeated_keys_checks_every_file_then_the_command_line(tmp_path):
    good = written(tmp_path, "output_dir: a\n", "good.yaml")
    bad = written(tmp_path, "steps: []\nsteps: []\n", "bad.yaml")
    refuse_repeated_keys([good], ["output_dir=b"])
    with pytest.raises(ConfigError, match="bad.yaml, line 2: steps is given twice"):
        refuse_repeated_keys([good, bad], [])
    with pytest.raises(ConfigError, match="--config gives x twice"):
        refuse_repeated_keys([good], ["x=1", "x=2"])
