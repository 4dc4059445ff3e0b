"""Keys given twice in a config file or on `--config`.

YAML and JSON loaders, Snakemake's among them, keep the last value of a repeated key and
say nothing: an `output_dir:` written twice (an edited copy of a config, a line pasted
below) runs into the second directory, and an averaging step with `timestep` twice averages
by the second. Either may be the one the user meant, so a repeated key is refused, with the
lines of both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dp3batch.config.errors import ConfigError

# yte's templates (a file with `__use_yte__: true`) may repeat keys such as `?if ...:`.
_YTE_MARKER = "__use_yte__"
# A YAML merge key (`<<: *defaults`) may be given beside keys that override what it brings.
_MERGE_TAG = "tag:yaml.org,2002:merge"


def refuse_repeated_keys(configfiles: Iterable[Path], overrides: Sequence[str]) -> None:
    """Raise ConfigError for the first key given twice in one of `configfiles` or in the
    `--config` items `overrides`."""
    for path in configfiles:
        if problem := repeated_key_problem(path):
            raise ConfigError(problem)
    if problem := repeated_override_problem(overrides):
        raise ConfigError(problem)


def repeated_key_problem(path: Path) -> str | None:
    """A message naming the first key `path` gives twice in one mapping, or None (also for a
    file that cannot be read or parsed: Snakemake has read it, and says so itself)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    import yaml

    try:
        found = _repeated_in_yaml(text)
    except yaml.YAMLError:  # a JSON file PyYAML cannot read
        return _repeated_in_json(text, path)
    if found is None:
        return None
    location, key, first_line, second_line = found
    return (
        f"{path}, line {second_line}: {_named(location, key)} is given twice (also on line "
        f"{first_line}); only the last would be used, without a word: delete the one you "
        "do not mean"
    )


def repeated_override_problem(items: Sequence[str]) -> str | None:
    """A message naming the first key `--config KEY=VALUE ...` gives twice, or None."""
    seen: dict[str, str] = {}
    for item in items:
        key, equals, _ = item.partition("=")
        if not equals:
            continue
        if key in seen:
            return (
                f"--config gives {key} twice ({seen[key]} and {item}); only the last would be "
                "used: give it once"
            )
        seen[key] = item
    return None


def _named(location: list[Any], key: str) -> str:
    """['steps', 1, 'Averager'] and 'timestep' as `steps[1].Averager.timestep`."""
    text = ""
    for part in [*location, key]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _repeated_in_yaml(text: str) -> tuple[list[Any], str, int, int] | None:
    """(where, key, first line, second line) of the first repeated key, or None; raises
    yaml.YAMLError for text that is not YAML."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = yaml.compose(text, Loader=loader)
    if root is None or _uses_yte(root):
        return None
    pending: list[tuple[list[Any], yaml.Node]] = [([], root)]
    while pending:
        location, node = pending.pop(0)
        if isinstance(node, yaml.SequenceNode):
            pending += [([*location, index], item) for index, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                identity = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if identity in lines:
                    return location, key_node.value, lines[identity], line
                lines[identity] = line
                pending.append(([*location, key_node.value], value_node))
    return None


def _uses_yte(root: Any) -> bool:
    import yaml

    return isinstance(root, yaml.MappingNode) and any(
        isinstance(key, yaml.ScalarNode) and key.value == _YTE_MARKER for key, _ in root.value
    )


class _Repeated(Exception):
    def __init__(self, key: str):
        self.key = key


def _refuse_repeats(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Repeated(key)
        result[key] = value
    return result


def _repeated_in_json(text: str, path: Path) -> str | None:
    try:
        json.loads(text, object_pairs_hook=_refuse_repeats)
    except _Repeated as repeated:
        return (
            f"{path}: the key {repeated.key} is given twice in one object; only the last would "
            "be used, without a word: delete the one you do not mean"
        )
    except ValueError:
        return None
    return None
