"""The steps → DP3 parameters translation (finding and running DP3 itself is dp3_install).

The translation yields an ordered list of (key, value) pairs. Result-defining parameters
(`chain_parameters`) are kept apart from the per-run ones (input and output paths, thread
count, memory bound) so that a completion record can be compared with the current config
without tripping over things that do not change the output.
"""

from __future__ import annotations

import os
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
