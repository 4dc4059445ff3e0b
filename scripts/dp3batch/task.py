"""The task of one MS: everything a worker needs to run DP3 on it and commit the output.

Plain, typed data built by the central job from the batch specification; dask pickles it
to the worker (external workers import this module from the package the batch uploads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp3batch.dp3_parameters import DP3Parameters
from dp3batch.layout import OutputLayout, ms_log_file

# What every task of a batch shares, unless the MS carries its own (its parameters:
# AOFlagger's strategy for its telescope, see planning).
SHARED_KEYS = (
    "dp3_executable",
    "dp3_version",
    "parameters",
    "parameters_fingerprint",
    "extra_inputs_fingerprint",
)


@dataclass(frozen=True)
class Task:
    name: str
    input: str
    output: str
    log: str
    dp3_executable: str
    dp3_version: str
    # The result-defining DP3 parameters.
    parameters: DP3Parameters
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    # The spectral window this item reads (see windows), or None for the only one.
    band: int | None = None
    # Estimated cost (bytes of the main table): the largest MSs are dispatched first.
    size: int = 0
    # Another process held the input locked for writing at planning (its pid).
    locked_by: int | None = None
    # The batch's guard file: no commit once it says the batch stopped (execution.commit).
    guard: str | None = None

    @classmethod
    def of(cls, batch: dict[str, Any], ms: dict[str, Any]) -> Task:
        """The task of one MS of a batch specification (planning.batch_specification)."""
        shared = {key: ms.get(key, batch[key]) for key in SHARED_KEYS}
        guard = None
        if "batch_id" in batch:
            guard = str(OutputLayout(Path(batch["output_dir"])).batch_guard(batch["batch_id"]))
        return cls(
            name=ms["name"],
            input=ms["input"],
            output=ms["output"],
            log=ms_log_file(batch["log_dir"], ms["name"]),
            dp3_executable=shared["dp3_executable"],
            dp3_version=shared["dp3_version"],
            parameters=DP3Parameters.from_json(shared["parameters"]),
            parameters_fingerprint=shared["parameters_fingerprint"],
            extra_inputs_fingerprint=shared["extra_inputs_fingerprint"],
            band=ms.get("band"),
            size=int(ms.get("size") or 0),
            locked_by=ms.get("locked_by"),
            guard=guard,
        )
