"""DP3's text forms of a run, written by one writer from checked values: `key=value`
arguments, parset files, and the checks that a path means to DP3 what it means to the
filesystem.

DP3 reads a value the same way whether it comes as an argument or as a parset line, and
not as the filesystem names it (measured with DP3 6.6, tests/e2e/test_hostile_names.py):
- quotes are parsed and removed: `in'q'/obs.ms` is read as `inq/obs.ms`, a lone `'` is
  "Unbalanced quoted string"; a value quoted with the other quote keeps them;
- whitespace at the end of a value is dropped (`obs.ms ` is read as `obs.ms`);
- in a parset file a line ends at `#`, a value holding `=` is misread, and a line without
  `=` continues the line before it: a line break in a value writes parameters of its own;
- the last component of `msin` is a glob pattern (`in[X].ms` reads `inX.ms`);
- casacore, which opens every table (DP3's and this workflow's), replaces `$NAME` and
  `${NAME}` in a table's path by that environment variable.
So a path DP3 reads is written as a `literal` (quoted when it must be), and a path no
quoting can carry (a line break, both quotes, a `$`) is refused before anything runs.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from dp3batch.config.errors import ConfigError

# DP3 expands these in the last component of `msin` (its input MS names).
GLOB_CHARACTERS = "*?[]"
# What the parset reader would take for a comment or a second `=`: quoted in a parset.
_PARSET_SPECIAL = ("#", "=")
# DP3 keys: dotted identifiers (the parameter names the config allows, see config).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class UnsafeParameter(ConfigError):
    """A key or value that DP3 would read as something else (a line break that would add
    parameters of its own, a path it would change); the message names it."""


def shown(text: str) -> str:
    """`text` for a message: control characters as escapes (`\\n`), so that a name with a
    line break is shown on one line, as it is; bytes that are not UTF-8 as `\\xNN`."""
    if not _is_utf8(text):  # its other bytes as escapes (`\xe9`)
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    if not _has_control(text):
        return text
    return "".join(
        repr(character)[1:-1] if _is_control(character) else character for character in text
    )


def _is_utf8(text: str) -> bool:
    """Whether a name Python read from the filesystem is UTF-8 text: its bytes of another
    encoding (Latin-1's `é`, one byte) are kept as surrogates, which no UTF-8 text holds."""
    if text.isascii():  # most paths: no encoding
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_control(text: str) -> bool:
    # Printable ASCII (most paths) has none: checked without a lookup per character, which
    # a rerun over 10,000 MSs would pay for every path.
    return not (text.isascii() and text.isprintable()) and any(map(_is_control, text))


def _is_control(character: str) -> bool:
    # Cc: C0 and C1 controls (line feed, carriage return, tab, ...); Zl, Zp: Unicode's line
    # and paragraph separators, which other readers take for line breaks.
    return unicodedata.category(character) in ("Cc", "Zl", "Zp")


def path_problem(path: str | Path) -> str | None:
    """Why DP3 (or casacore) would read `path` as another path or not open it at all, or
    None when a `literal` carries it unchanged."""
    text = str(path)
    if not _is_utf8(text):
        return (
            "is not UTF-8 text (it has a byte of another encoding, shown as \\xNN), which "
            "casacore (DP3's and this workflow's table reader) cannot open"
        )
    if _has_control(text):
        return (
            "has a line break or another control character in it, which DP3 would read as "
            "the end of the value (and the rest as parameters of its own)"
        )
    if "'" in text and '"' in text:
        return "has both ' and \" in it, which DP3 cannot read as one value (it removes quotes)"
    if "$" in text:
        return (
            "has '$' in it, which casacore (DP3's and this workflow's table reader) replaces "
            "by an environment variable ($NAME, ${NAME})"
        )
    return None


def input_path_problem(path: str | Path) -> str | None:
    """`path_problem`, and for an input MS (DP3's `msin`) a glob character in its name."""
    problem = path_problem(path)
    if problem is None and any(character in os.path.basename(path) for character in "*?["):
        problem = (
            f"has a name with one of {GLOB_CHARACTERS!r}, which DP3 reads as a pattern "
            "(it could read another MS)"
        )
    return problem


# `$NAME` or `${NAME}`: what a shell (and casacore) would replace by an environment variable.
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# The keys a `--config KEY=VALUE` gives as easily as a config file, as the shell expands them.
_COMMAND_LINE_KEYS = ("inputs", "output_dir", "sdm_path", "extra_inputs_dir")


def environment_variable_hint(text: str, key: str) -> str | None:
    """For a path of the config key `key` that names a set environment variable
    (`$SCRATCH/out` in a config file, meant as a shell reads it): `has $SCRATCH in it, …`
    with what to do; else None."""
    for found in _VARIABLE.finditer(text):
        name = found.group("braced") or found.group("bare")
        if name not in os.environ:
            continue
        variable = found.group(0)
        hint = (
            f"has {variable} in it, taken as written: neither YAML nor Snakemake replaces "
            f"environment variables in a config file. Write the path out ({variable} is "
            f"{shown(os.environ[name])} here)"
        )
        if key not in _COMMAND_LINE_KEYS:
            return hint
        value = f"[{variable}/…]" if key == "inputs" else f"{variable}/…"
        command_line = f'--config "{key}={value}"'
        return (
            f"{hint}, or give it on the command line, where the shell replaces it: {command_line}"
        )
    return None


def check_path(where: str, path: str | Path, problem: str | None = None) -> None:
    """Raise ConfigError `where: PATH <problem>; rename it` if DP3 would misread `path`."""
    problem = problem if problem is not None else path_problem(path)
    # A `$NAME` path that exists is a name of its own (refused below); one that does not
    # was meant as the shell would read it.
    if (
        problem is not None
        and not os.path.lexists(path)
        and (hint := environment_variable_hint(str(path), where))
    ):
        raise ConfigError(f"{where}: {shown(str(path))} {hint}")
    if problem is not None:
        raise ConfigError(
            f"{where}: {shown(str(path))} {problem}; rename it (or link it under a plain "
            "name and give that)"
        )


def literal(path: str | Path, key: str = "a path") -> str:
    """The value DP3 reads as exactly `path`: quoted with the quote it does not hold when it
    has a quote, a parset special (`#`, `=`) or trailing whitespace; as is otherwise."""
    text = str(path)
    problem = path_problem(text)
    if problem is not None:
        raise UnsafeParameter(f"DP3 parameter {key}: {shown(text)} {problem}")
    if "'" in text:
        return f'"{text}"'
    if '"' in text:
        return f"'{text}'"
    if text != text.rstrip() or any(special in text for special in _PARSET_SPECIAL):
        return f'"{text}"'
    return text


# What DP3 takes for the syntax of a list value (`[a,b]`): a path holding one cannot be an item.
_LIST_SYNTAX = ",[]"


def literal_list(paths: Iterable[str | Path], key: str = "a list of paths") -> str:
    """A list value DP3 reads as exactly these paths (`msin=[a.ms,b.ms]`), each a `literal`;
    a path holding `,`, `[` or `]` is refused (DP3 would split or nest it)."""
    items = []
    for path in paths:
        text = str(path)
        if any(character in text for character in _LIST_SYNTAX):
            raise UnsafeParameter(
                f"DP3 parameter {key}: {shown(text)} has one of {_LIST_SYNTAX!r} in it, which "
                "DP3 reads as the syntax of a list"
            )
        items.append(literal(text, key))
    return "[" + ",".join(items) + "]"


def _checked(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every pair of a run, refused if DP3 would read it as something else: a key that is not
    a DP3 key, a value with a control character (a line break writes parameters of its own).
    The config and the path checks refuse such values first, naming them for the user; this
    is the writer's own guarantee."""
    checked = []
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise UnsafeParameter(f"DP3 parameter {shown(key)!r} is not a DP3 key")
        if _has_control(value):
            raise UnsafeParameter(
                f"DP3 parameter {key}: {shown(value)} has a line break or another control "
                "character in it"
            )
        checked.append((key, value))
    return checked


def arguments_for_dp3(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """DP3's command-line form: one `key=value` argument each (never through a shell)."""
    return [f"{key}={value}" for key, value in _checked(pairs)]


def parset_text(pairs: Iterable[tuple[str, str]], header: str = "") -> str:
    """A parset that `DP3 <file>` runs exactly as the same `arguments_for_dp3`."""
    lines = [f"# {shown(line)}" for line in header.splitlines()]
    lines += [f"{key}={_parset_value(value)}" for key, value in _checked(pairs)]
    return "\n".join(lines) + "\n"


def write_parset(path: str | Path, pairs: Iterable[tuple[str, str]], header: str = "") -> None:
    """The one way a parset file is written."""
    Path(path).write_text(parset_text(pairs, header))


def _parset_value(value: str) -> str:
    """A value as a parset line must hold it: a line ends at `#` and misreads `=` unless the
    value is quoted (a `literal` path is quoted already)."""
    if not any(special in value for special in _PARSET_SPECIAL) or _is_quoted(value):
        return value
    quote = "'" if '"' in value else '"'
    return f"{quote}{value}{quote}"


def _is_quoted(value: str) -> bool:
    return (
        len(value) >= 2
        and value[0] == value[-1]
        and value[0] in "'\""
        and (value[0] not in value[1:-1])
    )
