"""The steps → DP3 parameters translation (finding and running DP3 itself is dp3_install).

The translation yields a `DP3Parameters` (see dp3_parameters), formatted into DP3's ordered
(key, value) strings only at the end. Result-defining parameters (`chain_parameters`) are
kept apart from the per-run ones (`run_parameters`: input and output paths, thread count,
memory bound) so that a completion record can be compared with the current config without
tripping over things that do not change the output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dp3batch.config.steps import Chain, Step
from dp3batch.dp3.h5parm import H5ParmError, applycal_parameters, read_h5parm
from dp3batch.dp3.parameters import FILE_PARAMETERS, DP3Parameters, DP3Step, DP3Value, dp3_value
from dp3batch.dp3.parset import literal


def aoflagger_steps_without_strategy(chain: Chain) -> bool:
    """Whether some AOFlagger step leaves its strategy to AOFlagger's per-telescope default."""
    return any(step.type == "aoflagger" and "strategy" not in step.params for step in chain.steps)


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


def chain_parameters(
    chain: Chain,
    extra_inputs_dir: str | None = None,
    aoflagger_strategy: str | None = None,
) -> DP3Parameters:
    """The result-defining DP3 parameters of a chain (no paths of the MS, no threads).

    File parameters become absolute paths, so the parameters mean the same on every worker.
    `aoflagger_strategy` is the workflow's choice for AOFlagger steps that name none."""
    steps = tuple(
        _dp3_step(name, step, extra_inputs_dir, aoflagger_strategy)
        for name, step in zip(step_names(chain), chain.steps, strict=True)
    )
    return DP3Parameters(msin=_values(chain.msin), msout=_values(chain.msout), steps=steps)


def _values(params: dict[str, Any]) -> dict[str, DP3Value]:
    return {key: dp3_value(value) for key, value in params.items()}


def _dp3_step(
    name: str, step: Step, extra_inputs_dir: str | None, aoflagger_strategy: str | None
) -> DP3Step:
    files = FILE_PARAMETERS.get(step.type, ())
    params = {
        key: resolve_file_parameter(str(value), extra_inputs_dir) if key in files else value
        for key, value in _values(step.params).items()
    }
    added: dict[str, Any] = {}
    if step.type == "aoflagger" and "strategy" not in params and aoflagger_strategy:
        added["strategy"] = resolve_file_parameter(aoflagger_strategy, extra_inputs_dir)
    if step.type == "applycal":
        added = applycal_expansion(name, params)
    return DP3Step(name, step.type, params, _values(added))


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
    parameters: DP3Parameters,
    msin: str,
    msout: str,
    numthreads: int,
    memory_gb: float | None = None,
) -> list[tuple[str, str]]:
    """DP3's (key, value) strings of one run: paths (as `parset.literal`s), threads, demixer
    instrument models inside the output, and an AOFlagger memory bound, then the parameters
    themselves.

    AOFlagger's memory grows with its time window and dask's nanny cannot see it (DP3 is a
    child process), so unless the user bounded it, bound it by the worker's memory share."""
    run = [
        ("msin", literal(msin, "msin")),
        ("msout", literal(msout, "msout")),
        ("numthreads", str(numthreads)),
    ]
    for key, name in parameters.instrument_models():
        run.append((key, literal(f"{msout}/{name}", key)))
    if memory_gb:
        for step in parameters.steps_of_type("aoflagger"):
            if step.value("memorymax") is None and step.value("memoryperc") is None:
                run.append((f"{step.name}.memorymax", f"{memory_gb:.2f}"))
    return run + parameters.pairs()
