"""The rule layer's view: from the config to the batch of pending MSs and why each is pending.

Everything here runs when Snakemake reads the workflow (also for `snakemake -n`), so it is
cheap for MSs that are up to date: a stat walk of each input and one small JSON per output.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from dp3batch.books.batch_spec import BatchSpec, MSPaths, PendingMS
from dp3batch.books.fingerprints import extra_inputs_fingerprint
from dp3batch.books.layout import OutputLayout, check_output_names
from dp3batch.books.record_checks import load_record_checks
from dp3batch.books.records import Expectation, pending_reason, read_check, refresh_record_checks
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import Chain
from dp3batch.config.validation import validate_config
from dp3batch.dp3.install import dp3_version, find_dp3_executable
from dp3batch.dp3.parameter_check import ParameterCheck
from dp3batch.dp3.parameters import DP3Parameters, parameters_fingerprint
from dp3batch.dp3.parset import check_path
from dp3batch.dp3.telescope import MSParameters, PerMSParameters
from dp3batch.dp3.translation import chain_parameters
from dp3batch.inputs.calibration import check_calibration_inputs
from dp3batch.inputs.discovery import (
    MeasurementSet,
    check_output_not_link,
    check_readable,
    data_size,
    discover_measurement_sets,
    output_name,
    window_items,
)
from dp3batch.inputs.step_files import check_extra_inputs
from dp3batch.inputs.tables import read_telescope_name, write_lock_holder
from dp3batch.inputs.windows import WINDOW_SUFFIX, Windows, known_windows, outputs_by_name
from dp3batch.planning.parallel import map_over_cores


@dataclass
class Plan:
    scheduler: str | None
    chain: Chain
    output_dir: Path
    dp3_executable: str
    dp3_version: str
    parameters: DP3Parameters
    expectation: Expectation
    measurement_sets: list[MeasurementSet]
    pending: list[tuple[MeasurementSet, str]] = field(default_factory=list)
    # When the pending set was taken: a record finished later was made by this run.
    planned_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(
            timespec="milliseconds"
        )
    )
    # Of each pending MS: its own parameters (AOFlagger's strategy for its telescope).
    ms_parameters: dict[str, MSParameters] = field(default_factory=dict)
    # Pending MSs another process held locked for writing at planning: name → its pid.
    locked: dict[str, int] = field(default_factory=dict)
    # Of each pending MS: the bytes of its main table (what dispatch sorts by).
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingInput:
    """What planning learns by looking at a pending MS's input."""

    size: int
    locked_by: int | None = None
    telescope: str | None = None  # read only when the parameters depend on it


# The reason of an MS that is processed again only because Snakemake's -F or -R said so.
FORCED = "forced"


def make_plan(
    config: dict[str, Any],
    base_dir: str | Path = ".",
    force: bool = False,
    validated: tuple[str | None, Chain] | None = None,
    inspect_inputs: bool = True,
    check_parameters: bool = True,
) -> Plan:
    """Validate the config (unless `validated` holds `validate_config`'s answer already),
    discover the inputs, and find the pending MSs (every MS when `force`: those pending
    anyway keep their reason, the others are `forced`).

    `inspect_inputs`: open every pending input with casacore (is it a readable MS, which
    telescope), as a run must before it submits anything. A dry run submits nothing, and
    opening 10,000 MSs would take it minutes: it lists them, their locks and their windows.

    `check_parameters`: DP3 checks the chain's keys on one pending MS (a dry run included:
    it is the earliest a misspelled key can be named); not for a report or a list."""
    scheduler, chain = validated or validate_config(config)
    base = Path(base_dir).absolute()
    extra_dir = config.get("extra_inputs_dir")
    extra_dir = str(base / extra_dir) if extra_dir else str(base)
    # The step files resolve against it, and DP3 reads them: it must read them as named.
    check_path("extra_inputs_dir", extra_dir)
    executable = find_dp3_executable(config.get("dp3_executable"))
    parameters = chain_parameters(chain, extra_dir)
    files = parameters.file_parameters()
    check_extra_inputs(files)
    output_dir = Path(os.path.normpath(base / Path(config["output_dir"]).expanduser()))
    version = dp3_version(executable)
    expectation = Expectation(
        parameters_fingerprint=parameters_fingerprint(
            parameters.pairs(), {key for key, _ in files}
        ),
        extra_inputs_fingerprint=extra_inputs_fingerprint(files),
        dp3_version=version,
    )
    per_ms = PerMSParameters(chain, extra_dir, executable, parameters, {key for key, _ in files})

    def reason_of(ms: MeasurementSet) -> str | None:
        expected = expectation
        if per_ms.varies:
            expected = replace(
                expectation, parameters_fingerprint=per_ms.for_telescope(_telescope(ms)).fingerprint
            )
        return pending_reason(ms.input, ms.output, expected)

    # Most of a rerun over thousands of MSs: a stat of each file of each input and output.
    # Steps that choose a window themselves (`msin.band`) read one window of every MS; else
    # each window of an MS of several is an item of its own (see windows), and its reason
    # is found in the same pass.
    measurement_sets = discover_measurement_sets(config["inputs"], output_dir, base)
    # Before the pass forks: its processes inherit what the last run kept of the records.
    checks_file = OutputLayout(output_dir).record_checks
    load_record_checks(checks_file)
    if "band" not in chain.msin:
        answered = per_window_items(measurement_sets, output_dir, reason_of)
        measurement_sets = [item for item, _ in answered]
        reasons = [reason for _, reason in answered]
    else:
        if (band := parameters.selected_band()) is not None:
            check_selected_band(measurement_sets, band, output_dir)
        reasons = map_over_cores(reason_of, measurement_sets)
    plan = Plan(
        scheduler=scheduler,
        chain=chain,
        output_dir=output_dir,
        dp3_executable=executable,
        dp3_version=version,
        parameters=parameters,
        expectation=expectation,
        measurement_sets=measurement_sets,
    )
    for ms, reason in zip(measurement_sets, reasons, strict=True):
        if reason is None and force:
            reason = FORCED
        if reason is not None:
            plan.pending.append((ms, reason))
    if plan.pending:
        # For the next run: this one read the records new or changed since the last (with
        # nothing pending, the summary's check of the records does this, see common.smk).
        refresh_record_checks(checks_file, [ms.output for ms in measurement_sets])
    # An output made by this DP3 with these very parameters is DP3's own word that it knows
    # every key: then no DP3 need check them again.
    dp3_ran_these_parameters = any(reason is None for reason in reasons)
    data_column = str(chain.msin.get("datacolumn", "DATA"))

    def inspect(ms: MeasurementSet) -> PendingInput:
        # Opening a table costs milliseconds: only for the MSs about to be processed. A table
        # another process holds for writing would make casacore wait forever: it is named,
        # its task fails alone, and nothing here opens it.
        holder = write_lock_holder(ms.input)
        if holder is not None:
            return PendingInput(data_size(ms.input), locked_by=holder)
        if not inspect_inputs:
            return PendingInput(data_size(ms.input))
        check_readable(ms.input, data_column)
        telescope = read_telescope_name(ms.input) if per_ms.varies else None
        return PendingInput(data_size(ms.input), telescope=telescope)

    # DP3 checks the parameters in the background while the inputs are inspected.
    check = None
    if check_parameters and not dp3_ran_these_parameters:
        # With the MS's own parameters even in a dry run (one MS opened): without the
        # strategy for its telescope, the wheel's AOFlagger fails before DP3 names any key.
        own_parameters = per_ms.for_telescope if per_ms.varies else None
        check = _start_parameter_check(plan.pending, executable, parameters, own_parameters)
    try:
        unlocked = []
        inspections = map_over_cores(inspect, [ms for ms, _ in plan.pending])
        for index, ((ms, reason), found) in enumerate(zip(plan.pending, inspections, strict=True)):
            plan.sizes[ms.name] = found.size
            if found.locked_by is not None:
                plan.pending[index] = (
                    ms,
                    f"{reason}; LOCKED by another process (pid {found.locked_by})",
                )
                plan.locked[ms.name] = found.locked_by
                continue
            unlocked.append(ms)
            if found.telescope is not None:
                plan.ms_parameters[ms.name] = per_ms.for_telescope(found.telescope)
        if unlocked:
            check_calibration_inputs(parameters, [(ms.name, ms.input) for ms in unlocked])
        if check is not None:
            check.result()
    finally:
        if check is not None:
            check.cancel()
    return plan


def _start_parameter_check(
    pending: list[tuple[MeasurementSet, str]],
    executable: str,
    parameters: DP3Parameters,
    for_telescope: Callable[[str], MSParameters] | None,
) -> ParameterCheck | None:
    """DP3's check of the parameters on the first pending MS no other process holds (with
    that MS's own parameters when they depend on its telescope), or None if there is none."""
    for ms, _ in pending:
        if write_lock_holder(ms.input) is None:
            if for_telescope is not None:
                parameters = for_telescope(read_telescope_name(ms.input)).parameters
            return ParameterCheck(executable, parameters.with_band(ms.band), ms.input)
    return None


def _telescope(ms: MeasurementSet) -> str:
    """The telescope of an MS for the up-to-date check, without opening it when possible.

    The completion record names the telescope of the input it was made from; if the input
    changed since, the MS is pending anyway (and its telescope is read then)."""
    if not ms.output.exists():
        return ""  # missing: pending whatever its parameters
    check = read_check(ms.output)
    if check is not None and check.telescope is not None:
        return check.telescope
    return read_telescope_name(ms.input)


def batch_id(plan: Plan, now: datetime.datetime | None = None) -> str:
    """A name for this batch: its start time and a digest of what it processes.

    Unique per run, so the central job's marker never looks done for a later batch."""
    now = now or datetime.datetime.now(datetime.UTC)
    digest = hashlib.sha256(
        "\n".join(f"{ms.name}:{reason}" for ms, reason in plan.pending).encode()
    ).hexdigest()[:8]
    return f"{now:%Y%m%dT%H%M%S}-{digest}"


def describe_pending(plan: Plan, limit: int = 50) -> str:
    """The dry-run listing: which MSs will be (re)processed, and why."""
    total = len(plan.measurement_sets)
    if not plan.pending:
        return f"All {total} MS(s) in {plan.output_dir} are complete and up to date."
    lines = [f"{len(plan.pending)} of {total} MS(s) to process (DP3 {plan.dp3_version}):"]
    for ms, reason in plan.pending[:limit]:
        lines.append(f"  {ms.name}: {reason}")
    if len(plan.pending) > limit:
        lines.append(f"  ... and {len(plan.pending) - limit} more")
    return "\n".join(lines)


def all_measurement_sets(plan: Plan) -> tuple[MSPaths, ...]:
    """Every MS of the workflow: the summary lists them all, and only the temporary copies
    of their outputs may be removed."""
    return tuple(MSPaths(ms.name, str(ms.input), str(ms.output)) for ms in plan.measurement_sets)


def batch_specification(plan: Plan, config: dict[str, Any], batch: str) -> BatchSpec:
    """Everything the central job needs (its JSON travels through Snakemake)."""
    return BatchSpec(
        batch_id=batch,
        scheduler=plan.scheduler,
        local_cluster=dict(config["local_cluster"]),
        output_dir=str(plan.output_dir),
        log_dir=str(OutputLayout(plan.output_dir).log_dir),
        dp3_executable=plan.dp3_executable,
        dp3_version=plan.dp3_version,
        parameters=plan.parameters,
        parameters_fingerprint=plan.expectation.parameters_fingerprint,
        extra_inputs_fingerprint=plan.expectation.extra_inputs_fingerprint,
        # Set by validate_config from the schema if the config leaves them out.
        worker_wait_seconds=config["worker_wait_seconds"],
        all_measurement_sets=all_measurement_sets(plan),
        dask_report_min_seconds=config["dask_report_min_seconds"],
        planned_at=plan.planned_at,
        measurement_sets=tuple(_pending_ms(plan, ms, reason) for ms, reason in plan.pending),
    )


def _pending_ms(plan: Plan, ms: MeasurementSet, reason: str) -> PendingMS:
    # Its own parameters (`Task.of` takes them instead of the batch's shared ones).
    own = plan.ms_parameters.get(ms.name)
    return PendingMS(
        name=ms.name,
        input=str(ms.input),
        output=str(ms.output),
        band=ms.band,
        reason=reason,
        size=plan.sizes.get(ms.name, 0),
        parameters=own.parameters if own else None,
        parameters_fingerprint=own.fingerprint if own else None,
        locked_by=plan.locked.get(ms.name),
    )


Answer = TypeVar("Answer")


def per_window_items(
    measurement_sets: list[MeasurementSet],
    output_dir: Path,
    then: Callable[[MeasurementSet], Answer],
) -> list[tuple[MeasurementSet, Answer]]:
    """Every MS as its window items (for steps that select no `msin.band` themselves), each
    with `then(item)`, asked in the same pass while the item's completion record is still in
    memory (planning's pending reason: one pass over 10,000 MSs, not two). A name two items
    would share is refused. Opens the MSs whose windows no completion record knows (see
    windows)."""
    existing = outputs_by_name(output_dir, {ms.name for ms in measurement_sets})

    def items_of(ms: MeasurementSet) -> tuple[Windows | None, list[Answer]]:
        # The windows and the answers go back, not the items: they are made again from
        # the windows (cheaper than sending 10,000 paths back).
        windows = known_windows(ms.input, existing.get(ms.name, []))
        return windows, [then(item) for item in _items_of(ms, windows)]

    answered: list[tuple[MeasurementSet, Answer]] = []
    owners: dict[str, MeasurementSet] = {}
    found = map_over_cores(items_of, measurement_sets)
    for ms, (windows, answers) in zip(measurement_sets, found, strict=True):
        for item, answer in zip(_items_of(ms, windows), answers, strict=True):
            if item.name in owners:
                raise ConfigError(_collision_message(owners[item.name], item))
            owners[item.name] = item
            if item.output != ms.output:
                check_output_not_link(item)
                check_output_names(output_dir, [item.output.name])
            answered.append((item, answer))
    return answered


def _items_of(ms: MeasurementSet, windows: Windows | None) -> list[MeasurementSet]:
    return [ms] if windows is None else window_items(ms, windows)


def _collision_message(first: MeasurementSet, second: MeasurementSet) -> str:
    def described(item: MeasurementSet) -> str:
        if item.name == output_name(item.input):
            return str(item.input)
        return f"{item.input} (spectral window {item.band})"

    return (
        f"inputs: {described(first)} and {described(second)} would both be written to "
        f"{second.name}.ms (an MS of several spectral windows gives one output per window, "
        f"NAME{WINDOW_SUFFIX}<band>.ms); rename one, or process them in separate output "
        "directories"
    )


def check_selected_band(
    measurement_sets: list[MeasurementSet], band: int, output_dir: Path
) -> None:
    """Steps that choose a window (`msin.band`): every MS must have rows of it (DP3 would
    stop with "Band k not found"). Cheap on a rerun: the records know the windows."""
    existing = outputs_by_name(output_dir, {ms.name for ms in measurement_sets})
    for ms in measurement_sets:
        windows = known_windows(ms.input, existing.get(ms.name, []))
        if windows is not None and band not in windows.bands:
            bands = ", ".join(str(known) for known in windows.bands) or "none"
            raise ConfigError(
                f"steps: MsIn band {band} selects no data of {ms.input}: its rows are of "
                f"band(s) {bands} (DATA_DESC_ID); choose one of those, or leave `band` out "
                "to process every window"
            )
