"""DP3 as installed here: finding the program, the environment it needs (OpenBLAS, casacore's
measures data), its version, and the AOFlagger strategies the dp3 wheel ships but cannot find.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class DP3Error(RuntimeError):
    """DP3 cannot be found or does not run; the message says how to fix it."""


# What marks the `DP3` command this package installs (pyproject.toml, `dp3_command.main`).
OWN_COMMAND_MARKER = b"dp3batch.dp3.command"


def unwrap_own_command(executable: str) -> str:
    """This package's `DP3` command runs the wheel's `DP3.py` beside it in `dp3_environment`:
    the workflow runs that `DP3.py` itself, so that it behaves exactly as with `DP3.py`
    (the wheel's AOFlagger strategy, the recorded command line)."""
    try:
        with open(executable, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return executable
    wheel = Path(executable).parent / "DP3.py"
    if OWN_COMMAND_MARKER in head and os.access(wheel, os.X_OK):
        return str(wheel)
    return executable


def find_dp3_executable(configured: str | None = None) -> str:
    """Absolute path of the DP3 program: the configured one, else `DP3`, else the wheel's
    `DP3.py` (on PATH or beside this Python interpreter)."""
    if configured:
        found = shutil.which(configured) or (
            str(Path(configured).resolve()) if Path(configured).is_file() else None
        )
        if not found or not os.access(found, os.X_OK):
            raise DP3Error(
                f"dp3_executable: {configured!r} is not an executable file or a program on PATH"
            )
        return unwrap_own_command(str(Path(found).absolute()))
    interpreter_bin = str(Path(sys.executable).parent)
    search_path = os.environ.get("PATH", "") + os.pathsep + interpreter_bin
    for name in ("DP3", "DP3.py"):
        found = shutil.which(name, path=search_path)
        if found:
            return unwrap_own_command(str(Path(found).absolute()))
    raise DP3Error(
        "DP3 not found: neither `DP3` nor `DP3.py` is on PATH. Install it with "
        "`pip install -r requirements.txt` (the dp3 wheel), or set `dp3_executable` in the "
        "config to the DP3 program or a wrapper script"
    )


@functools.cache  # asked before every DP3 run (importlib's search: 0.2 ms); it stays put
def casacore_measures_directory() -> Path | None:
    """The measures data python-casacore ships (the dp3 wheel has none of its own)."""
    spec = importlib.util.find_spec("casacore")
    if spec is None or not spec.origin:
        return None
    data = Path(spec.origin).parent / "data"
    return data if (data / "geodetic").is_dir() else None


def casarc_directories() -> list[Path]:
    """Where the casarc may live, most stable first: inside the environment (beside the
    measures data it names, so a hand-run `DP3` finds it for as long as the venv exists),
    else the user's cache, else the temporary directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    return [Path(sys.prefix) / "etc" / "dp3batch", cache / "dp3batch", Path(tempfile.gettempdir())]


def writable_directory(candidates: list[Path]) -> Path:
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return candidates[-1]


def _casarc_file(measures: Path) -> Path:
    """A casarc naming the measures directory, written once per user and measures path."""
    text = f"measures.directory: {measures}\n"
    path = (
        writable_directory(casarc_directories())
        / f"dp3batch-casarc-{os.getuid()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    )
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_suffix(f".{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)
    return path


def ensure_home() -> None:
    """Give this process a HOME if it has none, as a login would (from the user database,
    else the temporary directory): casacore, DP3's and this workflow's table reader, opens
    no table without one ("The HOME environment variable has not been set"), and a batch
    job, a cron job or `env -i` may start the workflow or a dask worker without it. Its
    children (DP3) inherit it."""
    if os.environ.get("HOME"):
        return
    try:
        os.environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid without an entry (a container's)
        os.environ["HOME"] = tempfile.gettempdir()


def dp3_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment DP3 runs in: one OpenBLAS thread (the wheel refuses to start
    otherwise, and DP3 does its own threading) and, unless the user configured casacore
    already, the measures data shipped with python-casacore."""
    environment = dict(os.environ if base is None else base)
    environment["OPENBLAS_NUM_THREADS"] = "1"
    environment.setdefault("OMP_NUM_THREADS", "1")
    user_has_casarc = "CASARCFILES" in environment or Path("~/.casarc").expanduser().is_file()
    measures = casacore_measures_directory()
    if not user_has_casarc and measures is not None:
        environment["CASARCFILES"] = str(_casarc_file(measures))
    return environment


def wheel_version_key(executable: str) -> str | None:
    """What identifies the dp3 wheel's installed version without running it: its `DP3.py`
    and its package file (both rewritten by any reinstall). None for any other DP3 (a
    wrapper may run another DP3 tomorrow: it is always asked)."""
    if Path(executable).name != "DP3.py":
        return None
    spec = importlib.util.find_spec("dp3")
    if spec is None or not spec.origin:
        return None
    parts = []
    for path in (executable, spec.origin):
        stat = os.stat(path)
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def dp3_version(executable: str, environment: dict[str, str] | None = None) -> str:
    """`DP3 --version`, e.g. "6.6.0"; raises DP3Error with DP3's own words if it does not run.

    The wheel's answer is kept beside the casarc, keyed by its files: asking costs a DP3
    start (0.1 s) on every run, a tenth of a no-op rerun."""
    key = wheel_version_key(executable)
    cache = writable_directory(casarc_directories()) / "dp3-version.json"
    if key is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            known = json.loads(cache.read_text())
            if known["key"] == key:
                return str(known["version"])
    version = ask_dp3_version(executable, environment)
    if key is not None:
        with contextlib.suppress(OSError):
            temporary = cache.with_suffix(f".{os.getpid()}")
            temporary.write_text(json.dumps({"key": key, "version": version}))
            temporary.replace(cache)
    return version


def ask_dp3_version(executable: str, environment: dict[str, str] | None = None) -> str:
    """`executable --version`, asked now (no cache); raises DP3Error as `dp3_version`."""
    environment = environment or dp3_environment()
    try:
        completed = subprocess.run(
            [executable, "--version"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DP3Error(f"DP3 ({executable}) does not run: {error}") from error
    output = (completed.stdout + completed.stderr).strip()
    match = re.search(r"DP3\s+v?(\d+(?:\.\d+)+\S*)", output)
    if completed.returncode != 0 or not match:
        last_line = output.splitlines()[-1] if output else "(no output)"
        raise DP3Error(
            f"DP3 ({executable}) does not run: `--version` exited {completed.returncode}: "
            f"{last_line}"
        )
    return match.group(1)


# AOFlagger's own rule (TelescopeFile::TelescopeIdFromName, aoflagger 3.4): the MS's
# OBSERVATION::TELESCOPE_NAME, upper-cased, must equal one of these names exactly; any other
# telescope gets the generic strategy. The value is the stem of `<stem>-default.lua`.
AOFLAGGER_TELESCOPES = {
    "AARTFAAC": "aartfaac",
    "APERTIF": "apertif",
    "ARECIBO": "arecibo",
    "ARECIBO 305M": "arecibo",
    "ATCA": "atca",
    "BIGHORNS": "bighorns",
    "EVLA": "jvla",
    "JVLA": "jvla",
    "LOFAR": "lofar",
    "MWA": "mwa",
    "NENUFAR": "nenufar",
    "PARKES": "parkes",
    "PKS": "parkes",
    "ATPKSMB": "parkes",
    "WSRT": "wsrt",
}


def aoflagger_default_strategy_name(telescope: str | None) -> str:
    """The strategy file AOFlagger picks for a telescope when none is named."""
    stem = AOFLAGGER_TELESCOPES.get((telescope or "").upper(), "generic")
    return f"{stem}-default.lua"


@functools.cache
def wheel_strategies_directory(executable: str) -> Path | None:
    """Where the dp3 wheel keeps AOFlagger's strategies, when DP3 is the wheel's `DP3.py`.

    The wheel's AOFlagger cannot find them itself; a system DP3 or a wrapper finds its own."""
    if Path(executable).name != "DP3.py":
        return None
    spec = importlib.util.find_spec("dp3")
    if spec is None or not spec.origin:
        return None
    directory = Path(spec.origin).parent.parent / "DP3.libs" / "aoflagger" / "strategies"
    return directory if directory.is_dir() else None


@functools.cache  # asked for every MS of a rerun; the wheel does not change meanwhile
def wheel_aoflagger_strategy(executable: str, telescope: str | None = None) -> str | None:
    """The strategy the wheel's DP3 must be given for an MS of `telescope`: the one AOFlagger
    itself would pick (None unless DP3 is the wheel's `DP3.py`)."""
    directory = wheel_strategies_directory(executable)
    if directory is None:
        return None
    strategy = directory / aoflagger_default_strategy_name(telescope)
    if not strategy.is_file():
        strategy = directory / aoflagger_default_strategy_name(None)
    return str(strategy) if strategy.is_file() else None
