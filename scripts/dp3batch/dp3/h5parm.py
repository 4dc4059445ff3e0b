"""H5Parm calibration files: what is in one, and which DP3 ApplyCal options apply it.

DP3's ApplyCal needs to be told how to read an H5Parm: the soltab name (`correction`), or
`correction=fulljones` with an amplitude and a phase soltab, or one sub-step per soltab for a
diagonal amplitude + phase solution. The workflow reads the file (with h5py) when it plans a
run and chooses these options itself, so a wrong or unexpected file is reported before any
DP3 runs, in one message naming the file.

H5Parm layout (LoSoTo/DP3): one HDF5 group per solset (e.g. `sol000`) holding the `antenna`
and `source` tables and one group per soltab (e.g. `amplitude000`). A soltab's `TITLE`
attribute is its type; its `val` and `weight` datasets carry an `AXES` attribute ("time,freq,
ant,pol") naming the 1-D datasets beside them that label each dimension.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp3batch.config.errors import ConfigError

# Soltab types DP3 applies on their own (schaapcommon's H5ParmTypeStringToGainType). A phase
# or amplitude soltab without a polarisation axis is applied as a scalar one.
SINGLE_SOLTAB_TYPES = frozenset(
    {
        "amplitude",
        "phase",
        "scalaramplitude",
        "scalarphase",
        "commonscalaramplitude",
        "commonscalarphase",
        "tec",
        "clock",
        "rotation",
        "rotationangle",
        "commonrotationangle",
        "rotationmeasure",
    }
)
DIAGONAL_POLARISATIONS = (("XX", "YY"), ("RR", "LL"))
FULL_JONES_POLARISATIONS = (("XX", "XY", "YX", "YY"), ("RR", "RL", "LR", "LL"))
# Soltab names end up in DP3 parameter values and sub-step names: keep them plain.
SOLTAB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The sub-steps of a diagonal amplitude + phase solution, applied in this order.
DIAGONAL_SUBSTEPS = ("amplitude", "phase")
# ApplyCal parameters with which a user chooses the soltabs to apply.
USER_CHOICE_PARAMETERS = ("correction", "soltab", "steps")


class H5ParmError(ConfigError):
    """An H5Parm that cannot be applied; the message names the file and the problem."""


@dataclass(frozen=True)
class Soltab:
    """A solution table as far as ApplyCal cares: name, type, axes and polarisations."""

    name: str
    type: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    polarisations: tuple[str, ...] | None = None  # None: no `pol` axis (a scalar solution)
    directions: int = 1

    @property
    def is_full_jones(self) -> bool:
        return self.polarisations in FULL_JONES_POLARISATIONS


@dataclass(frozen=True)
class H5Parm:
    path: str
    solset: str
    soltabs: tuple[Soltab, ...]
    # Solsets in the file: a user's `solset` parameter may pick one of several.
    solsets: tuple[str, ...] = field(default=())

    def soltab(self, name: str) -> Soltab | None:
        return next((soltab for soltab in self.soltabs if soltab.name == name), None)

    @property
    def soltab_names(self) -> str:
        return ", ".join(soltab.name for soltab in self.soltabs) or "none"


def _text(value: Any) -> str:
    """An HDF5 string attribute or element (bytes, numpy bytes or str) as str, without NULs."""
    import numpy as np  # loaded by h5py already, which hands these values over

    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value).rstrip("\0")


def _read_soltab(path: str, name: str, group: Any) -> Soltab:
    import h5py

    where = f"{path}: soltab {name}"
    if not SOLTAB_NAME.fullmatch(name):
        raise H5ParmError(
            f"{where}: the name may contain only letters, digits and '_' (DP3 parameters "
            "name it); rename the soltab"
        )
    if "TITLE" not in group.attrs:
        raise H5ParmError(f"{where}: has no TITLE attribute, so its type is unknown")
    # Exact, as DP3 compares it: "Amplitude" is not a type DP3 knows.
    soltab_type = _text(group.attrs["TITLE"])
    datasets = {}
    for dataset_name in ("val", "weight"):
        dataset = group.get(dataset_name)
        if not isinstance(dataset, h5py.Dataset):
            raise H5ParmError(f"{where}: has no {dataset_name!r} dataset")
        if "AXES" not in dataset.attrs:
            raise H5ParmError(
                f"{where}: {dataset_name!r} has no AXES attribute naming its dimensions"
            )
        axes = tuple(axis.strip() for axis in _text(dataset.attrs["AXES"]).split(","))
        datasets[dataset_name] = (axes, tuple(dataset.shape))
    (axes, shape), (weight_axes, weight_shape) = datasets["val"], datasets["weight"]
    if weight_axes != axes:
        raise H5ParmError(
            f"{where}: 'val' has axes {','.join(axes)} but 'weight' has {','.join(weight_axes)}"
        )
    if weight_shape != shape:
        raise H5ParmError(f"{where}: 'val' has shape {shape} but 'weight' has {weight_shape}")
    axis_lengths = []
    for axis in axes:
        labels = group.get(axis)
        if not isinstance(labels, h5py.Dataset) or labels.ndim != 1:
            raise H5ParmError(f"{where}: axis {axis!r} (named in AXES) has no 1-D {axis!r} dataset")
        axis_lengths.append(labels.shape[0])
    if tuple(axis_lengths) != shape:
        described = ", ".join(
            f"{axis}={length}" for axis, length in zip(axes, axis_lengths, strict=True)
        )
        raise H5ParmError(
            f"{where}: 'val' and 'weight' have shape {shape}, but the axes {described} "
            f"make {tuple(axis_lengths)}"
        )
    polarisations = None
    if "pol" in axes:
        polarisations = tuple(_text(label).upper() for label in group["pol"][()])
    directions = group["dir"].shape[0] if "dir" in axes else 1
    return Soltab(name, soltab_type, axes, shape, polarisations, directions)


def read_h5parm(path: str | Path, solset: str | None = None) -> H5Parm:
    """Read the layout of an H5Parm (not its solutions); raise H5ParmError if it is malformed.

    Without `solset` the file must hold exactly one solset, as DP3 itself requires."""
    import h5py

    path = str(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise H5ParmError(f"{path}: cannot be read as an HDF5 file (H5Parm): {error}") from None
    with handle:
        solsets = tuple(name for name, item in handle.items() if isinstance(item, h5py.Group))
        if solset is None:
            if not solsets:
                raise H5ParmError(
                    f"{path}: has no solset (an H5Parm holds one group such as sol000 with "
                    "the solution tables)"
                )
            if len(solsets) > 1:
                raise H5ParmError(
                    f"{path}: has {len(solsets)} solsets ({', '.join(solsets)}); set the "
                    "applycal `solset` parameter to the one to apply, or keep one in the file"
                )
            solset = solsets[0]
        elif solset not in solsets:
            raise H5ParmError(
                f"{path}: has no solset {solset!r} (it has: {', '.join(solsets) or 'none'})"
            )
        # Listed first: h5py's iterator holds its global lock while it is suspended, so one
        # abandoned by an error (a soltab refused below) would keep every other thread out of
        # h5py until it is garbage-collected (a hang seen in a process that went on).
        members = list(handle[solset].items())
        soltabs = tuple(
            _read_soltab(path, name, group)
            for name, group in members
            if isinstance(group, h5py.Group)
        )
    return H5Parm(path, solset, soltabs, solsets)


def _check_applicable(h5parm: H5Parm, soltab: Soltab) -> None:
    """A soltab that DP3 can apply on its own: a known type, known polarisations, one
    direction (or the user names one with `direction`)."""
    where = f"{h5parm.path}: soltab {soltab.name}"
    if soltab.type not in SINGLE_SOLTAB_TYPES:
        raise H5ParmError(
            f"{where}: unknown soltab type {soltab.type!r} (its TITLE); DP3 applies "
            + ", ".join(sorted(SINGLE_SOLTAB_TYPES))
        )
    pols = soltab.polarisations
    if pols is not None and len(pols) > 1:
        if pols not in DIAGONAL_POLARISATIONS + FULL_JONES_POLARISATIONS:
            raise H5ParmError(
                f"{where}: polarisations {','.join(pols)} are neither diagonal (XX,YY) nor "
                "full Jones (XX,XY,YX,YY)"
            )


def applycal_parameters(h5parm: H5Parm, user_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The ApplyCal parameters that apply this H5Parm, to add to the user's own.

    - one soltab: `correction=<soltab>`;
    - an amplitude and a phase soltab, diagonal (or scalar): one sub-step per soltab,
      `steps=[amplitude,phase]` with `amplitude.correction=<soltab>` and
      `phase.correction=<soltab>`;
    - an amplitude and a phase soltab with 4 polarisations: `correction=fulljones` with
      `soltab=[<amplitude soltab>,<phase soltab>]`.

    A user who gave `correction`, `soltab` or `steps` has chosen already: nothing is added, but
    the soltabs named must exist and be applicable. Anything else raises H5ParmError.
    """
    if any(key in user_parameters for key in USER_CHOICE_PARAMETERS):
        _check_user_choice(h5parm, user_parameters)
        return {}
    soltabs = h5parm.soltabs
    for soltab in soltabs:
        if soltab.directions > 1 and "direction" not in user_parameters:
            raise H5ParmError(
                f"{h5parm.path}: soltab {soltab.name} has {soltab.directions} directions; set "
                "the applycal `direction` parameter to the one to apply"
            )
    if len(soltabs) == 1:
        (soltab,) = soltabs
        _check_applicable(h5parm, soltab)
        if soltab.type in ("amplitude", "phase") and soltab.is_full_jones:
            raise H5ParmError(
                f"{h5parm.path}: soltab {soltab.name} is a full-Jones {soltab.type} with no "
                f"{'phase' if soltab.type == 'amplitude' else 'amplitude'} soltab beside it; "
                "a full-Jones solution needs both"
            )
        return {"correction": soltab.name}
    if len(soltabs) == 2:
        by_type = {soltab.type: soltab for soltab in soltabs}
        if set(by_type) != {"amplitude", "phase"}:
            raise H5ParmError(
                f"{h5parm.path}: has two soltabs of types "
                f"{' and '.join(soltab.type for soltab in soltabs)} ({h5parm.soltab_names}); "
                "two soltabs must be one amplitude and one phase, or set `correction` "
                "yourself to apply one of them"
            )
        amplitude, phase = by_type["amplitude"], by_type["phase"]
        for soltab in (amplitude, phase):
            _check_applicable(h5parm, soltab)
        if amplitude.polarisations != phase.polarisations:
            raise H5ParmError(
                f"{h5parm.path}: the amplitude soltab {amplitude.name} has polarisations "
                f"{_describe_pols(amplitude)} but the phase soltab {phase.name} has "
                f"{_describe_pols(phase)}; they must match"
            )
        if amplitude.is_full_jones:
            return {"correction": "fulljones", "soltab": [amplitude.name, phase.name]}
        return {
            "steps": list(DIAGONAL_SUBSTEPS),
            **{
                f"{substep}.correction": soltab.name
                for substep, soltab in zip(DIAGONAL_SUBSTEPS, (amplitude, phase), strict=True)
            },
        }
    if not soltabs:
        raise H5ParmError(f"{h5parm.path}: solset {h5parm.solset} has no soltab")
    raise H5ParmError(
        f"{h5parm.path}: has {len(soltabs)} soltabs ({h5parm.soltab_names}); the workflow "
        "applies one soltab, or an amplitude and a phase soltab. Set the applycal "
        "`correction` (and `soltab` or `steps`) parameters to choose, or split the file"
    )


def _describe_pols(soltab: Soltab) -> str:
    return ",".join(soltab.polarisations) if soltab.polarisations else "none (scalar)"


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        return [item.strip() for item in text[1:-1].split(",") if item.strip()]
    return [text]


def _check_user_choice(h5parm: H5Parm, parameters: Mapping[str, Any]) -> None:
    """The soltabs a user named in correction/soltab/steps exist and can be applied."""
    corrections = [parameters.get("correction")]
    if "steps" in parameters:
        corrections = [
            parameters.get(f"{substep}.correction", parameters.get("correction"))
            for substep in _as_list(parameters["steps"])
        ]
    named: list[str] = []
    for correction in corrections:
        if correction is None:
            continue
        if str(correction).lower() == "fulljones":
            named += _as_list(parameters.get("soltab", ["amplitude000", "phase000"]))
        else:
            named.append(str(correction))
    for name in named:
        soltab = h5parm.soltab(name)
        if soltab is None:
            raise H5ParmError(
                f"{h5parm.path}: has no soltab {name!r}, which the applycal parameters name "
                f"(soltabs in solset {h5parm.solset}: {h5parm.soltab_names})"
            )
        _check_applicable(h5parm, soltab)
