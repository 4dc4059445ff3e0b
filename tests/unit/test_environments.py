"""The conda environment files, requirements.txt and the running environment agree.

conda cannot reach its channels on the test machines, so these are static checks: every
version pinned in an environment file is the one requirements.txt pins, and the environment
the tests run in has exactly requirements.txt's versions. (That every rule names a conda
environment is Snakemake's own lint, `snakemake --lint`, run by `make lint`.)"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))

# conda-forge names of packages that pip knows under another name.
CONDA_TO_PIP = {"snakemake-minimal": "snakemake", "matplotlib-base": "matplotlib"}
# In the environment files but pinned by nothing in requirements.txt.
UNPINNED_TOOLS = {"python", "pip"}
# In requirements.txt only: the test and style tools do not belong in a rule's environment.
DEVELOPMENT_ONLY = {"pytest", "pytest-timeout", "pytest-xdist", "execnet", "ruff", "snakefmt"}
# Not on conda-forge: installed by pip inside the conda environment.
PIP_ONLY = {"dp3"}


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"requirements.txt: {line!r} is not pinned with =="
        )
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def environment_packages(path: Path) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(conda packages, pip packages) of an environment file, as {pip name: version}."""
    document = yaml.safe_load(path.read_text())
    conda: dict[str, str | None] = {}
    pip: dict[str, str | None] = {}
    for entry in document["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                assert not line.startswith("-"), f"{path.name}: pip option {line!r}"
                requirement = Requirement(line)
                specifiers = list(requirement.specifier)
                assert len(specifiers) == 1 and specifiers[0].operator == "==", (
                    f"{path.name}: pip package {line!r} is not pinned with =="
                )
                pip[canonicalize_name(requirement.name)] = specifiers[0].version
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:==?\s*([^\s=<>!,*|]+))?", entry)
        assert match, f"{path.name}: {entry!r} is not `name` or `name=version`"
        name, version = match.groups()
        conda[canonicalize_name(CONDA_TO_PIP.get(name, name))] = version
    return conda, pip


def test_there_are_environment_files():
    assert ENV_FILES


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_environment_file_pins_the_versions_of_requirements(env_file):
    pins = requirements()
    document = yaml.safe_load(env_file.read_text())
    assert document["channels"] == ["conda-forge", "nodefaults"]
    conda, pip = environment_packages(env_file)
    for name, version in conda.items():
        if name in UNPINNED_TOOLS:
            continue
        assert name in pins, f"{env_file.name}: {name} is not in requirements.txt"
        assert version == pins[name], f"{env_file.name}: {name} {version} != {pins[name]}"
    for name, version in pip.items():
        assert name in PIP_ONLY, f"{env_file.name}: {name} is on conda-forge: take it from there"
        assert version == pins[name], f"{env_file.name}: {name} {version} != {pins[name]}"
    # Everything the workflow needs at run time is in the environment, nothing is forgotten.
    assert set(conda) - UNPINNED_TOOLS | set(pip) == set(pins) - DEVELOPMENT_ONLY
    python = conda["python"]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_installed_versions_are_the_pinned_ones():
    wrong = {}
    for name, version in requirements().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"(pinned, installed) differ: {wrong}; run pip install -r requirements.txt"


def test_pins_meet_what_the_code_expects():
    pins = requirements()
    snakefile = (REPO / "Snakefile").read_text()
    minimum = re.search(r'min_version\("([^"]+)"\)', snakefile).group(1)
    assert Version(pins["snakemake"]) >= Version(minimum)
    # snakemake 9.16.3 refuses to run with packaging 26 or later.
    assert Version(pins["packaging"]) < Version("26")
    # dask and distributed are released together and must match.
    assert pins["dask"] == pins["distributed"]
    pyproject = (REPO / "pyproject.toml").read_text()
    target = re.search(r'target-version\s*=\s*"py(\d)(\d+)"', pyproject).groups()
    assert (sys.version_info.major, sys.version_info.minor) == tuple(map(int, target))


def test_a_process_without_home_is_given_the_users_as_a_login_would(monkeypatch):
    import pwd
    import tempfile

    from dp3batch.dp3.install import ensure_home

    monkeypatch.setenv("HOME", "/somewhere/else")
    ensure_home()
    assert os.environ["HOME"] == "/somewhere/else"  # one that is set is kept
    monkeypatch.delenv("HOME")
    ensure_home()
    assert os.environ["HOME"] == pwd.getpwuid(os.getuid()).pw_dir
    monkeypatch.setenv("HOME", "")  # empty is unset to casacore

    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    ensure_home()
    assert os.environ["HOME"] == tempfile.gettempdir()
