"""DP3's text forms: paths written so that DP3 reads them as named, one writer that refuses
what DP3 would read as something else (tests/test_hostile_names.py runs them through DP3)."""

from __future__ import annotations

import os

import pytest
from dp3batch.books.layout import check_output_names, longest_entry_name
from dp3batch.config.errors import ConfigError
from dp3batch.dp3.parset import (
    UnsafeParameter,
    arguments_for_dp3,
    check_path,
    environment_variable_hint,
    input_path_problem,
    literal,
    parset_text,
    path_problem,
    shown,
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/data/plain.ms", "/data/plain.ms"),
        ("/data/my obs/é 日.ms", "/data/my obs/é 日.ms"),
        ("/data/John's data/obs.ms", '"/data/John\'s data/obs.ms"'),
        ("/data/in'q'/obs.ms", "\"/data/in'q'/obs.ms\""),
        ('/data/say "hi"/obs.ms', "'/data/say \"hi\"/obs.ms'"),
        ("/data/run#2/obs.ms", '"/data/run#2/obs.ms"'),
        ("/data/a=b/obs.ms", '"/data/a=b/obs.ms"'),
        ("/data/obs.ms ", '"/data/obs.ms "'),
        ("/data/ lead/obs.ms", "/data/ lead/obs.ms"),
    ],
)
def test_a_literal_is_quoted_only_when_dp3_would_misread_it(path, value):
    assert literal(path) == value


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/data/inj\nmsout.name=x.ms/a.ms", "line break"),
        ("/data/a\rb/a.ms", "line break"),
        ("/data/a\tb/a.ms", "control character"),
        ("/data/a\u2028b/a.ms", "line break"),
        ('/data/it\'s "x"/a.ms', "both ' and \""),
        ("/data/$HOME/a.ms", "environment variable"),
        ("/data/${HOME}x/a.ms", "environment variable"),
        (os.fsdecode(b"/data/caf\xe9/a.ms"), "not UTF-8 text"),
    ],
)
def test_a_path_no_quoting_can_carry_is_refused(path, words):
    assert words in path_problem(path)
    with pytest.raises(UnsafeParameter, match="msin"):
        literal(path, "msin")


@pytest.mark.parametrize("name", ["in*.ms", "in?.ms", "in[X].ms"])
def test_an_input_name_dp3_reads_as_a_pattern_is_refused(name):
    assert "pattern" in input_path_problem(f"/data/{name}")
    # In a directory DP3 does not expand them (measured): only the name counts.
    assert input_path_problem(f"/data/{name}/obs.ms") is None


def test_a_refused_path_is_named_on_one_line_with_what_to_do():
    with pytest.raises(ConfigError) as error:
        check_path("inputs", "/data/inj\nmsout.name=important.ms/a.ms")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("inputs: /data/inj\\nmsout.name=important.ms/a.ms has a line")
    assert "rename it" in message


def test_a_set_environment_variable_in_a_path_is_named_with_its_value(monkeypatch):
    monkeypatch.setenv("OBS_SCRATCH", "/scratch/u1")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    assert environment_variable_hint("/w/$OBS_SCRATCH/out", "output_dir") == (
        "has $OBS_SCRATCH in it, taken as written: neither YAML nor Snakemake replaces "
        "environment variables in a config file. Write the path out ($OBS_SCRATCH is "
        "/scratch/u1 here), or give it on the command line, where the shell replaces it: "
        '--config "output_dir=$OBS_SCRATCH/…"'
    )
    assert environment_variable_hint("${OBS_SCRATCH}/*.ms", "inputs").endswith(
        '--config "inputs=[${OBS_SCRATCH}/…]"'
    )
    # A step's file has no command-line form; an unset name is no variable the user meant.
    assert environment_variable_hint("/c/$OBS_SCRATCH.h5", "steps: ApplyCal parmdb").endswith(
        "($OBS_SCRATCH is /scratch/u1 here)"
    )
    assert environment_variable_hint("/w/$NOT_SET_HERE/out", "output_dir") is None
    assert environment_variable_hint("/w/$NOT_SET_HERE/$OBS_SCRATCH", "output_dir").startswith(
        "has $OBS_SCRATCH in it"
    )
    assert environment_variable_hint("/w/price$5/out", "output_dir") is None


def test_a_dollar_path_that_exists_is_a_name_to_rename_and_one_that_does_not_a_variable(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("OBS_SCRATCH", "/scratch/u1")
    existing = tmp_path / "$OBS_SCRATCH"
    existing.mkdir()
    with pytest.raises(ConfigError, match="has '\\$' in it, which casacore .* rename it"):
        check_path("output_dir", existing)
    with pytest.raises(ConfigError, match="has \\$OBS_SCRATCH in it, taken as written"):
        check_path("output_dir", tmp_path / "other" / "$OBS_SCRATCH")


def test_a_name_that_is_not_utf8_is_shown_with_its_byte_and_printable():
    with pytest.raises(ConfigError) as error:
        check_path("inputs", os.fsdecode(b"/data/caf\xe9 \xe9t\xe9/a.ms"))
    message = str(error.value)
    assert message.startswith("inputs: /data/caf\\xe9 \\xe9t\\xe9/a.ms is not UTF-8 text")
    message.encode("utf-8")  # printable as it is: no surrogate left in it
    assert shown("/data/café 観測/a.ms") == "/data/café 観測/a.ms"
    assert shown(os.fsdecode(b"/d/\xe9\n")) == "/d/\\xe9\\n"


def test_shown_escapes_control_characters_only():
    assert shown("/data/é x") == "/data/é x"
    assert shown("a\nb\tc") == "a\\nb\\tc"


def test_the_writer_refuses_a_line_break_in_any_value():
    injected = [("msin", "/data/a.ms\nmsout.name=important.ms"), ("steps", "[]")]
    with pytest.raises(UnsafeParameter, match="line break"):
        parset_text(injected)
    with pytest.raises(UnsafeParameter, match="line break"):
        arguments_for_dp3(injected)


def test_the_writer_refuses_a_key_that_is_not_a_dp3_key():
    with pytest.raises(UnsafeParameter, match="not a DP3 key"):
        parset_text([("msin\nmsout.name", "x")])


def test_the_writer_quotes_a_user_value_a_parset_line_would_cut_or_split():
    text = parset_text([("preflagger.expr", "a=b"), ("x.comment", "run#2"), ("steps", "[]")])
    assert text.splitlines() == ['preflagger.expr="a=b"', 'x.comment="run#2"', "steps=[]"]


def test_the_writer_does_not_quote_a_literal_twice():
    text = parset_text([("msin", literal("/data/run#2/a.ms"))])
    assert text == 'msin="/data/run#2/a.ms"\n'


def test_a_header_is_comments_only():
    text = parset_text([("steps", "[]")], header="made\nby\u2028us")
    assert all(line.startswith("# ") for line in text.splitlines()[:-1])


def test_the_temporary_name_must_fit_the_filesystem(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = "x" * (limit - len(longest_entry_name("")) - len(".ms")) + ".ms"
    assert len(longest_entry_name(fits)) == limit
    check_output_names(tmp_path / "results", [fits])
    too_long = "y" + fits
    with pytest.raises(
        ConfigError, match=r"too long a name.*shorten the input's name by at least 1 "
    ):
        check_output_names(tmp_path / "results", [too_long])
