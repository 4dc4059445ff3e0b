"""Calibration inputs checked against the data before anything runs.

DP3 stops an ApplyCal run when a station of the MS has no solutions in the H5Parm, and a
Demixer run when a source it is told to subtract is not in the sky model; both would fail
every MS of a batch, one by one. So: every station (ANTENNA::NAME) of each pending MS must be
on the `ant` axis of each soltab ApplyCal uses (unless the user chose DP3's
`missingantennabehavior`), and every source a Demixer names must be in its sky model.
"""

from __future__ import annotations

from pathlib import Path

from dp3batch.config.errors import ConfigError
from dp3batch.dp3.parameters import DP3Parameters, DP3Step, format_value
from dp3batch.inputs.tables import station_names


def _as_names(value: str | None) -> list[str]:
    """A DP3 value `a` or `[a,b]` as names."""
    value = (value or "").strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [name.strip() for name in value.split(",") if name.strip()]


def applycal_soltabs(step: DP3Step) -> list[str]:
    """The soltabs an ApplyCal step (and its sub-steps: `<sub-step>.correction`) reads."""
    names: list[str] = []
    for key, value in step.items():
        text = format_value(value)
        if f".{key}".endswith(".soltab"):
            names += _as_names(text)
        elif f".{key}".endswith(".correction") and text != "fulljones":
            names.append(text)
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


def missing_stations(parameters: DP3Parameters, stations: list[str], ms_name: str) -> list[str]:
    """One message per ApplyCal H5Parm that lacks stations of the MS."""
    problems = []
    for step in parameters.steps_of_type("applycal"):
        parmdb = step.value("parmdb")
        if not parmdb or step.value("missingantennabehavior") is not None or ".h5" not in parmdb:
            continue
        soltabs = applycal_soltabs(step)
        for soltab, antennas in soltab_antennas(parmdb, step.value("solset"), soltabs).items():
            missing = [station for station in stations if station not in antennas]
            if missing:
                problems.append(
                    f"steps: {step.name} parmdb {parmdb}: soltab {soltab} has no solutions for "
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


def missing_sources(parameters: DP3Parameters) -> list[str]:
    problems = []
    for step in parameters.steps_of_type("demixer"):
        skymodel = step.value("skymodel")
        if not skymodel or not Path(skymodel).is_file():
            continue
        wanted = []
        for key in ("subtractsources", "targetsource"):
            wanted += _as_names(step.value(key))
        known = sky_model_sources(skymodel)
        absent = [source for source in wanted if source not in known]
        if absent:
            problems.append(
                f"steps: {step.name}: the source(s) {', '.join(absent)} (subtractsources/"
                f"targetsource) are not in the sky model {skymodel}; it has: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
    return problems


def check_calibration_inputs(parameters: DP3Parameters, pending: list[tuple[str, Path]]) -> None:
    """Raise ConfigError when a calibration input does not fit the data (see module doc)."""
    problems = missing_sources(parameters)
    if parameters.steps_of_type("applycal"):
        seen: set[tuple[str, ...]] = set()
        for name, path in pending:
            stations = tuple(station_names(path))
            if stations in seen:
                continue
            seen.add(stations)
            problems += missing_stations(parameters, list(stations), name)
            if problems:
                break
    if problems:
        raise ConfigError(problems[0])
