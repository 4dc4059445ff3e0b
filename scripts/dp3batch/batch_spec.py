"""The batch specification: everything the central job needs, made by the rule layer
(`planning.batch_specification`) and handed to `batch.main`.

It travels through Snakemake's `params:` (which pickles it) as plain JSON from
`BatchSpec.to_json()`, and is parsed once, by `BatchSpec.from_json()`, when the central job
starts. The JSON keeps the keys it has always had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dp3batch.dp3_parameters import DP3Parameters
from dp3batch.json_fields import ContractError, Fields


@dataclass(frozen=True)
class MSPaths:
    """One MS of the workflow (an item: one spectral window of an MS of several): its name,
    input and output. The summary lists every one; only their temporary outputs may be
    removed."""

    name: str
    input: str
    output: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "input": self.input, "output": self.output}

    @classmethod
    def from_json(cls, data: object, what: str = "an MS of the workflow") -> MSPaths:
        fields = Fields(data, what)
        return cls(fields.text("name"), fields.text("input"), fields.text("output"))


@dataclass(frozen=True, kw_only=True)
class PendingMS:
    """One MS the batch processes, and why."""

    name: str
    input: str
    output: str
    # The spectral window this item reads (see windows), or None for the only one.
    band: int | None
    # Why it is pending (`planning.pending_reason`, or "forced").
    reason: str
    # Estimated cost (bytes of the main table): the largest MSs are dispatched first.
    size: int
    # Its own parameters and their fingerprint (AOFlagger's strategy for its telescope, see
    # ms_parameters), or None: the batch's.
    parameters: DP3Parameters | None = None
    parameters_fingerprint: str | None = None
    # Another process held the input locked for writing at planning (its pid).
    locked_by: int | None = None

    def __post_init__(self) -> None:
        if (self.parameters is None) != (self.parameters_fingerprint is None):
            raise ContractError(
                f"pending MS {self.name}: 'parameters' and 'parameters_fingerprint' go together"
            )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "band": self.band,
            "reason": self.reason,
            "size": self.size,
        }
        if self.parameters is not None:  # only an MS with parameters of its own has them
            data["parameters"] = self.parameters.to_json()
            data["parameters_fingerprint"] = self.parameters_fingerprint
        data["locked_by"] = self.locked_by
        return data

    @classmethod
    def from_json(cls, data: object, what: str = "a pending MS") -> PendingMS:
        fields = Fields(data, what)
        return cls(
            name=fields.text("name"),
            input=fields.text("input"),
            output=fields.text("output"),
            band=fields.optional_integer("band"),
            reason=fields.text("reason"),
            size=fields.integer("size"),
            parameters=fields.optional_dp3_parameters("parameters"),
            parameters_fingerprint=fields.optional_text("parameters_fingerprint"),
            locked_by=fields.optional_integer("locked_by"),
        )


@dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """One batch of the central job: its settings, the shared DP3 parameters, the pending
    MSs, and every MS of the workflow."""

    batch_id: str
    # `HOST:PORT` of an existing dask scheduler, or None: an embedded cluster.
    scheduler: str | None
    # The embedded cluster's `n_workers` and `threads_per_worker` (None: fits the machine).
    local_cluster: Mapping[str, int | None]
    output_dir: str
    log_dir: str
    dp3_executable: str
    dp3_version: str
    parameters: DP3Parameters
    parameters_fingerprint: str
    extra_inputs_fingerprint: str
    # How long the batch waits for workers holding `process` to come back.
    worker_wait_seconds: float
    all_measurement_sets: tuple[MSPaths, ...]
    # Below this duration no dask performance report is kept.
    dask_report_min_seconds: float
    # When the pending set was taken: a record finished later was made by this run.
    planned_at: str
    measurement_sets: tuple[PendingMS, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, as Snakemake's `params:` carries it (the keys and order of the
        specification as it has always been)."""
        return {
            "batch_id": self.batch_id,
            "scheduler": self.scheduler,
            "local_cluster": dict(self.local_cluster),
            "output_dir": self.output_dir,
            "log_dir": self.log_dir,
            "dp3_executable": self.dp3_executable,
            "dp3_version": self.dp3_version,
            "parameters": self.parameters.to_json(),
            "parameters_fingerprint": self.parameters_fingerprint,
            "extra_inputs_fingerprint": self.extra_inputs_fingerprint,
            "worker_wait_seconds": self.worker_wait_seconds,
            "all_measurement_sets": [ms.to_json() for ms in self.all_measurement_sets],
            "dask_report_min_seconds": self.dask_report_min_seconds,
            "planned_at": self.planned_at,
            "measurement_sets": [ms.to_json() for ms in self.measurement_sets],
        }

    @classmethod
    def from_json(cls, data: object, what: str = "batch specification") -> BatchSpec:
        fields = Fields(data, what)
        return cls(
            batch_id=fields.text("batch_id"),
            scheduler=fields.optional_text("scheduler"),
            local_cluster=_local_cluster(fields),
            output_dir=fields.text("output_dir"),
            log_dir=fields.text("log_dir"),
            dp3_executable=fields.text("dp3_executable"),
            dp3_version=fields.text("dp3_version"),
            parameters=fields.dp3_parameters("parameters"),
            parameters_fingerprint=fields.text("parameters_fingerprint"),
            extra_inputs_fingerprint=fields.text("extra_inputs_fingerprint"),
            worker_wait_seconds=fields.number("worker_wait_seconds"),
            all_measurement_sets=tuple(
                MSPaths.from_json(item.data, item.what)
                for item in fields.objects("all_measurement_sets")
            ),
            dask_report_min_seconds=fields.number("dask_report_min_seconds"),
            planned_at=fields.text("planned_at"),
            measurement_sets=tuple(
                PendingMS.from_json(item.data, item.what)
                for item in fields.objects("measurement_sets")
            ),
        )


def _local_cluster(fields: Fields) -> dict[str, int | None]:
    local = Fields(fields.mapping("local_cluster"), f"{fields.what}: local_cluster")
    return {key: local.optional_integer(key) for key in local.data}
