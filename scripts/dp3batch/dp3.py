"""DP3 itself: finding the executable, the environment it needs, and the steps → parameters
translation.

The translation yields an ordered list of (key, value) pairs. Result-defining parameters
(`chain_parameters`) are kept apart from the per-run ones (input and output paths, thread
count, memory bound) so that a completion record can be compared with the current config
without tripping over things that do not change the output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dp3batch.config import Chain
from dp3batch.h5parm import H5ParmError, applycal_parameters, read_h5parm

# Parameters that name a file, per step type: relative values resolve against extra_inputs_dir.
FILE_PARAMETERS = {
    "applycal": ("parmdb",),
    "demixer": ("skymodel",),
    "predict": ("sourcedb",),
    "aoflagger": ("strategy",),
}


# Where a demixer step's instrument model (a ParmDB table DP3 writes on every run; default
# `instrument` in the working directory, shared by every task) goes inside the output MS: the
# commit of the output moves it along, and no two runs ever write the same one.
INSTRUMENT_MODEL_NAME = "instrument"


class DP3Error(RuntimeError):
    """DP3 cannot be found or does not run; the message says how to fix it."""


# What marks the `DP3` command this package installs (pyproject.toml, `dp3_command.main`).
OWN_COMMAND_MARKER = b"dp3batch.dp3_command"


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


def _writable_directory(candidates: list[Path]) -> Path:
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
        _writable_directory(casarc_directories())
        / f"dp3batch-casarc-{os.getuid()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    )
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_suffix(f".{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)
    return path


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


def dp3_version(executable: str, environment: dict[str, str] | None = None) -> str:
    """`DP3 --version`, e.g. "6.6.0"; raises DP3Error with DP3's own words if it does not run."""
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


def aoflagger_steps_without_strategy(chain: Chain) -> bool:
    """Whether some AOFlagger step leaves its strategy to AOFlagger's per-telescope default."""
    return any(step.type == "aoflagger" and "strategy" not in step.params for step in chain.steps)


def format_value(value: Any) -> str:
    """A config value as DP3 reads it: true/false, [a,b], plain numbers and strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def resolve_file_parameter(value: str, extra_inputs_dir: str | None) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(extra_inputs_dir or ".") / path
    return str(path.absolute())


def step_names(chain: Chain) -> list[str]:
    """Unique DP3 step names: the type, then type2, type3, ... for repeats."""
    seen: dict[str, int] = {}
    names = []
    for step in chain.steps:
        seen[step.type] = seen.get(step.type, 0) + 1
        count = seen[step.type]
        names.append(step.type if count == 1 else f"{step.type}{count}")
    return names


def file_parameters(parameters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(key, absolute path) of every parameter that names a file the chain reads."""
    step_types = {key[: -len(".type")]: value for key, value in parameters if key.endswith(".type")}
    files = []
    for key, value in parameters:
        step, _, parameter = key.rpartition(".")
        if parameter in FILE_PARAMETERS.get(step_types.get(step, ""), ()):
            files.append((key, value))
    return files


def chain_parameters(
    chain: Chain,
    extra_inputs_dir: str | None = None,
    aoflagger_strategy: str | None = None,
) -> list[tuple[str, str]]:
    """The result-defining DP3 parameters of a chain, in order (no paths of the MS, no threads).

    File parameters become absolute paths, so the list means the same on every worker.
    """
    parameters: list[tuple[str, str]] = [("checkparset", "1")]
    for prefix, params in (("msin", chain.msin), ("msout", chain.msout)):
        for key, value in params.items():
            parameters.append((f"{prefix}.{key}", format_value(value)))
    names = step_names(chain)
    parameters.append(("steps", format_value(names)))
    for name, step in zip(names, chain.steps, strict=True):
        parameters.append((f"{name}.type", step.type))
        params = dict(step.params)
        if step.type == "aoflagger" and "strategy" not in params and aoflagger_strategy:
            params["strategy"] = aoflagger_strategy
        for key, value in params.items():
            if key in FILE_PARAMETERS.get(step.type, ()):
                value = resolve_file_parameter(str(value), extra_inputs_dir)
                params[key] = value
            parameters.append((f"{name}.{key}", format_value(value)))
        if step.type == "applycal":
            for key, value in applycal_expansion(name, params).items():
                parameters.append((f"{name}.{key}", format_value(value)))
    return parameters


def applycal_expansion(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The ApplyCal parameters that apply the step's H5Parm (see `h5parm.applycal_parameters`).

    `params` holds the step's parameters with `parmdb` resolved. A missing or unreadable file
    is not inspected here: `extra_inputs.check_extra_inputs` reports it, naming the step."""
    path = str(params.get("parmdb", ""))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return {}
    if ".h5" not in path:
        # DP3 takes a parmdb for an H5Parm only when its path contains ".h5".
        raise H5ParmError(
            f"steps: {name} parmdb {path}: DP3 reads an H5Parm only from a file whose name "
            "contains '.h5'; rename it (for example to solutions.h5)"
        )
    try:
        h5parm = read_h5parm(path, params.get("solset"))
        return applycal_parameters(h5parm, params)
    except H5ParmError as error:
        raise H5ParmError(f"steps: {name} parmdb {error}") from None


def run_parameters(
    parameters: list[tuple[str, str]],
    msin: str,
    msout: str,
    numthreads: int,
    memory_gb: float | None = None,
) -> list[tuple[str, str]]:
    """Add what belongs to one run: paths, threads, demixer instrument models inside the
    output, and an AOFlagger memory bound.

    AOFlagger's memory grows with its time window and dask's nanny cannot see it (DP3 is a
    child process), so unless the user bounded it, bound it by the worker's memory share."""
    keys = {key for key, _ in parameters}
    run = [("msin", msin), ("msout", msout), ("numthreads", str(numthreads))]
    for key, name in instrument_models(parameters):
        run.append((key, f"{msout}/{name}"))
    if memory_gb:
        for step in steps_of_type(parameters, "aoflagger"):
            if f"{step}.memorymax" not in keys and f"{step}.memoryperc" not in keys:
                run.append((f"{step}.memorymax", f"{memory_gb:.2f}"))
    return run + list(parameters)


def steps_of_type(parameters: list[tuple[str, str]], step_type: str) -> list[str]:
    """Names of the chain's steps of one type, in order."""
    return [
        key[: -len(".type")]
        for key, value in parameters
        if key.endswith(".type") and value == step_type
    ]


def instrument_models(parameters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(parameter key, name inside the output MS) of each demixer step's instrument model."""
    return [
        (
            f"{step}.instrumentmodel",
            INSTRUMENT_MODEL_NAME if step == "demixer" else f"{INSTRUMENT_MODEL_NAME}_{step}",
        )
        for step in steps_of_type(parameters, "demixer")
    ]


def required_output_files(parameters: list[tuple[str, str]]) -> list[str]:
    """What DP3 writes into the output MS besides the MS itself: without these, an output is
    not complete."""
    return [name for _, name in instrument_models(parameters)]


def as_arguments(parameters: list[tuple[str, str]]) -> list[str]:
    """DP3's command-line form: one `key=value` argument each (never through a shell)."""
    return [f"{key}={value}" for key, value in parameters]


def as_parset(parameters: list[tuple[str, str]], header: str = "") -> str:
    """A parset file that `DP3 <file>` runs as is."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={_parset_value(value)}" for key, value in parameters]
    return "\n".join(lines) + "\n"


def _parset_value(value: str) -> str:
    """A parset line ends at `#` (a comment) unless the value is quoted."""
    if "#" not in value:
        return value
    quote = "'" if '"' in value else '"'
    return f"{quote}{value}{quote}"
