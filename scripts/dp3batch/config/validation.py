"""Configuration: the JSON schema, the batch pre-processing `steps:` format and its checks.

Every problem is reported as a `ConfigError` whose message names the offending key and says
how to fix it; the rule layer shows that message and nothing else.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dp3batch.config.errors import ConfigError
from dp3batch.config.reference_format import is_reference_entry
from dp3batch.config.steps import Chain, parse_steps
from dp3batch.remembered import RememberedKeys

# Package data: every key of the config, its default and its description.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.yaml"


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


def coerce_frequency(value: Any) -> Any:
    """`frequency_chunk_hz: 2e6` in a YAML file is a string to PyYAML (YAML 1.1 wants
    `2.0e+6`): a number written so is taken as one; anything else is left to the schema."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def schema_check_key(config: dict) -> str | None:
    """What the schema check's verdict on `config` depends on: the config itself, the schema,
    this module and the installed jsonschema (their files' sizes and times, which any edit or
    reinstall changes); None for a config that is not plain JSON (a YAML date, say)."""
    try:
        parts = [json.dumps(config, sort_keys=True)]
    except (TypeError, ValueError):
        return None
    spec = importlib.util.find_spec("jsonschema")
    if spec is None or not spec.origin:
        return None
    for path in (SCHEMA_PATH, __file__, spec.origin):
        try:
            status = os.stat(path)
        except OSError:
            return None
        parts.append(f"{path}:{status.st_size}:{status.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def validate_config(config: dict, passed: RememberedKeys | None = None) -> tuple[str | None, Chain]:
    """Check the whole config; return the normalised scheduler address and the parsed chain.

    The steps are checked structurally first so that their messages are specific, then the
    whole config against the schema (parameter types and ranges, unknown keys). `passed`:
    the configs that passed the schema check before (see schema_check_key), which are not
    checked again: importing jsonschema costs every run 50-90 ms, a tenth of a no-op rerun.
    """
    schema = load_schema()
    make_plain(config)
    fill_defaults(config, schema)
    scheduler = coerce_scheduler(config.get("scheduler"))
    config["frequency_chunk_hz"] = coerce_frequency(config.get("frequency_chunk_hz"))
    sdm_path = config.get("sdm_path")
    chain = parse_steps(config.get("steps"), sdm_path if isinstance(sdm_path, str) else None)
    if passed is None or (key := schema_check_key(config)) is None:
        check_config_against_schema(config, schema)
    elif key not in passed:
        check_config_against_schema(config, schema)
        passed.add(key)
    return scheduler, chain


def plain_data(value: Any) -> Any:
    """`value` with every mapping a dict and every sequence a list (strings as they are)."""
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(item) for item in value]
    return value


def make_plain(config: dict) -> None:
    """Snakemake reads a JSON configfile into OrderedDicts: make its values plain, in place,
    so that the config is written back (the run's `config.yaml`) as YAML of plain data."""
    for key, value in config.items():
        config[key] = plain_data(value)


def fill_defaults(config: dict, schema: dict) -> None:
    """Give every key the config leaves out its schema default, in place (the defaults are
    stated once, in the schema; a batch pre-processing config file brings `steps` only)."""
    for key, definition in schema.get("properties", {}).items():
        if key not in config and "default" in definition:
            config[key] = copy.deepcopy(definition["default"])
