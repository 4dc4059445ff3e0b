"""The rule layer's view: from the config to the batch of pending MSs and why each is pending.

Everything here runs when Snakemake reads the workflow (also for `snakemake -n`), so it is
cheap for MSs that are up to date: a stat walk of each input and one small JSON per output.
`make_plan` runs four stages: the chain (config, DP3, parameters, fingerprints), the pending
items (discovery, windows, pending reasons), the inspection of the pending inputs (open,
locks, telescopes, calibration), and DP3's own check of the keys beside it.
"""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dp3batch.books.batch_spec import BatchSpec, MSPaths, PendingMS
from dp3batch.books.chunks import (
    CHUNK_WIDTH_CHANGED,
    PlannedChunk,
    chunk_directory,
    chunked_fingerprint,
    frequency_span,
)
from dp3batch.books.fingerprints import extra_inputs_fingerprint
from dp3batch.books.forced import FORCED, FORCED_EARLIER, read_forced_note
from dp3batch.books.layout import OutputLayout, check_output_names
from dp3batch.books.qa import QALimits
from dp3batch.books.records import (
    NOT_MADE_HERE,
    Expectation,
    RecordStore,
    pending_reason,
    record_origin,
)
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import Chain
from dp3batch.config.validation import validate_config
from dp3batch.dp3.averaging import channel_problem, msin_channels
from dp3batch.dp3.install import dp3_version, find_dp3_executable
from dp3batch.dp3.parameter_check import ParameterCheck
from dp3batch.dp3.parameters import DP3Parameters, parameters_fingerprint
from dp3batch.dp3.parset import check_path, shown
from dp3batch.dp3.telescope import MSParameters, PerMSParameters
from dp3batch.dp3.translation import chain_parameters
from dp3batch.inputs.calibration import check_calibration_inputs
from dp3batch.inputs.discovery import (
    WorkItem,
    check_readable,
    data_size,
    discover_measurement_sets,
    output_name,
)
from dp3batch.inputs.step_files import check_extra_inputs
from dp3batch.inputs.tables import read_telescope_name, window_channels, write_lock_holder
from dp3batch.planning.frequency_chunks import ItemChunks, item_chunks
from dp3batch.planning.items import check_selected_band, per_window_items
from dp3batch.planning.parallel import map_over_cores


@dataclass(frozen=True)
class ChainSettings:
    """The chain as this run processes it: checked, translated and fingerprinted."""

    scheduler: str | None
    chain: Chain
    output_dir: Path
    dp3_executable: str
    dp3_version: str
    parameters: DP3Parameters
    expectation: Expectation
    # The parameters of MSs whose AOFlagger strategy depends on their telescope.
    per_ms: PerMSParameters
    # The config's `frequency_chunk_hz` (None: off), and the chain's own fingerprint (the
    # expectation's is that of outputs made with this chunk width, see books.chunks).
    frequency_chunk_hz: float | None = None
    chain_fingerprint: str = ""


@dataclass
class Plan:
    scheduler: str | None
    chain: Chain
    output_dir: Path
    dp3_executable: str
    dp3_version: str
    parameters: DP3Parameters
    expectation: Expectation
    measurement_sets: list[WorkItem]
    # The completion records as this run read them (the summary and the kept checks reuse
    # what planning parsed).
    store: RecordStore = field(default_factory=RecordStore)
    pending: list[tuple[WorkItem, str]] = field(default_factory=list)
    # When the pending set was taken.
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
    # With `frequency_chunk_hz`: the chunks of each pending MS cut into several, and the
    # one block of those that fit in one (no chunk, no join).
    frequency_chunk_hz: float | None = None
    chunks: dict[str, tuple[PlannedChunk, ...]] = field(default_factory=dict)
    # Pending items not cut into chunks, with why (they fit in one, or cannot be joined).
    single_chunk: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingInput:
    """What planning learns by looking at a pending MS's input."""

    size: int
    locked_by: int | None = None
    telescope: str | None = None  # read only when the parameters depend on it
    # Why DP3 would refuse its channel count (an Averager's freqstep), if it would.
    channel_problem: str | None = None


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
    base = Path(base_dir).absolute()
    settings = chain_settings(config, base, validated)
    checks_file = OutputLayout(settings.output_dir).record_checks
    # Before the pass forks: its processes inherit what the last run kept of the records.
    store = RecordStore.load(checks_file)
    items, reasons = pending_items(settings, config["inputs"], base, store)
    refuse_replacing_what_the_workflow_did_not_make(items, reasons, settings.output_dir)
    plan = Plan(
        scheduler=settings.scheduler,
        chain=settings.chain,
        output_dir=settings.output_dir,
        dp3_executable=settings.dp3_executable,
        dp3_version=settings.dp3_version,
        parameters=settings.parameters,
        expectation=settings.expectation,
        measurement_sets=items,
        store=store,
        frequency_chunk_hz=settings.frequency_chunk_hz,
    )
    # Forced MSs an interrupted or failed forced run did not finish (books.forced).
    owed = read_forced_note(OutputLayout(settings.output_dir).forced_note)
    for item, reason in zip(items, reasons, strict=True):
        if reason is None and force:
            reason = FORCED
        if reason is None and (noted := owed.get(str(item.output))) is not None:
            record = store.record(item.output)
            if noted.owed(None if record is None else record.finished):
                reason = FORCED_EARLIER
        if reason is not None:
            plan.pending.append((item, reason))
    if plan.pending:
        # For the next run: this one read the records new or changed since the last (with
        # nothing pending, the summary's check of the records does this: see Run).
        store.keep_checks(checks_file, [item.output for item in items])
    # An output made by this DP3 with these very parameters is DP3's own word that it knows
    # every key: then no DP3 need check them again.
    check = None
    if check_parameters and not any(reason is None for reason in reasons):
        check = _start_parameter_check(plan.pending, settings)
    try:
        inspect_pending(plan, settings, inspect_inputs)
        if settings.frequency_chunk_hz is not None:
            plan_frequency_chunks(plan, settings)
        if check is not None:
            check.result()
    finally:
        if check is not None:
            check.cancel()
    return plan


def chain_settings(
    config: dict[str, Any], base: Path, validated: tuple[str | None, Chain] | None = None
) -> ChainSettings:
    """Stage 1: the config checked, DP3 found, the chain translated, the files its steps
    read checked, and what an up-to-date output must agree with."""
    scheduler, chain = validated or validate_config(config)
    extra_dir = config.get("extra_inputs_dir")
    extra_dir = str(base / extra_dir) if extra_dir else str(base)
    # The step files resolve against it, and DP3 reads them: it must read them as named.
    check_path("extra_inputs_dir", extra_dir)
    executable = find_dp3_executable(config.get("dp3_executable"))
    parameters = chain_parameters(chain, extra_dir)
    files = parameters.file_parameters()
    check_extra_inputs(files)
    file_keys = {key for key, _ in files}
    version = dp3_version(executable)
    width = config.get("frequency_chunk_hz")
    width = None if width is None else float(width)
    fingerprint = parameters_fingerprint(parameters.pairs(), file_keys)
    return ChainSettings(
        scheduler=scheduler,
        chain=chain,
        output_dir=output_dir_path(config, base),
        dp3_executable=executable,
        dp3_version=version,
        parameters=parameters,
        expectation=Expectation(
            parameters_fingerprint=chunked_fingerprint(fingerprint, width),
            extra_inputs_fingerprint=extra_inputs_fingerprint(files),
            dp3_version=version,
        ),
        per_ms=PerMSParameters(chain, extra_dir, executable, parameters, file_keys),
        frequency_chunk_hz=width,
        chain_fingerprint=fingerprint,
    )


def output_dir_path(config: dict[str, Any], base: Path) -> Path:
    """The absolute output directory of a config, for a run in `base`."""
    return Path(os.path.normpath(base / Path(config["output_dir"]).expanduser()))


def pending_items(
    settings: ChainSettings, inputs: list[str], base: Path, store: RecordStore
) -> tuple[list[WorkItem], list[str | None]]:
    """Stage 2: every work item and why it is pending (None: up to date).

    Most of a rerun over thousands of MSs: a stat of each file of each input and output.
    Steps that choose a window themselves (`msin.band`) read one window of every MS; else
    each window of an MS of several is an item of its own (see windows), and its reason is
    found in the same pass."""
    expectation, per_ms = settings.expectation, settings.per_ms

    def reason_of(item: WorkItem) -> str | None:
        expected, parameters = expectation, settings.parameters
        if per_ms.varies:
            own = per_ms.for_telescope(_telescope(item, store))
            expected = replace(
                expectation,
                parameters_fingerprint=chunked_fingerprint(
                    own.fingerprint, settings.frequency_chunk_hz
                ),
            )
            parameters = own.parameters
        reason = pending_reason(item.input, item.output, expected, store)
        if reason == "steps changed" and _only_chunking_changed(item, parameters, store):
            reason = CHUNK_WIDTH_CHANGED
        return reason

    items = discover_measurement_sets(inputs, settings.output_dir, base)
    if "band" not in settings.chain.msin:
        answered = per_window_items(items, settings.output_dir, store, reason_of)
        return [item for item, _ in answered], [reason for _, reason in answered]
    if (band := settings.parameters.selected_band()) is not None:
        check_selected_band(items, band, settings.output_dir, store)
    return items, map_over_cores(reason_of, items)


def refuse_replacing_what_the_workflow_did_not_make(
    items: list[WorkItem], reasons: list[str | None], output_dir: Path
) -> None:
    """Raise ConfigError when an output's path holds something without a completion record
    (another tool's MS, say, in an output_dir used before): processing would replace it, and
    the workflow deletes nothing it did not make."""
    in_the_way = [
        str(item.output)
        for item, reason in zip(items, reasons, strict=True)
        if reason == NOT_MADE_HERE
    ]
    if not in_the_way:
        return
    named = ", ".join(shown(path) for path in in_the_way[:NAMED_IN_MESSAGE])
    more = len(in_the_way) - NAMED_IN_MESSAGE
    raise ConfigError(
        f"output_dir: {len(in_the_way)} output path(s) in {shown(str(output_dir))} already hold "
        f"something without a completion record, which this workflow did not make (or whose "
        f"record was deleted), and processing would replace it: {named}"
        + (f" and {more} more" if more > 0 else "")
        + ". Nothing is deleted that the workflow did not make: move them away (or delete "
        "them), or choose another output_dir"
    )


def _only_chunking_changed(item: WorkItem, parameters: DP3Parameters, store: RecordStore) -> bool:
    """Whether the output was made by this very chain, and so only `frequency_chunk_hz`
    (part of the expected fingerprint, see books.chunks) changed."""
    record = store.record(item.output)
    return record is not None and tuple(record.parameters) == tuple(parameters.pairs())


def plan_frequency_chunks(plan: Plan, settings: ChainSettings) -> None:
    """With `frequency_chunk_hz`: cut each pending item's window into chunks, each with its
    own pending reason; refuse the run, before anything runs, when some window cannot be
    cut (naming each, with a width that would work). Items another process holds locked are
    left whole: their task fails alone, naming the lock."""
    width = settings.frequency_chunk_hz
    assert width is not None
    log_dir = OutputLayout(settings.output_dir).log_dir
    unlocked = [(item, reason) for item, reason in plan.pending if item.name not in plan.locked]

    def cut(pending: tuple[WorkItem, str]) -> ItemChunks:
        item, reason = pending
        own = plan.ms_parameters.get(item.name)
        if own is None and settings.per_ms.varies:
            # A dry run inspects no telescope: the chunks' fingerprints need it all the same.
            own = settings.per_ms.for_telescope(read_telescope_name(item.input))
        parameters = own.parameters if own else settings.parameters
        fingerprint = own.fingerprint if own else settings.chain_fingerprint
        expected = replace(settings.expectation, parameters_fingerprint=fingerprint)
        try:
            return item_chunks(
                item, parameters, fingerprint, width, expected, plan.store, log_dir, reason
            )
        except Exception as error:  # casacore: an unreadable window fails its own task
            return ItemChunks(refused=f"its spectral window cannot be read: {error}")

    found = map_over_cores(cut, unlocked)
    refused = []
    for (item, _), chunks in zip(unlocked, found, strict=True):
        if chunks.refused:
            refused.append(f"  {_described(item)}: {chunks.refused}")
        elif chunks.chunks:
            # A chunk's entries are longer than the output's: they must fit the filesystem.
            names = [Path(chunk.output).name for chunk in chunks.chunks]
            check_output_names(chunk_directory(item.output), names)
            plan.chunks[item.name] = chunks.chunks
        elif chunks.single is not None:
            span = frequency_span(chunks.single.low_hz, chunks.single.high_hz)
            plan.single_chunk[item.name] = (
                f"processed whole ({span}): {chunks.whole_because}"
                if chunks.whole_because
                else f"one frequency chunk: {span} fits in frequency_chunk_hz; no join"
            )
    if refused:
        shown = refused[:NAMED_IN_MESSAGE]
        if len(refused) > NAMED_IN_MESSAGE:
            shown.append(f"  ... and {len(refused) - NAMED_IN_MESSAGE} more")
        raise ConfigError(
            f"frequency_chunk_hz: {width:g} Hz cannot cut {len(refused)} pending MS(s) into "
            "frequency chunks that keep each averaged channel whole:\n" + "\n".join(shown)
        )


def _described(item: WorkItem) -> str:
    """An item as a message names it: its input, and its window if it is one of several."""
    if item.name != output_name(item.input):
        return f"{item.input} (spectral window {item.band})"
    return str(item.input)


def inspect_pending(plan: Plan, settings: ChainSettings, inspect_inputs: bool) -> None:
    """Stage 3: the pending inputs looked at: their sizes and locks, and (for a run that
    processes them) readable as DP3 needs them, their telescopes, their stations and
    sources against the calibration files."""
    data_column = str(settings.chain.msin.get("datacolumn", "DATA"))
    per_ms = settings.per_ms
    averages = bool(settings.parameters.steps_of_type("averager"))

    def inspect(item: WorkItem) -> PendingInput:
        # Opening a table costs milliseconds: only for the MSs about to be processed. A table
        # another process holds for writing would make casacore wait forever: it is named,
        # its task fails alone, and nothing here opens it.
        holder = write_lock_holder(item.input)
        if holder is not None:
            return PendingInput(data_size(item.input), locked_by=holder)
        if not inspect_inputs:
            return PendingInput(data_size(item.input))
        check_readable(item.input, data_column)
        telescope = read_telescope_name(item.input) if per_ms.varies else None
        problem = averaging_problem(item, settings.parameters) if averages else None
        return PendingInput(data_size(item.input), telescope=telescope, channel_problem=problem)

    unlocked = []
    inspections = map_over_cores(inspect, [item for item, _ in plan.pending])
    pending = [item for item, _ in plan.pending]
    check_channel_counts(
        [(item, found.channel_problem) for item, found in zip(pending, inspections, strict=True)]
    )
    for index, ((item, reason), found) in enumerate(zip(plan.pending, inspections, strict=True)):
        plan.sizes[item.name] = found.size
        if found.locked_by is not None:
            plan.pending[index] = (
                item,
                f"{reason}; LOCKED by another process (pid {found.locked_by})",
            )
            plan.locked[item.name] = found.locked_by
            continue
        unlocked.append(item)
        if found.telescope is not None:
            plan.ms_parameters[item.name] = per_ms.for_telescope(found.telescope)
    if unlocked:
        check_calibration_inputs(plan.parameters, [(item.name, item.input) for item in unlocked])


def averaging_problem(item: WorkItem, parameters: DP3Parameters) -> str | None:
    """Why DP3 would refuse to average this item's channels, or None (also when its window
    cannot be read: an MS without rows or windows fails its own task, saying why)."""
    try:
        in_window = window_channels(item.input, item.band)
    except Exception:  # casacore raises RuntimeError and friends
        return None
    channels = msin_channels(parameters, in_window)
    return None if channels is None else channel_problem(parameters, channels)


# How many MSs a message names before it only counts the rest.
NAMED_IN_MESSAGE = 5


def check_channel_counts(problems: list[tuple[WorkItem, str | None]]) -> None:
    """Refuse the run, before anything is processed, when DP3 would refuse the channel count
    of some pending MS (each of those would fail at run time, one by one)."""
    refused = [(item, problem) for item, problem in problems if problem]
    if not refused:
        return
    lines = [f"  {item.input}: {problem}" for item, problem in refused[:NAMED_IN_MESSAGE]]
    if len(refused) > NAMED_IN_MESSAGE:
        lines.append(f"  ... and {len(refused) - NAMED_IN_MESSAGE} more")
    raise ConfigError(
        f"steps: DP3 cannot average the channels of {len(refused)} pending MS(s):\n"
        + "\n".join(lines)
        + "\nChoose a freqstep that divides the channel count (one at least as large "
        "averages all channels into one), or select channels with `MsIn: {nchan: N}`."
    )


def _start_parameter_check(
    pending: list[tuple[WorkItem, str]], settings: ChainSettings
) -> ParameterCheck | None:
    """Stage 4, in the background while the inputs are inspected: DP3's check of the
    parameters on the first pending MS no other process holds, with that MS's own
    parameters (even in a dry run: without the strategy for its telescope, the wheel's
    AOFlagger fails before DP3 names any key); None if there is no such MS."""
    for_telescope: Callable[[str], MSParameters] | None = (
        settings.per_ms.for_telescope if settings.per_ms.varies else None
    )
    for item, _ in pending:
        if write_lock_holder(item.input) is None:
            parameters = settings.parameters
            if for_telescope is not None:
                parameters = for_telescope(read_telescope_name(item.input)).parameters
            return ParameterCheck(
                settings.dp3_executable, parameters.with_band(item.band), item.input
            )
    return None


def _telescope(item: WorkItem, store: RecordStore) -> str:
    """The telescope of an MS for the up-to-date check, without opening it when possible.

    The completion record names the telescope of the input it was made from; if the input
    changed since, the MS is pending anyway (and its telescope is read then)."""
    check = store.check(item.output)
    if check is None and not item.output.exists():
        return ""  # missing: pending whatever its parameters
    if check is not None and check.telescope is not None:
        return check.telescope
    return read_telescope_name(item.input)


def batch_id(now: datetime.datetime | None = None) -> str:
    """A name for this batch: its start time and 32 random bits.

    Unique per run, so the central job's marker never looks done for a later batch, and
    two runs started in the same second (even on one output directory, from two hosts)
    never take each other's records for their own."""
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def describe_pending(plan: Plan, limit: int = 50) -> str:
    """The dry-run listing: which MSs will be (re)processed, and why."""
    total = len(plan.measurement_sets)
    if not plan.pending:
        return f"All {total} MS(s) in {plan.output_dir} are complete and up to date."
    lines = [f"{len(plan.pending)} of {total} MS(s) to process (DP3 {plan.dp3_version}):"]
    chunk_lines = 0
    for item, reason in plan.pending[:limit]:
        lines.append(f"  {item.name}: {reason}{_chunking_note(plan, item.name)}")
        owed = [chunk for chunk in plan.chunks.get(item.name, ()) if chunk.reason is not None]
        # Each pending chunk has a line, up to `limit` in all (its MS's line counts them).
        for chunk in owed[: max(0, limit - chunk_lines)]:
            lines.append(f"  {item.name} {chunk.label}: {chunk.reason}")
        chunk_lines += len(owed)
    if len(plan.pending) > limit:
        lines.append(f"  ... and {len(plan.pending) - limit} more")
    return "\n".join(lines)


def _chunking_note(plan: Plan, name: str) -> str:
    """How a pending MS is cut (with `frequency_chunk_hz`): its chunks and what is left of
    them, or that it fits in one."""
    chunks = plan.chunks.get(name)
    if chunks:
        owed = sum(1 for chunk in chunks if chunk.reason is not None)
        done = len(chunks) - owed
        kept = f", {done} done and kept" if done else ""
        return f" ({len(chunks)} frequency chunks: {owed} to process{kept}, then joined)"
    if name in plan.single_chunk:
        return f" ({plan.single_chunk[name]})"
    return ""


def all_measurement_sets(plan: Plan) -> tuple[MSPaths, ...]:
    """Every MS of the workflow: the summary lists them all, and only the temporary copies
    of their outputs may be removed."""
    return tuple(
        MSPaths(item.name, str(item.input), str(item.output)) for item in plan.measurement_sets
    )


def batch_specification(
    plan: Plan, config: dict[str, Any], batch: str, run_dir: str | None = None
) -> BatchSpec:
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
        worker_silence_seconds=config["worker_silence_seconds"],
        all_measurement_sets=all_measurement_sets(plan),
        dask_report_min_seconds=config["dask_report_min_seconds"],
        dask_report_task_stream=config["dask_report_task_stream"],
        planned_at=plan.planned_at,
        measurement_sets=tuple(_pending_ms(plan, item, reason) for item, reason in plan.pending),
        run_dir=run_dir,
        qa=qa_limits(config).to_json() if qa_limits(config).enabled else None,
        frequency_chunk_hz=plan.frequency_chunk_hz,
        flagging_report=(config.get("qa") or {}).get("flagging_report") or "auto",
    )


def qa_limits(config: dict[str, Any]) -> QALimits:
    """The config's `qa:` limits (all None: no QA verdict)."""
    return QALimits.from_config(config.get("qa"))


def _pending_ms(plan: Plan, item: WorkItem, reason: str) -> PendingMS:
    # Its own parameters (`Task.of` takes them instead of the batch's shared ones).
    own = plan.ms_parameters.get(item.name)
    # A missing output has no record to read.
    origin = None if reason.startswith("missing") else record_origin(plan.store.record(item.output))
    return PendingMS(
        name=item.name,
        input=str(item.input),
        output=str(item.output),
        band=item.band,
        reason=reason,
        size=plan.sizes.get(item.name, 0),
        parameters=own.parameters if own else None,
        parameters_fingerprint=(
            chunked_fingerprint(own.fingerprint, plan.frequency_chunk_hz) if own else None
        ),
        locked_by=plan.locked.get(item.name),
        record_origin=origin,
        chunks=plan.chunks.get(item.name),
    )
