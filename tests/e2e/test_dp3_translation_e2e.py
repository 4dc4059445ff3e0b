"""Unit tests of the steps → DP3 parameters translation, DP3's environment and executable."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from dp3batch.dp3.parameters import DP3Parameters

STRATEGY = "/opt/strategies/default.lua"


def as_dict(parameters: DP3Parameters | list[tuple[str, str]]) -> dict[str, str]:
    return dict(parameters.pairs() if isinstance(parameters, DP3Parameters) else parameters)


# --- format_value -------------------------------------------------------------------------


# --- step_names ---------------------------------------------------------------------------


# --- chain_parameters ---------------------------------------------------------------------


# --- file_parameters ----------------------------------------------------------------------


# --- run_parameters -----------------------------------------------------------------------


# --- arguments_for_dp3 / parset_text -------------------------------------------------------------


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


# --- find_dp3_executable ------------------------------------------------------------------


def make_script(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\necho DP3 6.6.0\n")
    path.chmod(mode)
    return path


# --- wheel_aoflagger_strategy -------------------------------------------------------------


@pytest.mark.e2e  # runs DP3 once
def test_the_wheels_version_is_asked_once_then_kept_beside_the_casarc(clean_home):
    import importlib.util

    from dp3batch.dp3.install import dp3_version

    wheel = Path(sys.executable).parent / "DP3.py"
    if not wheel.exists() or importlib.util.find_spec("dp3") is None:
        pytest.fail("the dp3 wheel (requirements.txt) is not installed")
    first = dp3_version(str(wheel))
    cache = next(Path(sys.prefix).rglob("dp3-version.json"))
    assert json.loads(cache.read_text())["version"] == first
    cache.write_text(cache.read_text().replace(first, "9.9.9"))  # the kept answer is used
    assert dp3_version(str(wheel)) == "9.9.9"
