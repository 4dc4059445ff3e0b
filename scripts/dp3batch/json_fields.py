"""Strict reading of the JSON that the typed contracts travel as (the batch specification,
a task's result, a completion record): every field is checked for its type, and a field
that does not fit is one message naming it and where it came from.

Unknown keys are ignored, not refused: a record written by another version of the workflow
may carry more than this one knows. Nested JSON that another module owns (an MS's shape,
DP3's flag counts, the windows entry) is checked to be an object and kept as read; it is
shared, so it is typed read-only (`Mapping`) and never changed in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dp3batch.dp3_parameters import DP3Parameters

# DP3's parameters as DP3 was given them, (key, value) in order (a completion record's).
Parameters = tuple[tuple[str, str], ...]


class ContractError(ValueError):
    """JSON that does not fit its contract; the message names the field and its source."""


def parameters_to_json(parameters: Parameters) -> list[list[str]]:
    """DP3's parameters as JSON: `[[key, value], ...]` (the one place that says so)."""
    return [[key, value] for key, value in parameters]


def parameters_from_json(value: object, what: str) -> Parameters:
    """The inverse of `parameters_to_json`; `what` names the field in an error."""
    if not isinstance(value, list):
        raise ContractError(f"{what} must be a list of [key, value] pairs, not {_kind(value)}")
    pairs = []
    for pair in value:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise ContractError(f"{what} must hold [key, value] pairs of strings, not {pair!r}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Fields:
    """The fields of one JSON object, read by type. `what` names the object in errors (e.g.
    "completion record /data/out/a.ms/dp3_completion.json")."""

    def __init__(self, data: object, what: str):
        if not isinstance(data, dict):
            raise ContractError(f"{what}: expected a JSON object, not {_kind(data)}")
        self.data: dict[str, Any] = data
        self.what = what

    def _value(self, key: str, optional: bool) -> Any:
        if key not in self.data and not optional:
            raise ContractError(f"{self.what}: '{key}' is missing")
        return self.data.get(key)

    def _wrong(self, key: str, expected: str) -> ContractError:
        value = self.data.get(key)
        return ContractError(
            f"{self.what}: '{key}' must be {expected}, not {_kind(value)} ({value!r:.80})"
        )

    def text(self, key: str) -> str:
        value = self._value(key, optional=False)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._value(key, optional=True)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, "a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self._value(key, optional=False)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(key, "an integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._value(key, optional=True)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self._wrong(key, "an integer or null")
        return value

    def number(self, key: str) -> float:
        value = self._value(key, optional=False)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._wrong(key, "a number")
        return value

    def optional_number(self, key: str) -> float | None:
        value = self._value(key, optional=True)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise self._wrong(key, "a number or null")
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self._value(key, optional=False)
        if not isinstance(value, dict):
            raise self._wrong(key, "an object")
        return value

    def optional_mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._value(key, optional=True)
        if value is not None and not isinstance(value, dict):
            raise self._wrong(key, "an object or null")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._value(key, optional=False)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._wrong(key, "a list of strings")
        return tuple(value)

    def optional_strings(self, key: str) -> tuple[str, ...] | None:
        if self._value(key, optional=True) is None:
            return None
        return self.strings(key)

    def parameters(self, key: str) -> Parameters:
        return parameters_from_json(self._value(key, optional=False), f"{self.what}: '{key}'")

    def dp3_parameters(self, key: str) -> DP3Parameters:
        return _dp3_parameters(self.mapping(key), f"{self.what}: '{key}'")

    def optional_dp3_parameters(self, key: str) -> DP3Parameters | None:
        value = self.optional_mapping(key)
        return None if value is None else _dp3_parameters(value, f"{self.what}: '{key}'")

    def objects(self, key: str) -> list[Fields]:
        """A list of JSON objects, each as Fields named `what: key[index]`."""
        value = self._value(key, optional=False)
        if not isinstance(value, list):
            raise self._wrong(key, "a list of objects")
        return [Fields(item, f"{self.what}: {key}[{index}]") for index, item in enumerate(value)]


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without its null entries: JSON that names only what is known."""
    return {key: value for key, value in data.items() if value is not None}


def _dp3_parameters(value: Mapping[str, Any], what: str) -> DP3Parameters:
    try:
        return DP3Parameters.from_json(value)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ContractError(f"{what} is not DP3 parameters ({error!r})") from None
