"""The JSON of every typed contract (the batch specification, a task's result, a completion
record, a summary row), derived from the dataclass's own fields: `to_json` writes them in
their order, `from_json` reads each by its annotation. Every field is checked for its type,
and a field that does not fit is one message naming it and where it came from.

A contract says what its JSON leaves out: `JSON_OMITS_NONE = True` (no null field is
written), a field's `metadata={"omit_none": True}`, and `JSON_FORMAT` (a `format` key
written first and required on reading).

Unknown keys are ignored, not refused: a record written by another version of the workflow
may carry more than this one knows. Nested JSON that another module owns (an MS's shape,
DP3's flag counts, the windows entry) is checked to be an object and kept as read; it is
shared, so it is typed read-only (`Mapping`) and never changed in place.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

from dp3batch.dp3.parameters import DP3Parameters

# DP3's parameters as DP3 was given them, (key, value) in order (a completion record's).
Parameters = tuple[tuple[str, str], ...]


class ContractError(ValueError):
    """JSON that does not fit its contract; the message names the field and its source."""


def parameters_from_json(value: object, what: str) -> Parameters:
    """DP3's parameters from JSON `[[key, value], ...]`; `what` names the field in an error."""
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
        # By their types first, in C: a record lists its MS's files, 60 and more of them.
        if not isinstance(value, list) or not (
            set(map(type, value)) <= {str} or all(isinstance(item, str) for item in value)
        ):
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


def _dp3_parameters(value: Mapping[str, Any], what: str) -> DP3Parameters:
    try:
        return DP3Parameters.from_json(value)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ContractError(f"{what} is not DP3 parameters ({error!r})") from None


Contract = TypeVar("Contract")


def to_json(contract: Any) -> dict[str, Any]:
    """A contract's JSON: `format` first if it has one, then its fields in their order."""
    return {key: _encoded(value) for key, value in _json_fields(contract)}


def _json_fields(contract: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of each field the contract's JSON holds, in its order, not yet encoded."""
    json_format, names = _json_layout(type(contract))
    if json_format is not None:
        yield "format", json_format
    for name, omit_none in names:
        value = getattr(contract, name)
        if value is None and omit_none:
            continue
        yield name, value


@functools.cache
def _json_layout(cls: type) -> tuple[Any, tuple[tuple[str, bool], ...]]:
    """A contract's `format` (or None) and, per field in order, its name and whether a None
    is left out: read once per class (`dataclasses.fields` is slow for 10,000 rows)."""
    omits_none = getattr(cls, "JSON_OMITS_NONE", False)
    return getattr(cls, "JSON_FORMAT", None), tuple(
        (item.name, bool(omits_none or item.metadata.get("omit_none")))
        for item in dataclasses.fields(cls)
    )


def write_contract(handle: TextIO, contract: Any) -> None:
    """The contract's JSON (equal to `to_json`'s) written a field at a time, each list of
    contracts an entry at a time (see write_json_object)."""
    write_json_object(
        handle,
        (
            (key, (_encoded(item) for item in value) if _contracts(value) else _encoded(value))
            for key, value in _json_fields(contract)
        ),
    )


def _contracts(value: Any) -> bool:
    return isinstance(value, tuple | list) and bool(value) and dataclasses.is_dataclass(value[0])


def write_json_object(handle: TextIO, fields: Iterable[tuple[str, Any]]) -> None:
    """A JSON object written a field at a time; a field whose value is an iterator is a list
    written an entry per line as the iterator gives them. A batch of 10,000 MSs then never
    holds its whole JSON: its task list and specification, dumped whole, raised Snakemake's
    peak memory by about 50 MB."""
    handle.write("{")
    separator = "\n"
    for key, value in fields:
        handle.write(f"{separator}{json.dumps(key)}: ")
        separator = ",\n"
        if isinstance(value, Iterator):
            write_json_list(handle, value)
        else:
            handle.write(json.dumps(value))
    handle.write("\n}\n")


def write_json_list(handle: TextIO, entries: Iterable[Any]) -> None:
    """A JSON list, one entry per line, written as `entries` come: readable with any pager,
    and each entry by json's C encoder (an indented dump takes its pure-Python one, ten
    times slower over 10,000 MSs)."""
    separator = "[\n"
    for entry in entries:
        handle.write(separator + json.dumps(entry))
        separator = ",\n"
    handle.write("[]" if separator == "[\n" else "\n]")


# What JSON holds as it is: asked first, by exact type (an Enum of str is not one of them).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _encoded(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_encoded(item) for item in value]
    if isinstance(value, Mapping):
        return dict(value)  # nested JSON another module owns, as read
    return value


def from_json(cls: type[Contract], data: object, what: str) -> Contract:
    """A contract read from its JSON; ContractError names the field that does not fit.
    Unknown keys are ignored; a field typed `X | None` may be missing."""
    fields = Fields(data, what)
    expected = getattr(cls, "JSON_FORMAT", None)
    if expected is not None and fields.data.get("format") != expected:
        raise ContractError(f"{what}: format {fields.data.get('format')!r} is not {expected}")
    return cls(**{name: read(fields, name) for name, read in _readers(cls)})


Reader = Callable[[Fields, str], Any]


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, Reader], ...]:
    """Per field in order, its name and how it is read: its annotation is read once per
    class, not once per field of every record (10,000 records after a batch)."""
    hints = typing.get_type_hints(cls)
    return tuple((item.name, _reader(hints[item.name])) for item in dataclasses.fields(cls))


def _reader(annotation: Any) -> Reader:
    """How a field of this annotation is read from its object's Fields."""
    optional, kind = _unwrap_optional(annotation)
    origin = typing.get_origin(kind)
    if kind is str:
        return Fields.optional_text if optional else Fields.text
    if kind is int:
        return Fields.optional_integer if optional else Fields.integer
    if kind is float:
        return Fields.optional_number if optional else Fields.number
    if kind is DP3Parameters:
        return Fields.optional_dp3_parameters if optional else Fields.dp3_parameters
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return lambda fields, key: _member(fields, key, kind, optional)
    if kind == Parameters:
        return Fields.parameters
    if origin is tuple:
        (element, _) = typing.get_args(kind)
        if element is str:
            return Fields.optional_strings if optional else Fields.strings
        if dataclasses.is_dataclass(element):

            def contracts(fields: Fields, key: str) -> Any:
                if optional and fields.data.get(key) is None:
                    return None
                return tuple(
                    from_json(element, item.data, item.what) for item in fields.objects(key)
                )

            return contracts
    if origin is Mapping or kind is Mapping:
        values = _checked_values(kind)
        read_value = None if values is None else _reader(values)

        def mapping(fields: Fields, key: str) -> Any:
            read = fields.optional_mapping(key) if optional else fields.mapping(key)
            if read is None or read_value is None:
                return read  # nested JSON another module owns, kept as read
            entries = Fields(read, f"{fields.what}: {key}")
            return {name: read_value(entries, name) for name in entries.data}

        return mapping

    def unreadable(fields: Fields, key: str) -> Any:
        raise TypeError(f"{fields.what}: no JSON reading for {key}: {annotation!r}")

    return unreadable


def _checked_values(kind: Any) -> Any:
    """The type of a mapping's values when the contract checks each (`Mapping[str, int |
    None]`: the embedded cluster's sizes), else None: any other mapping is JSON that another
    module owns (shapes, flag counts, step times), checked to be an object and kept as read."""
    arguments = typing.get_args(kind)
    return arguments[1] if len(arguments) == 2 and arguments[1] == int | None else None


def _unwrap_optional(annotation: Any) -> tuple[bool, Any]:
    """(whether None is allowed, the annotation without None)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        others = [argument for argument in arguments if argument is not type(None)]
        if len(others) == 1 and len(arguments) == 2:
            return True, others[0]
    return False, annotation


def _member(fields: Fields, key: str, kind: type[enum.Enum], optional: bool) -> Any:
    value = fields.optional_text(key) if optional else fields.text(key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(repr(str(member.value)) for member in kind)
        raise ContractError(f"{fields.what}: '{key}' {value!r} is not one of {known}") from None
