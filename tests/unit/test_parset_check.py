"""Reading DP3's list of unused parset keys, and values DP3 could not be given."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.parameter_check import ParameterCheck, unused_keys
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.dp3.translation import chain_parameters

DP3_OUTPUT = """MSWriter msout.
  use thread:     true

*** WARNING: the following parset keywords were not used ***
             maybe they are misspelled
    - averager.timestpe
    - msin.foo

Traceback (most recent call last):
RuntimeError: Unused parset keywords found
"""


def test_unused_keys_are_read_from_dp3s_warning():
    assert unused_keys(DP3_OUTPUT) == ["averager.timestpe", "msin.foo"]


def test_no_warning_no_unused_keys():
    assert unused_keys("MSWriter msout.\n  use thread: true\n- not a key\n") == []


def test_a_nul_byte_in_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"steps\[0\] \(Averager\)\.minperc: .*NUL byte"):
        parse_steps([{"Averager": {"minperc": "1\x000"}}])


def _fake_dp3(directory: Path, body: str) -> str:
    script = directory / "DP3"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_check_that_names_unknown_keys_is_a_config_error_and_leaves_no_scratch(tmp_path):
    listing = DP3_OUTPUT.replace("\n", "\\n")
    dp3 = _fake_dp3(tmp_path, f"printf '{listing}'; exit 1")
    check = ParameterCheck(dp3, DP3Parameters({}, {}, ()), tmp_path / "obs_00.ms")
    scratch = Path(check.scratch.name)
    with pytest.raises(ConfigError, match=r"averager.timestpe, msin.foo .*obs_00.ms"):
        check.result()
    assert not scratch.exists()


def test_planning_that_fails_meanwhile_stops_the_running_check(tmp_path):
    pid_file = tmp_path / "pid"
    dp3 = _fake_dp3(tmp_path, f"echo $$ > {pid_file}; exec sleep 30")
    check = ParameterCheck(dp3, DP3Parameters({}, {}, ()), tmp_path / "obs_00.ms")
    deadline = time.monotonic() + 10
    # The file exists (empty) a moment before the shell writes its pid into it.
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the check's DP3 did not start"
        time.sleep(0.01)
    started = time.monotonic()
    check.cancel()
    assert time.monotonic() - started < 5
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()
    assert not Path(check.scratch.name).exists()


@pytest.fixture
def wheel_dp3(tmp_path, monkeypatch):
    """A stand-in named as the wheel's `DP3.py` (its identity is its file, as the wheel's is)
    that counts its runs; the accepted parameters are kept in a directory of the test's own."""
    monkeypatch.setattr(
        "dp3batch.dp3.parameter_check.casarc_directories", lambda: [tmp_path / "cache"]
    )
    runs = tmp_path / "runs"
    script = tmp_path / "bin" / "DP3.py"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho run >> {runs}\n")
    script.chmod(0o755)
    return str(script), lambda: len(runs.read_text().splitlines()) if runs.exists() else 0


def _checked(dp3: str, parameters: DP3Parameters, sample: Path) -> ParameterCheck:
    check = ParameterCheck(dp3, parameters, sample)
    check.result()
    return check


def test_parameters_the_wheel_accepted_are_not_checked_again(wheel_dp3, tmp_path):
    dp3, runs = wheel_dp3
    chain = chain_parameters(parse_steps([{"Averager": {"timestep": 2}}]), str(tmp_path))
    assert _checked(dp3, chain, tmp_path / "obs_00.ms").ran
    assert not _checked(dp3, chain, tmp_path / "obs_07.ms").ran
    assert runs() == 1
    other = chain_parameters(parse_steps([{"Averager": {"timestep": 4}}]), str(tmp_path))
    assert _checked(dp3, other, tmp_path / "obs_00.ms").ran
    assert runs() == 2


def test_a_reinstalled_wheel_checks_again(wheel_dp3, tmp_path):
    dp3, runs = wheel_dp3
    chain = DP3Parameters({}, {}, ())
    _checked(dp3, chain, tmp_path / "obs_00.ms")
    status = Path(dp3).stat()
    os.utime(dp3, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert _checked(dp3, chain, tmp_path / "obs_00.ms").ran
    assert runs() == 2


def test_refused_parameters_are_checked_every_time(wheel_dp3, tmp_path):
    dp3, runs = wheel_dp3
    listing = DP3_OUTPUT.replace("\n", "\\n")
    Path(dp3).write_text(
        f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\nprintf '{listing}'\nexit 1\n"
    )
    for _ in range(2):
        with pytest.raises(ConfigError, match="averager.timestpe"):
            _checked(dp3, DP3Parameters({}, {}, ()), tmp_path / "obs_00.ms")
    assert runs() == 2


def test_another_dp3_than_the_wheel_is_always_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "dp3batch.dp3.parameter_check.casarc_directories", lambda: [tmp_path / "cache"]
    )
    dp3 = _fake_dp3(tmp_path, "exit 0")  # named DP3: a wrapper may run another DP3 tomorrow
    for _ in range(2):
        assert _checked(dp3, DP3Parameters({}, {}, ()), tmp_path / "obs_00.ms").ran
