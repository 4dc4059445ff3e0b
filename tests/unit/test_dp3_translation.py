"""Unit tests of the steps → DP3 parameters translation, DP3's environment and executable."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.install import (
    DP3Error,
    casacore_measures_directory,
    dp3_environment,
    find_dp3_executable,
    wheel_aoflagger_strategy,
)
from dp3batch.dp3.parameters import DP3Parameters, format_value
from dp3batch.dp3.parset import arguments_for_dp3, parset_text
from dp3batch.dp3.translation import chain_parameters, run_parameters, step_names

STRATEGY = "/opt/strategies/default.lua"


def as_dict(parameters: DP3Parameters | list[tuple[str, str]]) -> dict[str, str]:
    return dict(parameters.pairs() if isinstance(parameters, DP3Parameters) else parameters)


# --- format_value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (4, "4"),
        (0, "0"),
        (2.5, "2.5"),
        ("DATA", "DATA"),
        ("CS*&&RS*", "CS*&&RS*"),
        ([], "[]"),
        ([1, 2], "[1,2]"),
        (("a", "b"), "[a,b]"),
        ([True, False], "[true,false]"),
        ([[1, 2], [3]], "[[1,2],[3]]"),
        (["CS001", [True, 0.5]], "[CS001,[true,0.5]]"),
    ],
)
def test_format_value(value, expected):
    assert format_value(value) == expected


# --- step_names ---------------------------------------------------------------------------


def test_step_names_are_unique_for_repeated_types():
    chain = parse_steps(
        [
            {"PreFlagger": None},
            {"AOFlagger": None},
            {"preflagger": None},
            {"Averager": None},
            {"PREFLAGGER": None},
        ]
    )
    names = step_names(chain)
    assert names == ["preflagger", "aoflagger", "preflagger2", "averager", "preflagger3"]
    assert len(set(names)) == len(names)


def test_step_names_ignore_msin_and_msout():
    chain = parse_steps([{"MsIn": None}, {"Averager": None}, {"MsOut": None}])
    assert step_names(chain) == ["averager"]


# --- chain_parameters ---------------------------------------------------------------------


def test_chain_parameters_layout():
    chain = parse_steps(
        [
            {"MsIn": {"datacolumn": "DATA"}},
            {"PreFlagger": {"baseline": ["CS*", "RS*"]}},
            {"Averager": {"timestep": 4, "freqstep": 2}},
            {"PreFlagger": {"chan": [0]}},
            {"MsOut": {"overwrite": True}},
        ]
    )
    assert chain_parameters(chain).pairs() == [
        ("checkparset", "1"),
        ("msin.datacolumn", "DATA"),
        ("msout.overwrite", "true"),
        ("steps", "[preflagger,averager,preflagger2]"),
        ("preflagger.type", "preflagger"),
        ("preflagger.baseline", "[CS*,RS*]"),
        ("averager.type", "averager"),
        ("averager.timestep", "4"),
        ("averager.freqstep", "2"),
        ("preflagger2.type", "preflagger"),
        ("preflagger2.chan", "[0]"),
    ]


def test_chain_parameters_of_empty_chain_copy_the_data():
    assert chain_parameters(parse_steps([])).pairs() == [("checkparset", "1"), ("steps", "[]")]


def test_chain_parameters_have_no_run_specific_keys():
    chain = parse_steps([{"AOFlagger": None}])
    keys = {key for key, _ in chain_parameters(chain, aoflagger_strategy=STRATEGY).pairs()}
    assert not keys & {"msin", "msout", "numthreads", "aoflagger.memorymax"}


def test_relative_file_parameters_resolve_against_extra_inputs_dir(tmp_path):
    chain = parse_steps(
        [
            {"ApplyCal": {"parmdb": "cal/solutions.h5", "correction": "amplitude000"}},
            {"Predict": {"sourcedb": "sky.skymodel"}},
            {"Demixer": {"skymodel": "/abs/demix.skymodel"}},
            {"AOFlagger": {"strategy": "my.lua"}},
        ]
    )
    parameters = as_dict(chain_parameters(chain, str(tmp_path), aoflagger_strategy=STRATEGY))
    assert parameters["applycal.parmdb"] == str(tmp_path / "cal" / "solutions.h5")
    assert parameters["applycal.correction"] == "amplitude000"  # not a file
    assert parameters["predict.sourcedb"] == str(tmp_path / "sky.skymodel")
    assert parameters["demixer.skymodel"] == "/abs/demix.skymodel"
    assert parameters["aoflagger.strategy"] == str(tmp_path / "my.lua")


def test_relative_extra_inputs_dir_gives_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chain = parse_steps([{"ApplyCal": {"parmdb": "solutions.h5"}}])
    value = as_dict(chain_parameters(chain, "extra"))["applycal.parmdb"]
    assert Path(value).is_absolute()
    assert value == str(tmp_path / "extra" / "solutions.h5")


def test_file_parameters_without_extra_inputs_dir_resolve_against_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    chain = parse_steps([{"ApplyCal": {"parmdb": "solutions.h5"}}])
    assert as_dict(chain_parameters(chain))["applycal.parmdb"] == str(tmp_path / "solutions.h5")


def test_default_aoflagger_strategy_inserted_when_not_given():
    chain = parse_steps([{"AOFlagger": None}, {"AOFlagger": {"memorymax": 2}}])
    parameters = as_dict(chain_parameters(chain, aoflagger_strategy=STRATEGY))
    assert parameters["aoflagger.strategy"] == STRATEGY
    assert parameters["aoflagger2.strategy"] == STRATEGY


def test_user_aoflagger_strategy_is_kept():
    chain = parse_steps([{"AOFlagger": {"strategy": "/data/lofar.lua"}}])
    parameters = chain_parameters(chain, aoflagger_strategy=STRATEGY)
    assert [value for key, value in parameters.pairs() if key.endswith(".strategy")] == [
        "/data/lofar.lua"
    ]
    assert parameters.chosen_strategies() == {}


def test_no_strategy_when_none_is_known():
    chain = parse_steps([{"AOFlagger": None}])
    assert "aoflagger.strategy" not in as_dict(chain_parameters(chain, aoflagger_strategy=None))


def test_strategy_not_added_to_other_steps():
    chain = parse_steps([{"PreFlagger": None}, {"Averager": None}])
    keys = [key for key, _ in chain_parameters(chain, aoflagger_strategy=STRATEGY).pairs()]
    assert not any(key.endswith(".strategy") for key in keys)


# --- file_parameters ----------------------------------------------------------------------


def test_file_parameters_lists_files_of_every_step(tmp_path):
    chain = parse_steps(
        [
            {"MsIn": {"datacolumn": "DATA"}},
            {"ApplyCal": {"parmdb": "a.h5", "correction": "phase000"}},
            {"AOFlagger": None},
            {"ApplyCal": {"parmdb": "b.h5"}},
            {"Averager": {"timestep": 2}},
            {"Predict": {"sourcedb": "sky.txt"}},
        ]
    )
    parameters = chain_parameters(chain, str(tmp_path), aoflagger_strategy=STRATEGY)
    assert parameters.file_parameters() == [
        ("applycal.parmdb", str(tmp_path / "a.h5")),
        ("aoflagger.strategy", STRATEGY),
        ("applycal2.parmdb", str(tmp_path / "b.h5")),
        ("predict.sourcedb", str(tmp_path / "sky.txt")),
    ]


def test_file_parameters_go_by_step_type_not_name():
    # A `parmdb` on a step that is not an applycal is not a file the chain reads.
    parameters = chain_parameters(parse_steps([{"PreFlagger": {"parmdb": "x"}}]))
    assert ("preflagger.parmdb", "x") in parameters.pairs()
    assert parameters.file_parameters() == []


# --- run_parameters -----------------------------------------------------------------------


def test_run_parameters_add_paths_and_threads_before_the_chain():
    chain = chain_parameters(parse_steps([{"Averager": {"timestep": 2}}]))
    run = run_parameters(chain, "/in/a.ms", "/out/a.ms.tmp", 3)
    assert run[:3] == [("msin", "/in/a.ms"), ("msout", "/out/a.ms.tmp"), ("numthreads", "3")]
    assert run[3:] == chain.pairs()
    assert not any(key.endswith("memorymax") for key, _ in run)


def test_run_parameters_bound_aoflagger_memory():
    chain = chain_parameters(parse_steps([{"AOFlagger": None}, {"AOFlagger": None}]))
    run = as_dict(run_parameters(chain, "in.ms", "out.ms", 2, memory_gb=3.5))
    assert run["aoflagger.memorymax"] == "3.50"
    assert run["aoflagger2.memorymax"] == "3.50"


@pytest.mark.parametrize("user_key", ["memorymax", "memoryperc"])
def test_run_parameters_keep_the_users_memory_bound(user_key):
    chain = chain_parameters(parse_steps([{"AOFlagger": {user_key: 50}}]))
    run = run_parameters(chain, "in.ms", "out.ms", 2, memory_gb=3.5)
    keys = [key for key, _ in run]
    assert keys.count(f"aoflagger.{user_key}") == 1
    assert as_dict(run)[f"aoflagger.{user_key}"] == "50"
    if user_key == "memoryperc":
        assert "aoflagger.memorymax" not in keys


@pytest.mark.parametrize("memory_gb", [None, 0])
def test_run_parameters_without_memory_add_no_bound(memory_gb):
    chain = chain_parameters(parse_steps([{"AOFlagger": None}]))
    run = run_parameters(chain, "in.ms", "out.ms", 2, memory_gb=memory_gb)
    assert "aoflagger.memorymax" not in as_dict(run)


def test_run_parameters_no_memory_bound_without_aoflagger():
    chain = chain_parameters(parse_steps([{"PreFlagger": None}]))
    run = run_parameters(chain, "in.ms", "out.ms", 2, memory_gb=3.5)
    assert not any("memorymax" in key for key, _ in run)


# --- arguments_for_dp3 / parset_text -------------------------------------------------------------


def test_arguments_one_unquoted_string_per_parameter():
    parameters = [
        ("msin", "/data/my obs.ms"),
        ("preflagger.baseline", "CS*&'RS*'"),
        ("steps", "[preflagger]"),
    ]
    assert arguments_for_dp3(parameters) == [
        "msin=/data/my obs.ms",
        "preflagger.baseline=CS*&'RS*'",
        "steps=[preflagger]",
    ]


def parse_parset(text: str) -> list[tuple[str, str]]:
    parameters = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        # DP3 removes the quotes around a value (the writer quotes one holding `#` or `=`).
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        parameters.append((key, value))
    return parameters


def test_a_parset_reads_back_as_the_arguments():
    chain = parse_steps(
        [{"PreFlagger": {"expr": "a=b"}}, {"Averager": {"timestep": 2}}, {"MsOut": None}]
    )
    parameters = run_parameters(chain_parameters(chain), "/in/a.ms", "/out/a.ms", 2, memory_gb=None)
    text = parset_text(parameters, header="made by dp3batch\nDP3 6.6.0")
    assert text.startswith("# made by dp3batch\n# DP3 6.6.0\n")
    assert text.endswith("\n")
    assert parse_parset(text) == parameters


def test_a_parset_without_header():
    assert parset_text([("checkparset", "1"), ("steps", "[]")]) == "checkparset=1\nsteps=[]\n"


# --- dp3_environment ----------------------------------------------------------------------


@pytest.fixture
def clean_home(tmp_path, monkeypatch):
    """A HOME without ~/.casarc and private directories (environment, cache, temporary) for
    the casarc file."""
    home = tmp_path / "home"
    home.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return home


@pytest.mark.parametrize("base", [{}, {"OPENBLAS_NUM_THREADS": "8", "PATH": "/bin"}])
def test_dp3_environment_sets_one_openblas_thread(clean_home, base):
    environment = dp3_environment(base)
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert base.get("PATH") == environment.get("PATH")


def test_dp3_environment_does_not_modify_its_argument(clean_home):
    base = {"OPENBLAS_NUM_THREADS": "8"}
    dp3_environment(base)
    assert base == {"OPENBLAS_NUM_THREADS": "8"}


def test_dp3_environment_defaults_to_os_environ(clean_home, monkeypatch):
    monkeypatch.setenv("DP3BATCH_TEST_MARKER", "yes")
    assert dp3_environment()["DP3BATCH_TEST_MARKER"] == "yes"


def test_dp3_environment_points_casarcfiles_at_the_measures_data(clean_home):
    measures = casacore_measures_directory()
    assert measures is not None, "python-casacore ships its measures data in this venv"
    environment = dp3_environment({})
    casarc = Path(environment["CASARCFILES"])
    assert casarc.is_file()
    text = casarc.read_text()
    assert "measures.directory:" in text
    assert text.strip() == f"measures.directory: {measures}"
    # The same file is reused, not rewritten with another name.
    assert dp3_environment({})["CASARCFILES"] == str(casarc)


def test_casarc_lives_in_the_environment_not_in_the_temporary_directory(clean_home):
    casarc = Path(dp3_environment({})["CASARCFILES"])
    assert casarc.parent == Path(sys.prefix) / "etc" / "dp3batch"
    assert not list(Path(tempfile.gettempdir()).iterdir())


def test_casarc_falls_back_to_the_cache_when_the_environment_is_not_writable(
    clean_home, tmp_path, monkeypatch
):
    blocker = tmp_path / "read-only-prefix"
    blocker.write_text("a file: no directory can be made under it")
    monkeypatch.setattr(sys, "prefix", str(blocker))
    casarc = Path(dp3_environment({})["CASARCFILES"])
    assert casarc.parent == clean_home / ".cache" / "dp3batch"
    assert casarc.is_file()


def test_dp3_environment_keeps_the_users_casarcfiles(clean_home):
    environment = dp3_environment({"CASARCFILES": "/etc/my.casarc"})
    assert environment["CASARCFILES"] == "/etc/my.casarc"


def test_dp3_environment_respects_a_users_home_casarc(clean_home):
    (clean_home / ".casarc").write_text("measures.directory: /somewhere\n")
    assert "CASARCFILES" not in dp3_environment({})


# --- find_dp3_executable ------------------------------------------------------------------


def make_script(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\necho DP3 6.6.0\n")
    path.chmod(mode)
    return path


def test_configured_executable_path_is_used(tmp_path):
    script = make_script(tmp_path / "dp3-wrapper.sh")
    assert find_dp3_executable(str(script)) == str(script)


def test_configured_relative_path_becomes_absolute(tmp_path, monkeypatch):
    make_script(tmp_path / "dp3-wrapper.sh")
    monkeypatch.chdir(tmp_path)
    assert find_dp3_executable("./dp3-wrapper.sh") == str(tmp_path / "dp3-wrapper.sh")


def test_configured_name_on_path_is_found(tmp_path, monkeypatch):
    make_script(tmp_path / "mydp3")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_dp3_executable("mydp3") == str(tmp_path / "mydp3")


def test_missing_configured_executable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DP3Error, match="no-such-dp3-program") as caught:
        find_dp3_executable("no-such-dp3-program")
    assert "dp3_executable" in str(caught.value)


def test_non_executable_configured_file_is_rejected(tmp_path):
    script = make_script(tmp_path / "dp3-wrapper.sh", mode=stat.S_IRUSR | stat.S_IWUSR)
    if os.access(script, os.X_OK):
        pytest.skip("running as a user that may execute any file")
    with pytest.raises(DP3Error, match="dp3-wrapper.sh"):
        find_dp3_executable(str(script))


def test_auto_finds_the_wheels_dp3_py_beside_the_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: only the venv's bin remains
    found = find_dp3_executable(None)
    assert found == str(Path(sys.executable).parent.absolute() / "DP3.py")
    assert os.access(found, os.X_OK)


def test_auto_prefers_dp3_on_path(tmp_path, monkeypatch):
    make_script(tmp_path / "DP3")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_dp3_executable(None) == str(tmp_path / "DP3")


def test_auto_without_any_dp3_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(DP3Error, match="dp3_executable"):
        find_dp3_executable(None)


# --- wheel_aoflagger_strategy -------------------------------------------------------------


def test_wheel_aoflagger_strategy_for_the_wheels_dp3_py():
    strategy = wheel_aoflagger_strategy(str(Path(sys.executable).parent / "DP3.py"))
    assert strategy is not None
    assert Path(strategy).is_file()
    assert Path(strategy).name == "generic-default.lua"
    assert Path(strategy).parent.parts[-3:] == ("DP3.libs", "aoflagger", "strategies")


@pytest.mark.parametrize("executable", ["/usr/bin/DP3", "/opt/wrappers/dp3-container.sh"])
def test_no_wheel_strategy_for_other_executables(executable):
    assert wheel_aoflagger_strategy(executable) is None
