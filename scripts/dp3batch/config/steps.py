"""Configuration: the JSON schema, the batch pre-processing `steps:` format and its checks.

Every problem is reported as a `ConfigError` whose message names the offending key and says
how to fix it; the rule layer shows that message and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dp3batch.config.errors import ConfigError
from dp3batch.config.reference_format import is_reference_entry, translate_entry

STEP_TYPES = (
    "msin",
    "msout",
    "preflagger",
    "aoflagger",
    "averager",
    "applycal",
    "demixer",
    "predict",
)
IO_STEP_TYPES = ("msin", "msout")

# DP3 parameter names are dotted identifiers; anything else could not be a DP3 key and is
# refused rather than passed on.
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# Parameters whose values the workflow sets itself, per step type ("*" = every step).
MANAGED_PARAMETERS = {
    "msin": {"name": "the input path comes from the `inputs` config key"},
    "msout": {"name": "the output path is `<output_dir>/<input name>.ms`"},
    "demixer": {
        "instrumentmodel": "each output MS holds its own, as `<output>/instrument`",
    },
    "*": {
        "numthreads": "DP3 runs with as many threads as the dask worker has",
        "type": "the step type is the key of the step mapping",
    },
}


@dataclass(frozen=True)
class Step:
    """One entry of the `steps:` list: a lower-case DP3 step type and its parameters."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chain:
    """The parsed DP3 chain: msin/msout parameters and the processing steps in order."""

    msin: dict[str, Any]
    msout: dict[str, Any]
    steps: tuple[Step, ...]


def _check_value(where: str, value: Any) -> None:
    if value is None:
        raise ConfigError(f"{where}: has no value; remove it to use DP3's default")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(where, item)
        return
    if isinstance(value, dict):
        raise ConfigError(f"{where}: a mapping is not a DP3 value; use a scalar or a list")
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        raise ConfigError(f"{where}: values may not contain a line break")
    if isinstance(value, str) and "\0" in value:
        # A NUL byte ends a C string: DP3 would see a cut value (and exec refuses it).
        raise ConfigError(f"{where}: values may not contain a NUL byte")


def _not_one_key_message(index: int, entry: Any) -> str:
    keys = list(entry) if isinstance(entry, dict) else entry
    if isinstance(entry, dict):
        types = [key for key in entry if str(key).lower() in STEP_TYPES]
        if len(types) == 1 and entry[types[0]] is None:
            # `- Demixer:` with its parameters at the key's own indentation (as in the
            # reference pipeline's shipped example config): YAML reads them as siblings.
            others = ", ".join(str(key) for key in entry if key != types[0])
            return (
                f"steps[{index}] ({types[0]}): its parameters ({others}) are not indented "
                f"under `{types[0]}:`, so YAML reads them beside it; indent them two spaces "
                f"further than `{types[0]}`"
            )
    return (
        f"steps[{index}]: each step must be a mapping with exactly one key (the step type), "
        f"got {keys!r}; write one list item per step"
    )


def parse_steps(steps: Any, sdm_path: str | None = None) -> Chain:
    """Check a `steps:` list in the batch pre-processing format and return the chain.

    Each item is either a one-key mapping `{StepType: {DP3 parameters}}` (releases 2.x) or a
    `step: <type>` mapping with the reference pipeline's own fields (see `reference_format`).

    Structural problems (unknown types, several keys, repeated msin/msout, bad parameter
    names, managed parameters, line breaks) are found here, with messages naming the step.
    """
    if steps is None:
        steps = []
    if not isinstance(steps, list):
        raise ConfigError(
            "steps: must be a list of one-key mappings like `- Averager: {timestep: 2}`"
        )
    io_params: dict[str, dict[str, Any]] = {}
    processing: list[Step] = []
    for index, entry in enumerate(steps):
        if is_reference_entry(entry):
            # The reference pipeline's `step: <type>` format, as the one-key entry it means.
            entry = translate_entry(index, entry, sdm_path)
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(_not_one_key_message(index, entry))
        ((step_key, params),) = entry.items()
        where = f"steps[{index}] ({step_key})"
        step_type = str(step_key).lower()
        if step_type not in STEP_TYPES:
            raise ConfigError(
                f"{where}: unknown step type {step_key!r}; known types (case-insensitive): "
                + ", ".join(STEP_TYPES)
            )
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: parameters must be a mapping, got {params!r}")
        for name, value in params.items():
            if not isinstance(name, str) or not PARAMETER_NAME.fullmatch(name):
                raise ConfigError(
                    f"{where}: {name!r} is not a DP3 parameter name (letters, digits, '.' "
                    "and '_' only)"
                )
            reason = MANAGED_PARAMETERS.get(step_type, {}).get(name.lower()) or MANAGED_PARAMETERS[
                "*"
            ].get(name.lower())
            if reason:
                raise ConfigError(f"{where}: {name!r} is set by the workflow ({reason}); remove it")
            _check_value(f"{where}.{name}", value)
        if step_type in IO_STEP_TYPES:
            if step_type in io_params:
                raise ConfigError(f"{where}: {step_type} may appear at most once in steps")
            io_params[step_type] = dict(params)
        else:
            processing.append(Step(step_type, dict(params)))
    return Chain(
        msin=io_params.get("msin", {}),
        msout=io_params.get("msout", {}),
        steps=tuple(processing),
    )
