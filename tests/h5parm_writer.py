"""Writing H5Parm files for the tests: the layout `dp3batch.dp3.h5parm` reads (LoSoTo/DP3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dp3batch.dp3.h5parm import DIAGONAL_POLARISATIONS, FULL_JONES_POLARISATIONS


@dataclass(frozen=True)
class SoltabData:
    """A soltab to write: `axes` maps axis names, in the order of the dimensions of `values`,
    to their labels (antenna names, polarisations, times, frequencies)."""

    name: str
    type: str
    axes: Mapping[str, Sequence]
    values: np.ndarray
    weights: np.ndarray | None = None


def _fixed_bytes(strings: Iterable[str]) -> np.ndarray:
    # One byte longer than the longest name: DP3 does not find an antenna whose name fills
    # its fixed-length field exactly ("SolTab has no element ... in ant").
    encoded = [name.encode() for name in strings]
    width = max((len(name) for name in encoded), default=0) + 1
    return np.array(encoded, dtype=f"S{width}")


def write_h5parm(
    path: str | Path,
    soltabs: Iterable[SoltabData],
    antenna_names: Sequence[str],
    antenna_positions: np.ndarray | None = None,
    solset: str = "sol000",
    directions: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write an H5Parm with one solset: `antenna` and `source` tables and the soltabs."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    positions = (
        np.zeros((len(antenna_names), 3)) if antenna_positions is None else antenna_positions
    )
    directions = directions or {"pointing": (0.0, 0.0)}
    with h5py.File(path, "w") as handle:
        group = handle.create_group(solset)
        group.attrs["TITLE"] = np.bytes_("")
        antenna_table = np.zeros(
            len(antenna_names), dtype=[("name", "S16"), ("position", "<f4", (3,))]
        )
        antenna_table["name"] = [name.encode() for name in antenna_names]
        antenna_table["position"] = positions
        group.create_dataset("antenna", data=antenna_table)
        source_table = np.zeros(len(directions), dtype=[("name", "S128"), ("dir", "<f4", (2,))])
        source_table["name"] = [name.encode() for name in directions]
        source_table["dir"] = list(directions.values())
        group.create_dataset("source", data=source_table)
        for soltab in soltabs:
            table = group.create_group(soltab.name)
            table.attrs["TITLE"] = np.bytes_(soltab.type)
            for axis, labels in soltab.axes.items():
                labels = list(labels)
                if labels and isinstance(labels[0], str):
                    table.create_dataset(axis, data=_fixed_bytes(labels))
                else:
                    table.create_dataset(axis, data=np.asarray(labels, dtype=float))
            axes_attribute = np.bytes_(",".join(soltab.axes))
            weights = np.ones(soltab.values.shape) if soltab.weights is None else soltab.weights
            for name, data in (("val", soltab.values), ("weight", weights)):
                dataset = table.create_dataset(name, data=np.asarray(data, dtype=float))
                dataset.attrs["AXES"] = axes_attribute
    return path


def identity_soltabs(
    kind: str,
    antenna_names: Sequence[str],
    times: Sequence[float] = (),
    frequencies: Sequence[float] = (),
) -> list[SoltabData]:
    """Soltabs that leave the data unchanged: phases 0 and amplitudes 1 (and, for full Jones,
    0 off the diagonal). `kind` is "scalarphase", "diagonal" or "fulljones". With `times` and
    `frequencies` the soltabs get time and freq axes too."""
    if kind == "scalarphase":
        pols: tuple[str, ...] | None = None
    elif kind == "diagonal":
        pols = DIAGONAL_POLARISATIONS[0]
    elif kind == "fulljones":
        pols = FULL_JONES_POLARISATIONS[0]
    else:
        raise ValueError(f"unknown identity solution kind {kind!r}")
    axes: dict[str, Sequence] = {}
    if len(times):
        axes["time"] = list(times)
    if len(frequencies):
        axes["freq"] = list(frequencies)
    axes["ant"] = list(antenna_names)
    if pols:
        axes["pol"] = list(pols)
    shape = tuple(len(labels) for labels in axes.values())
    phase = SoltabData("phase000", "phase", axes, np.zeros(shape))
    if kind == "scalarphase":
        return [phase]
    amplitudes = np.ones(shape)
    if kind == "fulljones":
        amplitudes[..., 1:3] = 0.0  # XY and YX
    return [SoltabData("amplitude000", "amplitude", axes, amplitudes), phase]
