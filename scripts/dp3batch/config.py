"""Configuration: the JSON schema, the batch pre-processing `steps:` format and its checks.

Every problem is reported as a `ConfigError` whose message names the offending key and says
how to fix it; the rule layer shows that message and nothing else.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp3batch.errors import ConfigError
from dp3batch.reference_format import is_reference_entry, translate_entry

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"

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


def load_schema() -> dict:
    import yaml

    # libyaml's loader where PyYAML has it: the schema is read on every run.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SCHEMA_PATH) as schema_file:
        return yaml.load(schema_file, Loader=loader)


def coerce_scheduler(value: Any) -> str | None:
    """`--config scheduler=...` arrives as None, an int (8786) or a string; return HOST:PORT."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"scheduler: expected HOST:PORT, got {value!r}")
    if isinstance(value, int):
        # `--config scheduler=8786` is read by Snakemake as a number: take it as a local port.
        value = f"localhost:{value}"
    address = str(value).strip()
    without_protocol = re.sub(r"^tcp://", "", address)
    match = re.fullmatch(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})", without_protocol)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(
            f"scheduler: {address!r} is not HOST:PORT (for example localhost:8786 or "
            "tcp://10.0.0.5:8786); leave it empty to start an embedded local cluster"
        )
    return f"tcp://{without_protocol}"


@functools.cache
def _strict_integer_validator() -> type:
    """JSON Schema counts 2.0 as an integer, but DP3 rejects `timestep=2.0`: require a real
    int. (Built on first use: jsonschema's import costs every process 40 ms, and the central
    job and the workers never validate a config.)"""
    import jsonschema

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer",
            lambda checker, instance: isinstance(instance, int) and not isinstance(instance, bool),
        ),
    )


def _schema_error_message(error: Any, config: dict) -> str:
    """`error`: a jsonschema.ValidationError."""
    location = _describe_location(list(error.absolute_path), config)
    return f"{location}: {error.message}" if location else error.message


def _describe_location(path: list, config: dict) -> str:
    """Render ['steps', 2, 'Averager', 'timestep'] as `steps[2] (Averager).timestep`."""
    parts: list[str] = []
    for index, element in enumerate(path):
        if isinstance(element, int):
            parts[-1] += f"[{element}]"
        elif index == 2 and path[0] == "steps" and _is_reference_item(config, path[1]):
            parts[-1] += f" (step: {config['steps'][path[1]].get('step')})"
            parts.append(str(element))
        elif index == 2 and path[0] == "steps":
            parts[-1] += f" ({element})"
        else:
            parts.append(str(element))
    return ".".join(parts)


def _is_reference_item(config: dict, index: Any) -> bool:
    steps = config.get("steps")
    return isinstance(steps, list) and isinstance(index, int) and is_reference_entry(steps[index])


def check_config_against_schema(config: dict, schema: dict | None = None) -> None:
    """Raise ConfigError for the first schema violation, worded for a person."""
    schema = schema or load_schema()
    import jsonschema

    validator = _strict_integer_validator()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_schema_error_message(jsonschema.exceptions.best_match(errors), config))


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


def parse_steps(steps: Any) -> Chain:
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
            entry = translate_entry(index, entry)
        if not isinstance(entry, dict) or len(entry) != 1:
            keys = list(entry) if isinstance(entry, dict) else entry
            raise ConfigError(
                f"steps[{index}]: each step must be a mapping with exactly one key (the step "
                f"type), got {keys!r}; write one list item per step"
            )
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


def validate_config(config: dict) -> tuple[str | None, Chain]:
    """Check the whole config; return the normalised scheduler address and the parsed chain.

    The steps are checked structurally first so that their messages are specific, then the
    whole config against the schema (parameter types and ranges, unknown keys).
    """
    schema = load_schema()
    fill_defaults(config, schema)
    scheduler = coerce_scheduler(config.get("scheduler"))
    chain = parse_steps(config.get("steps"))
    check_config_against_schema(config, schema)
    return scheduler, chain


def fill_defaults(config: dict, schema: dict) -> None:
    """Give every key the config leaves out its schema default, in place (the defaults are
    stated once, in the schema; a batch pre-processing config file brings `steps` only)."""
    for key, definition in schema.get("properties", {}).items():
        if key not in config and "default" in definition:
            config[key] = copy.deepcopy(definition["default"])
