"""Unit tests of the checks a run remembers as passed (dp3batch.remembered), and of the
config's schema check, which a config that passed it before skips."""

from __future__ import annotations

import copy
import datetime
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml
from dp3batch.config import validation
from dp3batch.config.errors import ConfigError
from dp3batch.config.validation import schema_check_key, validate_config
from dp3batch.remembered import RememberedKeys
from dp3batch.testing.harness import run_python

REPOSITORY = Path(__file__).resolve().parents[2]


def config() -> dict:
    loaded = yaml.safe_load((REPOSITORY / "config" / "config.yaml").read_text())
    loaded["steps"] = [{"PreFlagger": None}, {"Averager": {"timestep": 2}}]
    return loaded


# --- the file of keys -----------------------------------------------------------------------


def test_added_keys_are_remembered_across_instances(tmp_path):
    RememberedKeys(tmp_path / "keys.json", 5).add("a")
    remembered = RememberedKeys(tmp_path / "keys.json", 5)
    assert "a" in remembered
    assert "b" not in remembered


def test_only_the_newest_keys_are_kept(tmp_path):
    remembered = RememberedKeys(tmp_path / "keys.json", 3)
    for key in "abcd":
        remembered.add(key)
    remembered.add("b")  # added again: newest, not twice
    assert remembered.keys() == ["c", "d", "b"]


@pytest.mark.parametrize("text", ["", "not json", '{"a": 1}', '["a", 2, null]'])
def test_a_damaged_file_only_means_checking_again(tmp_path, text):
    path = tmp_path / "keys.json"
    path.write_text(text)
    remembered = RememberedKeys(path, 5)
    assert remembered.keys() == (["a"] if text.startswith('["a"') else [])
    remembered.add("z")
    assert json.loads(path.read_text())[-1] == "z"


def test_an_unwritable_place_only_means_checking_again(tmp_path):
    remembered = RememberedKeys(tmp_path / "no such directory" / "keys.json", 5)
    remembered.add("a")  # no error
    assert "a" not in remembered


# --- the schema check -----------------------------------------------------------------------


def test_a_config_that_passed_is_not_checked_again(tmp_path, monkeypatch):
    passed = RememberedKeys(tmp_path / "passed.json", 5)
    validate_config(config(), passed)
    assert len(passed.keys()) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("the schema check ran again")

    monkeypatch.setattr(validation, "check_config_against_schema", must_not_run)
    scheduler, chain = validate_config(config(), passed)
    assert [step.type for step in chain.steps] == ["preflagger", "averager"]
    # Any other config is checked.
    changed = config()
    changed["steps"][1]["Averager"]["timestep"] = 4
    with pytest.raises(AssertionError, match="ran again"):
        validate_config(changed, passed)


def test_a_config_that_failed_is_not_remembered(tmp_path):
    passed = RememberedKeys(tmp_path / "passed.json", 5)
    bad = config()
    bad["steps"][1]["Averager"]["timestep"] = 2.0  # DP3 rejects a float step
    for _ in range(2):
        with pytest.raises(ConfigError, match="timestep"):
            validate_config(copy.deepcopy(bad), passed)
    assert passed.keys() == []


def test_the_key_names_the_schema_and_the_config(tmp_path, monkeypatch):
    key = schema_check_key(config())
    assert key is not None and key == schema_check_key(config())
    other = config()
    other["output_dir"] = "elsewhere"
    assert schema_check_key(other) != key
    # An edited schema (its size or time) makes every config checked again.
    schema = tmp_path / "schema.yaml"
    schema.write_bytes(validation.SCHEMA_PATH.read_bytes())
    monkeypatch.setattr(validation, "SCHEMA_PATH", schema)
    moved = schema_check_key(config())
    status = schema.stat()
    os.utime(schema, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert len({key, moved, schema_check_key(config())}) == 3


def test_a_config_that_is_not_plain_json_is_always_checked():
    dated = config()
    dated["note"] = datetime.date(2026, 12, 6)  # a YAML date
    assert schema_check_key(dated) is None


def test_a_rerun_with_the_same_config_does_not_import_jsonschema(tmp_path):
    """What the memo is for: jsonschema's import is the schema check's whole cost."""
    code = textwrap.dedent(
        f"""
        import sys, yaml
        from pathlib import Path
        from dp3batch.config.validation import validate_config
        from dp3batch.remembered import RememberedKeys
        config = yaml.safe_load(Path({str(REPOSITORY / "config" / "config.yaml")!r}).read_text())
        validate_config(config, RememberedKeys(Path({str(tmp_path / "passed.json")!r}), 5))
        print("jsonschema" in sys.modules)
        """
    )
    answers = []
    for _ in range(2):
        completed = run_python(code)
        assert completed.returncode == 0, completed.stderr
        answers.append(completed.stdout.strip())
    assert answers == ["True", "False"]
