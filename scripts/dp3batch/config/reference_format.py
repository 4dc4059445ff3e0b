"""The reference pipeline's current `steps:` format, translated to the one-key format.

SKA's batch pre-processing pipeline (after release 2.3.0) writes a step as a mapping with a
`step: <type>` key and domain-level fields beside it:

    - step: preflagger
      frequency_ranges_mhz: [{start: 87.5, stop: 108.0}]
    - step: aoflagger
      strategy: {kind: file, path: my-strategy.lua}
      memory_max_gb: 8

Each such entry becomes the equivalent one-key entry (`{"preflagger": {"freqrange":
["87.5..108.0 MHz"]}}`), which `config.parse_steps` then checks like any other, so both
formats (also mixed in one list: every entry says which it is) end in the same `Chain`.

Translated fields (preflagger, aoflagger, applycal) are the documented ones; any other field
of those steps is refused, because silently passing a field DP3 does not know would fail
every MS at run time. The fields of the other steps are not documented: they are read as
DP3's own parameters, as in the one-key format.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dp3batch.config.errors import ConfigError

STEP_KEY = "step"

# AOFlagger's own strategies, shipped by the dp3 wheel; the reference pipeline's SKA-Low
# presets are its own files and not public.
WHEEL_PRESETS = {"lofar_default": "lofar-default.lua"}
UNAVAILABLE_PRESETS = ("ska_low_sharp", "ska_low_extended")

# Steps whose fields are not documented by the reference pipeline: DP3's own parameters.
PASS_THROUGH_TYPES = ("msin", "msout", "averager", "demixer", "predict")

ONE_KEY_HINT = "or give DP3's own parameters in the one-key format, e.g. `- {}: {{...}}`"


def is_reference_entry(entry: Any) -> bool:
    """Whether a `steps:` item is in the `step: <type>` format (no DP3 step type is `step`)."""
    return isinstance(entry, dict) and STEP_KEY in entry


def _where(index: int, step_type: Any) -> str:
    return f"steps[{index}] (step: {step_type})"


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _only_fields(where: str, fields: dict[str, Any], known: tuple[str, ...], dp3_type: str):
    unknown = sorted(str(name) for name in fields if name not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; the fields of this step are "
            f"{', '.join(known)} ({ONE_KEY_HINT.format(dp3_type)})"
        )


def _mapping(where: str, value: Any, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping like {example}, got {value!r}")
    return value


def _format_mhz(value: float) -> str:
    return f"{value:g}"


def preflagger_parameters(where: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`frequency_ranges_mhz: [{start, stop}]` (MHz) → DP3 `freqrange=[start..stop MHz]`."""
    _only_fields(where, fields, ("frequency_ranges_mhz",), "PreFlagger")
    ranges = fields.get("frequency_ranges_mhz")
    if not isinstance(ranges, list) or not ranges:
        raise ConfigError(
            f"{where}.frequency_ranges_mhz: required, a list of at least one "
            "{start: MHz, stop: MHz}"
        )
    freqrange = []
    for number, item in enumerate(ranges):
        item_where = f"{where}.frequency_ranges_mhz[{number}]"
        item = _mapping(item_where, item, "{start: 87.5, stop: 108.0}")
        _only_fields(item_where, item, ("start", "stop"), "PreFlagger")
        if "start" not in item or "stop" not in item:
            raise ConfigError(f"{item_where}: needs both start and stop (MHz)")
        start = _number(f"{item_where}.start", item["start"])
        stop = _number(f"{item_where}.stop", item["stop"])
        if not start < stop:
            raise ConfigError(f"{item_where}: start ({start:g}) must be below stop ({stop:g})")
        freqrange.append(f"{_format_mhz(start)}..{_format_mhz(stop)} MHz")
    return {"freqrange": freqrange}


def wheel_strategy_directory() -> Path | None:
    """AOFlagger's strategies as the dp3 wheel installs them (site-packages/DP3.libs)."""
    spec = importlib.util.find_spec("dp3")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent.parent / "DP3.libs" / "aoflagger" / "strategies"


def preset_strategy(where: str, name: Any, directory: Path | None) -> str:
    """The strategy file of a named preset, or a ConfigError saying what to do instead."""
    if name in UNAVAILABLE_PRESETS:
        raise ConfigError(
            f"{where}: preset {name!r} is the reference pipeline's own strategy and is not "
            "available here; save it as a .lua file and use `strategy: {kind: file, path: "
            "/path/to/strategy.lua}`"
        )
    if name not in WHEEL_PRESETS:
        raise ConfigError(
            f"{where}: unknown preset {name!r}; available: {', '.join(WHEEL_PRESETS)} (or use "
            "`strategy: {kind: file, path: /path/to/strategy.lua}`)"
        )
    path = directory / WHEEL_PRESETS[name] if directory else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"{where}: preset {name!r} is AOFlagger's {WHEEL_PRESETS[name]}, which the dp3 "
            "wheel ships, but the wheel is not installed here; install it (`pip install -r "
            "requirements.txt`) or use `strategy: {kind: file, path: /path/to/strategy.lua}`"
        )
    return str(path)


def strategy_parameter(where: str, strategy: Any, directory: Path | None) -> str:
    """`{kind: preset, name: N}` or `{kind: file, path: P}` → DP3 `strategy`."""
    example = "{kind: file, path: /path/to/strategy.lua} or {kind: preset, name: lofar_default}"
    if strategy is None:
        raise ConfigError(f"{where}: required, {example}")
    strategy = _mapping(where, strategy, example)
    kind = strategy.get("kind")
    if kind == "preset":
        _only_fields(where, strategy, ("kind", "name"), "AOFlagger")
        return preset_strategy(where, strategy.get("name"), directory)
    if kind == "file":
        _only_fields(where, strategy, ("kind", "path"), "AOFlagger")
        path = strategy.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{where}.path: required, the strategy file (.lua)")
        return path
    raise ConfigError(f"{where}.kind: {kind!r} is not one of preset, file; write {example}")


def aoflagger_parameters(
    where: str, fields: dict[str, Any], directory: Path | None = None
) -> dict[str, Any]:
    """`strategy` → `strategy` (a file path); `memory_max_gb` → `memorymax` (GB)."""
    _only_fields(where, fields, ("strategy", "memory_max_gb"), "AOFlagger")
    directory = directory if directory is not None else wheel_strategy_directory()
    parameters: dict[str, Any] = {
        "strategy": strategy_parameter(f"{where}.strategy", fields.get("strategy"), directory)
    }
    if "memory_max_gb" in fields:
        memory = _number(f"{where}.memory_max_gb", fields["memory_max_gb"])
        if memory <= 0:
            raise ConfigError(f"{where}.memory_max_gb: must be above 0 (GB), got {memory:g}")
        parameters["memorymax"] = fields["memory_max_gb"]
    return parameters


def applycal_parameters(
    where: str, fields: dict[str, Any], sdm_path: str | None = None
) -> dict[str, Any]:
    """`table: {kind: file, path: X.h5}` → `parmdb=X.h5`; `table: {kind: sdm, field_id: F,
    purpose: P}` → the SDM's `calibration/<P>/<F>/gaintable.h5parm` (the workflow then reads
    the H5Parm and sets the corrections, as for the one-key format)."""
    _only_fields(where, fields, ("table",), "ApplyCal")
    table_where = f"{where}.table"
    table = _mapping(table_where, fields.get("table"), "{kind: file, path: solutions.h5}")
    kind = table.get("kind")
    if kind == "sdm":
        return {"parmdb": sdm_gaintable(table_where, table, sdm_path)}
    if kind != "file":
        raise ConfigError(
            f"{table_where}.kind: {kind!r} is not one of file, sdm; write "
            "`table: {kind: file, path: solutions.h5}`"
        )
    _only_fields(table_where, table, ("kind", "path"), "ApplyCal")
    path = table.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{table_where}.path: required, the H5Parm file")
    return {"parmdb": path}


SDM_GAINTABLE = "gaintable.h5parm"


def sdm_gaintable(where: str, table: dict[str, Any], sdm_path: str | None) -> str:
    """The H5Parm an SDM holds for one purpose and field, as the reference pipeline's SDM
    mode lays it out: `<sdm>/calibration/<purpose>/<field_id>/gaintable.h5parm` (absolute:
    relative step files otherwise resolve against extra_inputs_dir)."""
    _only_fields(where, table, ("kind", "field_id", "purpose"), "ApplyCal")
    if not sdm_path:
        raise ConfigError(
            f"{where}: kind sdm reads the calibration table from an SDM: give its directory "
            "as `sdm_path` (`--config sdm_path=/path/to/sdm`, or `dp3batch run --sdm-path`)"
        )
    parts = []
    for key in ("purpose", "field_id"):
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
            raise ConfigError(f"{where}.{key}: required, a name or number (the SDM's {key})")
        text = str(value)
        if "/" in text or text in (".", ".."):
            raise ConfigError(f"{where}.{key}: {text!r} is not a directory name of the SDM")
        parts.append(text)
    purpose, field_id = parts
    path = Path(sdm_path).expanduser().absolute() / "calibration" / purpose / field_id
    path = path / SDM_GAINTABLE
    if not path.is_file():
        raise ConfigError(
            f"{where}: the SDM {Path(sdm_path).expanduser().absolute()} has no calibration "
            f"table for purpose {purpose!r}, field {field_id!r}: {path} does not exist"
        )
    return str(path)


TRANSLATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "preflagger": preflagger_parameters,
    "aoflagger": aoflagger_parameters,
    "applycal": applycal_parameters,
}
REFERENCE_STEP_TYPES = (*TRANSLATIONS, *PASS_THROUGH_TYPES)


def translate_entry(
    index: int, entry: dict[str, Any], sdm_path: str | None = None
) -> dict[str, dict[str, Any]]:
    """One `step: <type>` item as the one-key entry `{type: DP3 parameters}` (`sdm_path`:
    the SDM an ApplyCal `table: {kind: sdm}` reads from)."""
    step_type = entry[STEP_KEY]
    where = _where(index, step_type)
    if not isinstance(step_type, str) or step_type.lower() not in REFERENCE_STEP_TYPES:
        raise ConfigError(
            f"{where}: unknown step type {step_type!r}; known types: "
            + ", ".join(REFERENCE_STEP_TYPES)
        )
    step_type = step_type.lower()
    fields = {name: value for name, value in entry.items() if name != STEP_KEY}
    if step_type == "applycal":
        return {step_type: applycal_parameters(where, fields, sdm_path)}
    translation = TRANSLATIONS.get(step_type)
    return {step_type: translation(where, fields) if translation else fields}
