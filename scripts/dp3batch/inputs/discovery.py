"""Input discovery: expand `inputs`, check each is a MeasurementSet, pair it with its output."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, replace
from pathlib import Path

from dp3batch.books.layout import RECORD_NAME, check_output_names
from dp3batch.config.errors import ConfigError
from dp3batch.dp3.parset import check_path, environment_variable_hint, input_path_problem
from dp3batch.inputs.tables import open_subtable, read_table, table_kind
from dp3batch.inputs.windows import (
    Windows,
    window_name,
)


@dataclass(frozen=True)
class WorkItem:
    """One work item: an input MS (or one spectral window of it, `band`) and where its
    output goes; all paths absolute. (The MS itself is read in `tables`.)"""

    name: str
    input: Path
    output: Path
    # The `msin.band` this item's DP3 run reads; None: the steps' own choice (or the MS has
    # a single DATA_DESCRIPTION row).
    band: int | None = None


def _has_glob(pattern: str) -> bool:
    return any(character in pattern for character in "*?[")


def output_name(path: Path | str) -> str:
    """`obs_SB001.ms` → `obs_SB001` (the output is `<output_dir>/obs_SB001.ms`)."""
    name = os.path.basename(path)
    return name[: -len(".ms")] if name.lower().endswith(".ms") else name


def data_size(path: Path) -> int:
    """Bytes of the main table's files: a cheap estimate of what DP3 must read (its run time
    grows with it), for dispatching the largest MSs first."""
    with os.scandir(path) as scan:
        return sum(entry.stat().st_size for entry in scan if entry.is_file())


def check_is_measurement_set(path: Path | str) -> None:
    """A cheap structural check (no table is opened): a directory holding a casacore table."""
    if os.path.isfile(os.path.join(path, "table.dat")):
        return  # the usual case, in one stat; the others are told apart below
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"inputs: {path} {environment_variable_hint(str(path), 'inputs') or 'does not exist'}"
        )
    if not path.is_dir():
        raise ConfigError(f"inputs: {path} is a file, not a MeasurementSet directory")
    if not (path / "table.dat").is_file():
        raise ConfigError(
            f"inputs: {path} is a directory but not a MeasurementSet (it has no table.dat)"
            + _holding_hint(path)
        )


# Tables whose data are in other tables: DP3 reads them, but the workflow's checks of an
# input (its fingerprint, its lock, its windows) see only its own directory, and a change of
# the other table would go unseen by every rerun.
_NOT_SELF_CONTAINED = {
    kind: (
        f"{what}: its data are in {where}, whose changes this workflow could not see. "
        "Make it a MeasurementSet of its own first (TaQL: `SELECT FROM … GIVING new.ms AS "
        f"PLAIN`; python-casacore: `table.copy('new.ms', deep=True)`), or give {given}"
    )
    for kind, what, where, given in (
        (
            "RefTable",
            "a reference table (rows selected from another table, as TaQL's GIVING or "
            "table.select make it)",
            "that table",
            "that table as the input",
        ),
        (
            "ConcatTable",
            "a concatenation of other tables",
            "those tables",
            "those tables as the inputs",
        ),
    )
}


def _holding_hint(directory: Path) -> str:
    """`; it holds N MeasurementSets: give DIR/*.ms ...` for a directory of MSs given as an
    input (as if the workflow would look inside); else nothing."""
    try:
        with os.scandir(directory) as entries:
            held = sorted(
                entry.name
                for entry in entries
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "table.dat"))
            )
    except OSError:
        return ""
    if not held:
        return ""
    suffixes = {os.path.splitext(name)[1] for name in held}
    pattern = f"*{suffixes.pop()}" if len(suffixes) == 1 and "" not in suffixes else "*"
    return (
        f"; it holds {len(held)} MeasurementSet(s) ({held[0]}{', …' if len(held) > 1 else ''}): "
        f"to process them, give the pattern {os.path.join(directory, pattern)!r}"
    )


def check_readable(path: Path, data_column: str = "DATA") -> None:
    """Open the MS with casacore: the definitive check, for the MSs about to be processed.

    `data_column` is the column DP3 is told to read (`msin.datacolumn`). The caller checks
    first that no other process holds the MS locked (casacore would wait)."""
    try:
        with read_table(str(path)) as table:
            table.nrows()
            # DP3 (6.6) stops with "Table column DATA is unknown" on an MS without DATA even
            # when it is told to read another column (measured): both must be there.
            required = {data_column, "DATA", "FLAG", "TIME", "ANTENNA1", "ANTENNA2"}
            missing = required - set(table.colnames())
        with open_subtable(path, "SPECTRAL_WINDOW") as spw:
            spw.getcol("NUM_CHAN")
    except Exception as error:  # casacore raises RuntimeError and friends: all mean unreadable
        raise ConfigError(
            f"inputs: {path} cannot be read as a MeasurementSet: {str(error).strip()}"
        ) from error
    if (kind := table_kind(path)) in _NOT_SELF_CONTAINED:
        raise ConfigError(f"inputs: {path} is {_NOT_SELF_CONTAINED[kind]}")
    if missing == {"DATA"} and data_column != "DATA":
        raise ConfigError(
            f"inputs: {path} has {data_column} but no DATA column, and DP3 refuses an MS "
            'without DATA even when it reads another column ("Table column DATA is '
            'unknown"); add a DATA column (e.g. a copy of it) to the MS'
        )
    if missing:
        raise ConfigError(
            f"inputs: {path} lacks the column(s) {', '.join(sorted(missing))}; "
            "it is not a usable MeasurementSet (the data column read is `msin.datacolumn`)"
        )


def expand_inputs(
    patterns: list[str], base_dir: Path, output_dir: Path | None = None
) -> list[Path]:
    """Expand paths and glob patterns (relative to base_dir; `**` matches any depth) into
    absolute paths, in order. A pattern's matches that are this workflow's outputs (inside
    `output_dir`, with a completion record) are not inputs: they are left out."""
    output = None if output_dir is None else str(output_dir)
    return [Path(path) for path in _expand_inputs(patterns, str(base_dir), output)]


def _expand_inputs(patterns: list[str], base_dir: str, output_dir: str | None) -> list[str]:
    # Text, not Path: 10,000 inputs would spend a third of a second in pathlib alone.
    found: list[str] = []
    for pattern in patterns:
        absolute_pattern = os.path.join(base_dir, os.path.expanduser(pattern))
        if _has_glob(pattern) and not os.path.exists(absolute_pattern):
            full_pattern = os.path.join(glob.escape(base_dir), os.path.expanduser(pattern))
            matches = [
                match
                for match in sorted(glob.glob(full_pattern, recursive=True))
                if not _is_output(match, output_dir)
            ]
            if not matches:
                hint = environment_variable_hint(pattern, "inputs")
                raise ConfigError(
                    f"inputs: the pattern {pattern!r} {hint}"
                    if hint
                    else f"inputs: the pattern {pattern!r} matches nothing"
                )
            found.extend(matches)
        else:
            found.append(absolute_pattern)
    return list(dict.fromkeys(os.path.abspath(path) for path in found))


def _is_output(path: str, output_dir: str | None) -> bool:
    return (
        output_dir is not None
        and _is_within(path, output_dir)
        and os.path.isfile(os.path.join(path, RECORD_NAME))
    )


def _is_within(path: Path | str, directory: Path | str) -> bool:
    """Whether `path` is `directory` or below it, by their names as given (both absolute
    and normalised). Strings, not `Path.relative_to`: asked 40,000 times for 10,000 MSs."""
    inside, outside = str(path), str(directory)
    return inside == outside or inside.startswith(outside.rstrip(os.sep) + os.sep)


def _home_directories() -> set[Path]:
    import pwd

    # People's homes (root's and uid >= 1000), not the service directories of system users.
    homes = {Path.home()}
    homes.update(
        Path(entry.pw_dir)
        for entry in pwd.getpwall()
        if (entry.pw_uid == 0 or entry.pw_uid >= 1000) and entry.pw_dir not in ("", "/")
    )
    return {Path(os.path.realpath(home)) for home in homes}


def resolve_all(paths: list[Path]) -> dict[Path, Path]:
    """Each path resolved through links, as `Path.resolve` would, resolving each parent
    directory once: thousands of inputs usually share a few directories, and a full resolve
    costs a stat per path component."""
    resolved = _resolve_all([str(path) for path in paths])
    return {path: Path(resolved[str(path)]) for path in paths}


def _resolve_all(paths: list[str]) -> dict[str, str]:
    parents: dict[str, str] = {}
    resolved: dict[str, str] = {}
    for path in paths:
        directory, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            resolved[path] = os.path.realpath(path)
            continue
        parent = parents.get(directory)
        if parent is None:
            parent = parents[directory] = os.path.realpath(directory)
        resolved[path] = os.path.join(parent, name)
    return resolved


def check_output_dir(
    output_dir: Path, inputs: list[Path], resolved: dict[Path, Path] | None = None
) -> None:
    """DP3 must never write into an input, and the workflow never writes loose into `/` or a
    home directory: refuse an output_dir that is one of those, or is, is inside, or holds an
    input (by the path as given or as resolved through links). `resolved`: the inputs
    resolved already (`resolve_all`)."""
    resolved = resolved if resolved is not None else resolve_all(inputs)
    _check_output_dir(
        str(output_dir),
        [str(path) for path in inputs],
        {str(path): str(target) for path, target in resolved.items()},
    )


def _check_output_dir(output_dir: str, inputs: list[str], resolved: dict[str, str]) -> None:
    resolved_output = os.path.realpath(output_dir)
    if resolved_output == "/" or Path(resolved_output) in _home_directories():
        what = "the root directory" if resolved_output == "/" else "a home directory"
        raise ConfigError(
            f"output_dir: {output_dir} is {what}; choose a directory of its own for the "
            "outputs (e.g. results)"
        )
    for path in inputs:
        for given, directory in ((resolved[path], resolved_output), (path, output_dir)):
            if _is_within(directory, given):
                raise ConfigError(
                    f"output_dir: {output_dir} is inside the input {path}; choose a directory "
                    "outside every input"
                )
            if os.path.dirname(given) == directory:
                raise ConfigError(
                    f"output_dir: {output_dir} is the directory that holds the input {path}; "
                    "outputs have the same names as inputs, so choose another directory"
                )
        if _is_within(path, output_dir):
            raise ConfigError(
                f"inputs: {path} is inside output_dir {output_dir}; move it out, or choose "
                "another output_dir"
            )


def check_name(path: Path | str) -> None:
    """DP3 must read the input as this very path: no glob character in its name (DP3 reads
    `msin` as a pattern), nothing that DP3 or casacore reads differently (see parset)."""
    check_path("inputs", path, input_path_problem(path))


def discover_measurement_sets(
    patterns: list[str], output_dir: str | Path, base_dir: str | Path = "."
) -> list[WorkItem]:
    """All inputs as MeasurementSet records, after the checks that need no table opened
    (`per_window_items` then makes an item of each window of an MS of several)."""
    base = os.path.abspath(base_dir)
    output = os.path.normpath(os.path.join(base, os.path.expanduser(output_dir)))
    # DP3 writes into it (each output's temporary form): it must read it as this path.
    check_path("output_dir", output)
    # Paths as text until the items are made (see _expand_inputs).
    inputs = _expand_inputs(patterns, base, output)
    by_name: dict[str, str] = {}
    by_target: dict[str, str] = {}
    for path in inputs:
        check_is_measurement_set(path)
        check_name(path)
    resolved = _resolve_all(inputs)
    for path in inputs:
        target = resolved[path]
        if target in by_target:
            raise ConfigError(
                f"inputs: {by_target[target]} and {path} are the same MS (through a link); "
                "give it once"
            )
        by_target[target] = path
        name = output_name(path)
        if name in by_name:
            raise ConfigError(
                f"inputs: {by_name[name]} and {path} would both be written to {name}.ms; "
                "rename one or process them in separate output directories"
            )
        by_name[name] = path
    _check_output_dir(output, inputs, resolved)
    check_output_names(output, [f"{name}.ms" for name in by_name])
    for name in by_name:
        _check_output_not_link(os.path.join(output, f"{name}.ms"))
    return [
        WorkItem(name, Path(path), Path(output, f"{name}.ms")) for name, path in by_name.items()
    ]


def check_output_not_link(ms: WorkItem) -> None:
    _check_output_not_link(ms.output)


def _check_output_not_link(output: Path | str) -> None:
    if os.path.islink(output):
        raise ConfigError(
            f"output_dir: {output} is a link, not an output of this workflow; move it "
            "away or choose another output_dir"
        )


def window_items(ms: WorkItem, windows: Windows) -> list[WorkItem]:
    """The work items of one MS: itself when it has one band, else one per band, named
    `NAME_spw<band>` with the output `NAME_spw<band>.ms` beside where `NAME.ms` would be."""
    if not windows.several:
        return [replace(ms, band=windows.band_of_single())]
    return [
        WorkItem(
            window_name(ms.name, band),
            ms.input,
            ms.output.with_name(f"{window_name(ms.name, band)}.ms"),
            band,
        )
        for band in windows.bands
    ]
