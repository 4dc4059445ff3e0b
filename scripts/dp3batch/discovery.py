"""Input discovery: expand `inputs`, check each is a MeasurementSet, pair it with its output."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from dp3batch.config import ConfigError


@dataclass(frozen=True)
class MeasurementSet:
    """One input MS and where its output goes; all paths absolute."""

    name: str
    input: Path
    output: Path


def _has_glob(pattern: str) -> bool:
    return any(character in pattern for character in "*?[")


def output_name(path: Path) -> str:
    """`obs_SB001.ms` → `obs_SB001` (the output is `<output_dir>/obs_SB001.ms`)."""
    name = path.name
    return name[: -len(".ms")] if name.lower().endswith(".ms") else name


def check_is_measurement_set(path: Path) -> None:
    """A cheap structural check (no table is opened): a directory holding a casacore table."""
    if not path.exists():
        raise ConfigError(f"inputs: {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"inputs: {path} is a file, not a MeasurementSet directory")
    if not (path / "table.dat").is_file():
        raise ConfigError(
            f"inputs: {path} is a directory but not a MeasurementSet (it has no table.dat)"
        )


def check_readable(path: Path, data_column: str = "DATA") -> None:
    """Open the MS with casacore: the definitive check, for the MSs about to be processed.

    `data_column` is the column DP3 is told to read (`msin.datacolumn`)."""
    from casacore import tables

    try:
        with tables.table(str(path), ack=False, readonly=True) as table:
            table.nrows()
            # DP3 (6.6) stops with "Table column DATA is unknown" on an MS without DATA even
            # when it is told to read another column (measured): both must be there.
            required = {data_column, "DATA", "FLAG", "TIME", "ANTENNA1", "ANTENNA2"}
            missing = required - set(table.colnames())
        with tables.table(f"{path}::SPECTRAL_WINDOW", ack=False, readonly=True) as spw:
            spw.getcol("NUM_CHAN")
    except Exception as error:  # casacore raises RuntimeError and friends: all mean unreadable
        raise ConfigError(
            f"inputs: {path} cannot be read as a MeasurementSet: {str(error).strip()}"
        ) from error
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


def expand_inputs(patterns: list[str], base_dir: Path) -> list[Path]:
    """Expand paths and glob patterns (relative to base_dir) into absolute paths, in order."""
    found: list[Path] = []
    for pattern in patterns:
        absolute_pattern = os.path.join(base_dir, os.path.expanduser(pattern))
        if _has_glob(pattern):
            escaped_base = glob.escape(str(base_dir))
            matches = sorted(glob.glob(os.path.join(escaped_base, os.path.expanduser(pattern))))
            if not matches:
                raise ConfigError(f"inputs: the pattern {pattern!r} matches nothing")
            found.extend(Path(match) for match in matches)
        else:
            found.append(Path(absolute_pattern))
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(Path(os.path.normpath(path.absolute())), None)
    return list(unique)


def _is_within(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


def check_output_dir(output_dir: Path, inputs: list[Path]) -> None:
    """DP3 must never write into an input: refuse an output_dir that is, is inside, or holds
    an input."""
    resolved_output = output_dir.resolve()
    for path in inputs:
        resolved_input = path.resolve()
        if _is_within(resolved_output, resolved_input):
            raise ConfigError(
                f"output_dir: {output_dir} is inside the input {path}; choose a directory "
                "outside every input"
            )
        if resolved_input.parent == resolved_output:
            raise ConfigError(
                f"output_dir: {output_dir} is the directory that holds the input {path}; "
                "outputs have the same names as inputs, so choose another directory"
            )


def discover_measurement_sets(
    patterns: list[str], output_dir: str | Path, base_dir: str | Path = "."
) -> list[MeasurementSet]:
    """All inputs as MeasurementSet records, after the checks that need no table opened."""
    base = Path(base_dir).absolute()
    inputs = expand_inputs(patterns, base)
    by_name: dict[str, Path] = {}
    for path in inputs:
        check_is_measurement_set(path)
        name = output_name(path)
        if name in by_name:
            raise ConfigError(
                f"inputs: {by_name[name]} and {path} would both be written to {name}.ms; "
                "rename one or process them in separate output directories"
            )
        by_name[name] = path
    output = Path(os.path.normpath(base / Path(output_dir).expanduser()))
    check_output_dir(output, inputs)
    return [MeasurementSet(name, path, output / f"{name}.ms") for name, path in by_name.items()]
