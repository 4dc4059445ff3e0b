"""Calibration inputs checked against the data before anything runs.

DP3 stops an ApplyCal run when a station of the MS has no solutions in the H5Parm, and a
Demixer run when a source it is told to subtract is not in the sky model; both would fail
every MS of a batch, one by one. So: every station (ANTENNA::NAME) of each pending MS must be
on the `ant` axis of each soltab ApplyCal uses (unless the user chose DP3's
`missingantennabehavior`), and every source a Demixer names must be in its sky model.
"""

from __future__ import annotations

from pathlib import Path

from dp3batch.config import ConfigError
from dp3batch.dp3 import steps_of_type


def _as_names(value: str) -> list[str]:
    """A DP3 value `a` or `[a,b]` as names."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [name.strip() for name in value.split(",") if name.strip()]


def applycal_soltabs(parameters: list[tuple[str, str]], step: str) -> list[str]:
    """The soltabs an ApplyCal step (and its sub-steps) reads."""
    names: list[str] = []
    for key, value in parameters:
        if not key.startswith(f"{step}."):
            continue
        if key.endswith(".soltab"):
            names += _as_names(value)
        elif key.endswith(".correction") and value != "fulljones":
            names.append(value)
    return list(dict.fromkeys(names))


def soltab_antennas(path: str, solset: str | None, soltabs: list[str]) -> dict[str, set[str]]:
    """The `ant` axis of each soltab (soltabs without one apply to every station)."""
    import h5py

    found: dict[str, set[str]] = {}
    with h5py.File(path, "r") as handle:
        groups = [name for name, item in handle.items() if isinstance(item, h5py.Group)]
        group = handle[solset or groups[0]]
        for name in soltabs:
            if name in group and "ant" in group[name]:
                labels = group[name]["ant"][()]
                found[name] = {
                    (label.decode() if isinstance(label, bytes) else str(label)).rstrip("\0")
                    for label in labels
                }
    return found


def missing_stations(
    parameters: list[tuple[str, str]], stations: list[str], ms_name: str
) -> list[str]:
    """One message per ApplyCal H5Parm that lacks stations of the MS."""
    values = dict(parameters)
    problems = []
    for step in steps_of_type(parameters, "applycal"):
        parmdb = values.get(f"{step}.parmdb")
        if not parmdb or f"{step}.missingantennabehavior" in values or ".h5" not in parmdb:
            continue
        soltabs = applycal_soltabs(parameters, step)
        for soltab, antennas in soltab_antennas(
            parmdb, values.get(f"{step}.solset"), soltabs
        ).items():
            missing = [station for station in stations if station not in antennas]
            if missing:
                problems.append(
                    f"steps: {step} parmdb {parmdb}: soltab {soltab} has no solutions for "
                    f"station(s) {', '.join(missing)} of {ms_name}; use solutions for these "
                    "stations, or set the applycal `missingantennabehavior` (error, flag or "
                    "unit)"
                )
    return problems


def sky_model_sources(path: str) -> set[str]:
    """Source and patch names of a makesourcedb text sky model (a Demixer names patches)."""
    names: set[str] = set()
    columns = ["name", "type", "patch"]
    for raw in Path(path).read_text(errors="replace").splitlines():
        line = raw.strip()
        lowered = line.lower()
        if lowered.startswith("format") or (lowered.startswith("#") and "format" in lowered):
            description = line.split("=", 1)[1] if "=" in line else line
            description = description.replace("(", "").replace(")", "").replace("format", "")
            columns = [item.split("=")[0].strip().lower() for item in description.split(",")]
            continue
        if not line or line.startswith("#"):
            continue
        fields = [item.strip() for item in line.split(",")]
        for column in ("name", "patch"):
            if column in columns and columns.index(column) < len(fields):
                if fields[columns.index(column)]:
                    names.add(fields[columns.index(column)])
    return names


def missing_sources(parameters: list[tuple[str, str]]) -> list[str]:
    values = dict(parameters)
    problems = []
    for step in steps_of_type(parameters, "demixer"):
        skymodel = values.get(f"{step}.skymodel")
        if not skymodel or not Path(skymodel).is_file():
            continue
        wanted = []
        for key in ("subtractsources", "targetsource"):
            wanted += _as_names(values.get(f"{step}.{key}", ""))
        known = sky_model_sources(skymodel)
        absent = [source for source in wanted if source not in known]
        if absent:
            problems.append(
                f"steps: {step}: the source(s) {', '.join(absent)} (subtractsources/"
                f"targetsource) are not in the sky model {skymodel}; it has: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
    return problems


def read_stations(ms: Path) -> list[str]:
    from casacore import tables

    with tables.table(f"{ms}::ANTENNA", ack=False, readonly=True) as antennas:
        return [str(name) for name in antennas.getcol("NAME")]


def check_calibration_inputs(
    parameters: list[tuple[str, str]], pending: list[tuple[str, Path]]
) -> None:
    """Raise ConfigError when a calibration input does not fit the data (see module doc)."""
    problems = missing_sources(parameters)
    if steps_of_type(parameters, "applycal"):
        seen: set[tuple[str, ...]] = set()
        for name, path in pending:
            stations = tuple(read_stations(path))
            if stations in seen:
                continue
            seen.add(stations)
            problems += missing_stations(parameters, list(stations), name)
            if problems:
                break
    if problems:
        raise ConfigError(problems[0])
