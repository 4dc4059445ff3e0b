"""DP3's result-defining parameters as typed data, formatted to DP3's strings only at the end.

`dp3.chain_parameters` builds a `DP3Parameters` from the validated chain. Whatever asks
about the chain (its steps of a type, the files they read, the demixer instrument models,
the AOFlagger strategies the workflow chose, the band) asks this structure, never DP3's
strings. `DP3Parameters.pairs` is the one formatting into DP3's ordered `(key, value)`
strings: the command line, the parset and the parameters fingerprint all come from it, so
they cannot disagree. `to_json`/`from_json` carry it through the batch specification to
the central job (and, pickled inside a task, to the workers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dp3batch.dp3.parset import literal

# A parameter value as the config gives it: formatted for DP3 by `format_value` only.
DP3Value = str | int | float | bool | list["DP3Value"]

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

# DP3 reads one spectral window per run, this one (see windows).
BAND_PARAMETER = "band"


def format_value(value: Any) -> str:
    """A config value as DP3 reads it: true/false, [a,b], plain numbers and strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def dp3_value(value: Any) -> DP3Value:
    """A config value as plain JSON data that formats as the value itself does.

    Anything not JSON (a date YAML read from `2024-01-01`) is kept as the text DP3 gets, so
    that the JSON round trip cannot change what DP3 is told."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [dp3_value(item) for item in value]
    return format_value(value)


@dataclass(frozen=True)
class DP3Step:
    """One DP3 step: its unique name (`averager`, `averager2`, ...), type and parameters."""

    name: str
    type: str
    # The user's parameters, in the config's order; file parameters as absolute paths.
    params: Mapping[str, DP3Value]
    # What the workflow adds after them: ApplyCal's reading of its H5Parm, AOFlagger's
    # strategy for the MS's telescope.
    added: Mapping[str, DP3Value] = field(default_factory=dict)

    def items(self) -> list[tuple[str, DP3Value]]:
        """The step's parameters in DP3's order: the user's, then the workflow's."""
        return [*self.params.items(), *self.added.items()]

    def value(self, key: str) -> str | None:
        """A parameter as DP3 reads it (the last one given, as DP3 takes it), or None."""
        found = self.added.get(key, self.params.get(key))
        return None if found is None else format_value(found)

    def pairs(self) -> list[tuple[str, str]]:
        """DP3's strings: a file parameter as a `parset.literal` (DP3 reads it as that path)."""
        files = FILE_PARAMETERS.get(self.type, ())
        return [(f"{self.name}.type", self.type)] + [
            (
                f"{self.name}.{key}",
                literal(format_value(value), f"{self.name}.{key}")
                if key in files
                else format_value(value),
            )
            for key, value in self.items()
        ]

    def file_parameters(self) -> list[tuple[str, str]]:
        """(key, absolute path) of each file this step reads."""
        names = FILE_PARAMETERS.get(self.type, ())
        return [(f"{self.name}.{key}", str(value)) for key, value in self.items() if key in names]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": dict(self.params),
            "added": dict(self.added),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DP3Step:
        return cls(data["name"], data["type"], dict(data["params"]), dict(data["added"]))


@dataclass(frozen=True)
class DP3Parameters:
    """The result-defining DP3 parameters of a chain: no paths of the MS, no thread count."""

    msin: Mapping[str, DP3Value]
    msout: Mapping[str, DP3Value]
    steps: tuple[DP3Step, ...]
    # The spectral window of a work item of its own (see windows): given to DP3 last, in
    # place of any `msin.band` of the steps.
    band: int | None = None

    def pairs(self) -> list[tuple[str, str]]:
        """DP3's (key, value) strings in order: what DP3 runs and what is fingerprinted."""
        pairs = [("checkparset", "1")]
        for prefix, params in (("msin", self.msin), ("msout", self.msout)):
            for key, value in params.items():
                if not (prefix == "msin" and key == BAND_PARAMETER and self.band is not None):
                    pairs.append((f"{prefix}.{key}", format_value(value)))
        pairs.append(("steps", format_value([step.name for step in self.steps])))
        for step in self.steps:
            pairs += step.pairs()
        if self.band is not None:
            pairs.append((f"msin.{BAND_PARAMETER}", str(self.band)))
        return pairs

    def steps_of_type(self, step_type: str) -> list[DP3Step]:
        """The chain's steps of one type, in order."""
        return [step for step in self.steps if step.type == step_type]

    def file_parameters(self) -> list[tuple[str, str]]:
        """(key, absolute path) of every parameter that names a file the chain reads."""
        return [pair for step in self.steps for pair in step.file_parameters()]

    def instrument_models(self) -> list[tuple[str, str]]:
        """(parameter key, name inside the output MS) of each demixer step's instrument model."""
        return [
            (
                f"{step.name}.instrumentmodel",
                INSTRUMENT_MODEL_NAME
                if step.name == "demixer"
                else f"{INSTRUMENT_MODEL_NAME}_{step.name}",
            )
            for step in self.steps_of_type("demixer")
        ]

    def required_output_files(self) -> list[str]:
        """What DP3 writes into the output MS besides the MS itself: without these, an output
        is not complete."""
        return [name for _, name in self.instrument_models()]

    def aoflagger_strategies(self) -> dict[str, str | None]:
        """The strategy of each AOFlagger step (None: DP3's own choice, through a wrapper)."""
        return {step.name: step.value("strategy") for step in self.steps_of_type("aoflagger")}

    def chosen_strategies(self) -> dict[str, str]:
        """The AOFlagger strategies the workflow chose (the user named none), by step."""
        return {
            step.name: format_value(step.added["strategy"])
            for step in self.steps_of_type("aoflagger")
            if "strategy" in step.added
        }

    def with_band(self, band: int | None) -> DP3Parameters:
        """These parameters reading one band (unchanged when the item has none of its own)."""
        return self if band is None else replace(self, band=band)

    def selected_band(self) -> int | None:
        """The band DP3 reads (the item's, else the steps' `msin.band`), or None."""
        if self.band is not None:
            return self.band
        value = self.msin.get(BAND_PARAMETER)
        try:
            return None if value is None else int(format_value(value).strip())
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        """As plain JSON data (the batch specification's `parameters`)."""
        return {
            "msin": dict(self.msin),
            "msout": dict(self.msout),
            "steps": [step.to_json() for step in self.steps],
            "band": self.band,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DP3Parameters:
        return cls(
            msin=dict(data["msin"]),
            msout=dict(data["msout"]),
            steps=tuple(DP3Step.from_json(step) for step in data["steps"]),
            band=data.get("band"),
        )


def parameters_fingerprint(
    parameters: list[tuple[str, str]], file_keys: set[str] | frozenset[str] = frozenset()
) -> str:
    """Fingerprint of the result-defining parameters. Files count by content (see
    `extra_inputs_fingerprint`), not by path, so moving them changes nothing."""
    text = "\n".join(
        f"{key}=<file>" if key in file_keys else f"{key}={value}" for key, value in parameters
    )
    return hashlib.sha256(text.encode()).hexdigest()
