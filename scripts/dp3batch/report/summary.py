"""The run summary: one row per MS (`summary.tsv`, `summary.json`), built from the completion
records on disk and the results of the batch that ran (which also carry the failures).

`Summary` is its one owner: the central job writes it when its batch is done, the rule layer
when no batch ran (refreshed only when the records changed) or when the batch job ended
before it could."""

from __future__ import annotations

import contextlib
import csv
import filecmp
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from json.decoder import scanstring
from pathlib import Path
from typing import Any, TextIO

from dp3batch.books.batch_spec import MSPaths
from dp3batch.books.codec import from_json, to_json, write_json_list
from dp3batch.books.layout import RECORD_NAME, OutputLayout, ms_log_file, temporary_path
from dp3batch.books.qa import SUSPECT, QALimits, QAVerdict, qa_verdict
from dp3batch.books.record_checks import without_collections
from dp3batch.books.records import CompletionRecord, RecordStore
from dp3batch.books.status import Status
from dp3batch.books.task_result import TaskResult
from dp3batch.books.write_errors import write_problem

# The columns of each flagging step (`flagged_aoflagger_pct`: DP3's percentage).
STEP_FLAGS_PREFIX = "flagged_"
# No QA limits: no verdict (QALimits is frozen, so one is shared).
NO_QA = QALimits()
PERCENT_SUFFIX = "_pct"


def step_flag_column(step: str) -> str:
    """The column of one flagging step: `flagged_aoflagger_pct`."""
    return f"{STEP_FLAGS_PREFIX}{step}{PERCENT_SUFFIX}"


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    """One MS in `summary.tsv` and `summary.json`, and in the report's table and plots:
    what its completion record (or this batch's result) says of the run."""

    name: str
    status: Status
    # The QA verdict (books.qa): "ok", "suspect" (and why), or None when QA is off.
    qa: str | None = None
    qa_reason: str | None = None
    duration_seconds: float | None = None
    # What the dispatch took for the size of the job (largest first), beside it.
    size_estimate_bytes: int | None = None
    worker: str | None = None
    numthreads: int | None = None
    dp3_version: str | None = None
    rows_before: int | None = None
    rows_after: int | None = None
    channels_before: int | None = None
    channels_after: int | None = None
    time_resolution_before: float | None = None
    time_resolution_after: float | None = None
    freq_resolution_before: float | None = None
    freq_resolution_after: float | None = None
    # Percentages flagged, every one of them (see docs/report.md): in the input; then
    # (columns `flagged_<step>_pct`, see step_flags) by each flagging step, DP3's count; in
    # all before averaging (input + every step); and in the output, after averaging, where a
    # sample is flagged only if all its inputs were.
    flagged_input_pct: float | None = None
    flagged_total_pct: float | None = None
    flagged_output_pct: float | None = None
    output_bytes: int | None = None
    finished: str | None = None
    log: str | None = None
    error: str | None = None
    input: str | None = None
    output: str | None = None
    # DP3's peak resident memory (its ru_maxrss), for sizing jobs; after the older columns.
    peak_memory_bytes: int | None = None
    # The PNG of the output's flagging report (its zarr dataset is beside it).
    flagging_report: str | None = None
    # DP3's CPU time (user + system); after the older columns.
    dp3_cpu_seconds: float | None = None
    # JSON only: DP3's time per step, its flag counts per step (the RFI spectrum and the
    # per-station plot), the stations by antenna index, the flagging report's statistics.
    step_seconds: Mapping[str, float] = field(default_factory=dict)
    flags_by_step: Mapping[str, Any] = field(default_factory=dict)
    stations: tuple[str, ...] = ()
    flag_statistics: Mapping[str, Any] = field(default_factory=dict)
    # JSON only: of an output joined from frequency chunks, the width and each chunk (its
    # channels, band, worker, duration, flagged percentages; see dask_stage.join).
    frequency_chunks: Mapping[str, Any] = field(default_factory=dict)

    @property
    def step_flags(self) -> dict[str, float | None]:
        """Per flagging step, DP3's own percentage of the visibilities it flagged, as the
        columns `flagged_<step>_pct`."""
        return {
            step_flag_column(step): count.get("percent")
            for step, count in self.flags_by_step.items()
        }

    def to_json(self) -> dict[str, Any]:
        """Every field in order, then one `flagged_<step>_pct` entry per flagging step."""
        return {**to_json(self), **self.step_flags}

    @classmethod
    def from_json(cls, data: object, what: str = "summary row") -> SummaryRow:
        return from_json(cls, data, what)


@dataclass(frozen=True)
class SummaryFiles:
    """Where a summary is: its JSON and its TSV."""

    json: Path
    tsv: Path


def slim_row(row: SummaryRow) -> SummaryRow:
    """`row` without what only its JSON and the report's spectrum and station plots read
    (per-channel and per-station statistics, stations): its TSV line, its line in the
    report's table and its bar in the flagged-per-MS plot are the same. A whole row of the
    many-case chain weighs about 11 KB; 10,000 of them were most of a batch's memory."""
    if not row.flag_statistics and not row.stations:
        return row
    return replace(
        row,
        flag_statistics={},
        stations=(),
        flags_by_step={
            step: {"percent": (count or {}).get("percent")}
            for step, count in row.flags_by_step.items()
        },
    )


# The TSV's columns: every field of a row but those in the JSON only, with one
# `flagged_<step>_pct` column per flagging step after `flagged_input_pct`.
JSON_ONLY = ("step_seconds", "flags_by_step", "stations", "flag_statistics", "frequency_chunks")
COLUMNS = [item.name for item in fields(SummaryRow) if item.name not in JSON_ONLY]


def tsv_columns(step_columns: list[str]) -> list[str]:
    """COLUMNS with the steps' columns after the input's, in the order of the chain."""
    position = COLUMNS.index("flagged_input_pct") + 1
    steps = [column for column in step_columns if column not in COLUMNS]
    return COLUMNS[:position] + steps + COLUMNS[position:]


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 3)


def _row_from(
    ms: MSPaths,
    status: Status,
    log: str,
    source: CompletionRecord | TaskResult | None,
    qa: QALimits = NO_QA,
) -> SummaryRow:
    """The summary row of one MS: what its record (or its result) says of the run, and the
    QA verdict of its flags under the current limits."""
    if source is None:
        return SummaryRow(name=ms.name, status=status, log=log, input=ms.input, output=ms.output)
    before = source.shape_before or {}
    after = source.shape_after or {}
    statistics = dict(source.flag_statistics or {})
    verdict = qa_verdict(statistics, qa) if status.complete else QAVerdict()
    return SummaryRow(
        name=ms.name,
        status=status,
        qa=verdict.status,
        qa_reason=verdict.reason or None,
        duration_seconds=source.duration_seconds,
        size_estimate_bytes=source.size_estimate_bytes,
        worker=source.worker,
        numthreads=source.numthreads,
        dp3_version=source.dp3_version,
        rows_before=before.get("rows"),
        rows_after=after.get("rows"),
        channels_before=before.get("channels"),
        channels_after=after.get("channels"),
        time_resolution_before=before.get("interval"),
        time_resolution_after=after.get("interval"),
        freq_resolution_before=before.get("channel_width"),
        freq_resolution_after=after.get("channel_width"),
        flagged_input_pct=_pct(before.get("flagged_fraction")),
        flagged_total_pct=statistics.get("total_pct"),
        flagged_output_pct=_pct(after.get("flagged_fraction")),
        output_bytes=source.output_bytes,
        finished=source.finished,
        log=log,
        error=source.error if isinstance(source, TaskResult) and status == Status.FAILED else None,
        # As the record says (the path it was made from).
        input=source.input,
        output=source.output,
        peak_memory_bytes=source.peak_memory_bytes,
        flagging_report=statistics.get("png"),
        dp3_cpu_seconds=source.dp3_cpu_seconds,
        step_seconds=dict(source.step_seconds or {}),
        flags_by_step=dict(source.flags_by_step or {}),
        stations=tuple(source.stations or ()),
        flag_statistics=statistics,
        frequency_chunks=dict(getattr(source, "frequency_chunks", None) or {}),
    )


def iter_rows(
    measurement_sets: Sequence[MSPaths],
    batch_results: Sequence[TaskResult] | None,
    log_dir: str | Path,
    batch_names: set[str] | None = None,
    batch_id: str | None = None,
    store: RecordStore | None = None,
    qa: QALimits = NO_QA,
) -> Iterator[SummaryRow]:
    """One row per MS, in order, made as it is asked for, from the completion records on
    disk, so that it is true after any fault: an MS of this run's batch (`batch_names`)
    whose record that batch made (its `batch_id`, never a comparison of two hosts' clocks)
    is done, even if its result was lost with the scheduler or an interrupt; a failed
    result without such a record is failed, whatever record an earlier run left.

    `measurement_sets` are every MS of the workflow; `store` reads their records (a new
    one if not given)."""
    store = store or RecordStore()
    in_batch = {result.name: result for result in batch_results or []}
    batch_names = set(batch_names or ()) | set(in_batch)
    for ms in measurement_sets:
        result = in_batch.get(ms.name)
        log = ms_log_file(log_dir, ms.name)
        record = store.record(ms.output)
        made_now = record is not None and batch_id is not None and record.batch_id == batch_id
        if record is not None and ms.name in batch_names and made_now:
            yield _row_from(ms, Status.DONE, log, record, qa)
        elif result is not None and result.status in (Status.FAILED, Status.NOT_PROCESSED):
            yield _row_from(ms, result.status, result.log, result)
        elif record is not None and (
            ms.name not in batch_names
            # completed by another run while this batch waited for the lock
            or (result is not None and result.status == Status.UP_TO_DATE)
        ):
            yield _row_from(ms, Status.UP_TO_DATE, log, record, qa)
        else:
            yield _row_from(ms, Status.NOT_PROCESSED, log, None)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _tsv_cell(value: Any) -> str:
    """One line per MS: line breaks and tabs in a value (DP3's error lines) become spaces."""
    return "" if value is None else " ".join(str(value).split())


def write_summary(
    rows: Iterable[SummaryRow],
    json_path: str | Path,
    tsv_path: str | Path,
    batch_id: str | None = None,
) -> tuple[list[SummaryRow], str | None]:
    """The machine-readable summary: JSON (with per-step times) and TSV (one line per MS);
    the JSON names the batch it was written after (`batch_id`), if any.

    Each row's JSON is written as the row is made: memory grows with the MSs' slim rows
    only (`slim_row`; `complete_rows_in` reads them whole again). Returns the slim rows,
    and a problem (e.g. a full disk) instead of raising: the run's own outcome matters
    more than its summary, and no half-written file is left behind."""
    json_path, tsv_path = Path(json_path), Path(tsv_path)
    # A summary is vouched for by the digest its writer notes after it (refresh_summary,
    # Summary.write): until then, none.
    with contextlib.suppress(OSError):
        _digest_path(json_path).unlink()
    # Names of this write's own: two runs on one output directory write their summaries at
    # the same time (after their batches, outside the directory's lock), and a shared name
    # let one replace the other's half-written file, or fail and remove the summary.
    entries = temporary_path(json_path.with_name(f"{json_path.name}.entries"))
    temporaries = (temporary_path(json_path), temporary_path(tsv_path))
    rows = iter(rows)
    kept: list[SummaryRow] = []
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with open(entries, "w") as target:
            separator = ""
            for row in rows:
                target.write(f"{separator}{json.dumps(row.to_json())}")
                separator = ",\n"
                kept.append(slim_row(row))
            target.write("\n" if separator else "")
        verdict = Verdict.of(kept)
        with open(temporaries[0], "w") as target, open(entries) as source:
            target.write(f"{_BATCH_LINE}{json.dumps(batch_id)},\n")
            target.write(f"{_COUNTS_LINE}{json.dumps(dict(verdict.counts))},\n{_ENTRIES_LINE}")
            shutil.copyfileobj(source, target)
            target.write('],\n"suspect": ')
            write_json_list(target, verdict.suspect)
            target.write("}\n")
        with open(temporaries[1], "w") as target:
            _write_tsv(kept, target)
        for path, temporary in zip((json_path, tsv_path), temporaries, strict=True):
            if _same_file(temporary, path):  # unchanged files are left alone (no-op reruns)
                temporary.unlink()
            else:
                temporary.replace(path)
    except OSError as error:
        # No half-written copy left to take space, and no summary of an earlier run that
        # would no longer tell the truth.
        for path in (*temporaries, json_path, tsv_path):
            with contextlib.suppress(OSError):
                path.unlink()
        # Every row all the same: the run's verdict is counted from them.
        kept += [slim_row(row) for row in rows]
        return kept, (
            f"could not write the summary {tsv_path} ({write_problem(error)}); the summary of "
            "an earlier run was removed, as it no longer told the truth"
        )
    finally:
        with contextlib.suppress(OSError):
            entries.unlink()
    return kept, None


def _write_tsv(rows: list[SummaryRow], target: TextIO) -> None:
    columns = tsv_columns(list(dict.fromkeys(key for row in rows for key in row.step_flags)))
    writer = csv.DictWriter(
        target,
        fieldnames=columns,
        delimiter="\t",
        extrasaction="ignore",
        lineterminator="\n",
        quoting=csv.QUOTE_NONE,
        escapechar="\\",
    )
    writer.writeheader()
    for row in rows:
        entry = row.to_json()
        writer.writerow({key: _tsv_cell(entry.get(key)) for key in columns})


def _same_file(new: Path, old: Path) -> bool:
    try:
        return filecmp.cmp(new, old, shallow=False)
    except OSError:
        return False


def suspect_list(rows: list[SummaryRow]) -> list[dict[str, str]]:
    """The MSs the QA verdict found suspect, with why (the summary's last entry)."""
    return [{"name": row.name, "reason": row.qa_reason or ""} for row in rows if row.qa == SUSPECT]


@dataclass(frozen=True)
class Verdict:
    """What a run says as it ends: how many MSs have each status, and the suspect ones."""

    counts: Mapping[str, int]
    suspect: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def of(cls, rows: Sequence[SummaryRow]) -> Verdict:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return cls(counts, tuple(suspect_list(list(rows))))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> int:
        return sum(count for status, count in self.counts.items() if Status(status).complete)


def verdict_of_batch(json_path: Path, batch_id: str) -> Verdict | None:
    """The verdict of a summary written after the batch `batch_id` (the central job writes
    it from the records right after the batch), else None. Read one line at a time, the MSs'
    own lines skipped: memory flat in their number. (Which batch wrote it is what its first
    line says: Snakemake touches the batch's files after the job, so their times cannot.)"""
    try:
        with open(json_path) as source:
            batch, counts = _read_head(source)
            if batch != batch_id:
                return None
            for line in source:
                if line == "],\n":
                    break
            rest = json.loads("{" + source.read())
        if not isinstance(counts, dict) or not all(
            isinstance(count, int) and Status(status) for status, count in counts.items()
        ):
            return None
        suspect = rest["suspect"]
        if not isinstance(suspect, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in suspect
        ):
            return None
        suspect = [
            {"name": entry["name"], "reason": str(entry.get("reason") or "")} for entry in suspect
        ]
        return Verdict(counts, tuple(suspect))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest_path(json_path: Path) -> Path:
    return json_path.parent / f".{json_path.stem}.digest"


def records_digest(measurement_sets: Sequence[MSPaths]) -> str:
    """What a no-op run's summary depends on: every MS and the state of its completion
    record (one stat each). Equal digests mean an equal summary, so it need not be rebuilt."""
    digest = hashlib.sha256()
    for ms in measurement_sets:
        try:
            stat = os.stat(os.path.join(ms.output, RECORD_NAME))  # 10,000 of them: no Path
            state = f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            state = "none"
        digest.update(f"{ms.name}\t{ms.input}\t{ms.output}\t{state}\n".encode())
    return digest.hexdigest()


# A summary written after a batch notes its records' digest behind this: a run with nothing
# to do finds every row there, its statuses to update (done by that batch: now up to date).
AFTER_A_BATCH = "after a batch "


def _noted_digest(digest: str, qa: QALimits) -> str:
    if qa.enabled:  # the verdicts depend on the limits too: a changed limit rebuilds it
        digest += " qa " + json.dumps(qa.to_json(), sort_keys=True)
    return digest


def refresh_summary(
    measurement_sets: Sequence[MSPaths],
    log_dir: Path,
    json_path: Path,
    tsv_path: Path,
    digest: str | None = None,
    store: RecordStore | None = None,
    qa: QALimits = NO_QA,
) -> str | None:
    """The summary of a run with nothing to do, rebuilt only when the records changed since
    it was last written (a digest beside it says which records it was built from); after a
    batch whose records are unchanged since, its rows are kept and only their statuses
    change. `digest`: `records_digest(measurement_sets)`, if the caller has it already."""
    digest_path = _digest_path(json_path)
    digest = _noted_digest(digest or records_digest(measurement_sets), qa)
    noted = _read_text(digest_path)
    files_there = json_path.is_file() and tsv_path.is_file()
    if noted == digest and files_there:
        return None
    if noted == AFTER_A_BATCH + digest and files_there and _mark_up_to_date(json_path, tsv_path):
        problem = None
    else:
        with without_collections():  # every record parsed: see record_checks
            rows = iter_rows(measurement_sets, [], log_dir, store=store, qa=qa)
            _, problem = write_summary(rows, json_path, tsv_path)
    if problem is None:
        with contextlib.suppress(OSError):
            digest_path.write_text(digest)
    return problem


_BATCH_LINE = '{"batch": '
_COUNTS_LINE = '"counts": '
_ENTRIES_LINE = '"measurement_sets": [\n'


def _json_line(line: str, start: str) -> Any:
    """The value on a line `start` VALUE `,` of a summary (ValueError if it is not one)."""
    if not line.startswith(start) or not line.endswith(",\n"):
        raise ValueError(f"not a line {start}...")
    return json.loads(line[len(start) : -2])


def _read_head(source: TextIO) -> tuple[Any, Any]:
    """The batch and the counts of a summary `write_summary` wrote, read up to its first MS
    (ValueError if it is not laid out so)."""
    batch = _json_line(source.readline(), _BATCH_LINE)
    counts = _json_line(source.readline(), _COUNTS_LINE)
    if source.readline() != _ENTRIES_LINE:
        raise ValueError("no list of MSs where a summary has it")
    return batch, counts


def _entry_line(line: str) -> tuple[dict[str, Any], str]:
    """One MS's entry in a summary, and the comma after it ("" for the last)."""
    text, comma = (line[:-2], ",") if line.endswith(",\n") else (line[:-1], "")
    return json.loads(text), comma


def complete_rows_in(json_path: Path, status: Status | None = None) -> Iterator[SummaryRow]:
    """The whole rows of the complete MSs (only those of `status`, if given) of a summary
    `write_summary` wrote, read one line at a time; none if it cannot be read."""
    try:
        with open(json_path) as source:
            _, counts = _read_head(source)
            for _ in range(sum(counts.values())):
                entry, _ = _entry_line(source.readline())
                complete = Status(entry["status"]).complete
                if complete and (status is None or entry["status"] == status):
                    yield SummaryRow.from_json(entry)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return


def _mark_up_to_date(json_path: Path, tsv_path: Path) -> bool:
    """A summary written after a batch, with each MS that batch did now up to date: only
    the statuses change, one line at a time (memory flat in the number of MSs; the files
    stay as `write_summary` writes them). False when a file is not laid out as it writes
    them, cannot be rewritten, or an MS was not complete: the caller rebuilds it from the
    records."""
    done, up_to_date = Status.DONE.value, Status.UP_TO_DATE.value
    temporaries = [path.with_name(f"{path.name}.tmp") for path in (json_path, tsv_path)]
    try:
        with open(json_path) as source, open(temporaries[0], "w") as target:
            _, counts = _read_head(source)
            if not isinstance(counts, dict) or not set(counts) <= {done, up_to_date}:
                return False
            total = sum(counts.values())
            new_counts = {up_to_date: total} if total else {}
            # No batch ran: the statuses are this run's.
            target.write(f"{_BATCH_LINE}null,\n{_COUNTS_LINE}{json.dumps(new_counts)},\n")
            target.write(_ENTRIES_LINE)
            for _ in range(total):
                target.write(_marked_up_to_date(source.readline()))
            if source.readline() != "],\n":  # not as many MSs as counted
                return False
            target.write("],\n")
            shutil.copyfileobj(source, target)  # the suspect MSs
        with open(tsv_path) as source, open(temporaries[1], "w") as target:
            header = source.readline()
            column = header.rstrip("\n").split("\t").index("status")
            target.write(header)
            for line in source:
                cells = line.split("\t")  # no cell holds a tab or a line break (_tsv_cell)
                if cells[column] == done:
                    cells[column] = up_to_date
                target.write("\t".join(cells))
        for temporary, path in zip(temporaries, (json_path, tsv_path), strict=True):
            temporary.replace(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    finally:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
    return True


_NAME_START = '{"name": "'
_COMPLETE_STATUSES = tuple(
    f', "status": {json.dumps(status.value)}, ' for status in (Status.DONE, Status.UP_TO_DATE)
)
_UP_TO_DATE_STATUS = _COMPLETE_STATUSES[1]


def _marked_up_to_date(line: str) -> str:
    """One complete MS's entry line (as `write_summary` writes it: the name, then the
    status) with its status up to date; ValueError for any other line. Only the name is
    read: parsing and writing again each of 10,000 entries took 0.8 s of a no-op rerun."""
    if not line.startswith(_NAME_START) or not line.endswith(("},\n", "}\n")):
        raise ValueError("not an entry line")
    _, end = scanstring(line, len(_NAME_START))  # the name's closing quote, escapes read
    for status in _COMPLETE_STATUSES:
        if line.startswith(status, end):
            return f"{line[:end]}{_UP_TO_DATE_STATUS}{line[end + len(status) :]}"
    raise ValueError("not a complete MS's entry")


class Summary:
    """The summary of one output directory, over every MS of the workflow."""

    def __init__(
        self,
        layout: OutputLayout,
        measurement_sets: Sequence[MSPaths],
        store: RecordStore | None = None,
        qa: QALimits = NO_QA,
    ):
        self.layout = layout
        self.measurement_sets = measurement_sets
        self.store = store or RecordStore()
        self.qa = qa

    def write(
        self,
        batch_results: Sequence[TaskResult] = (),
        batch_names: set[str] | None = None,
        batch_id: str | None = None,
    ) -> tuple[list[SummaryRow], str | None]:
        """The rows after a batch (see `iter_rows`), written, slim (`slim_row`); and a
        problem, if any."""
        # Before any record is read: a record that changes after this no longer matches it.
        digest = records_digest(self.measurement_sets)
        rows, problem = write_summary(
            iter_rows(
                self.measurement_sets,
                batch_results,
                self.layout.log_dir,
                batch_names,
                batch_id,
                self.store,
                self.qa,
            ),
            self.layout.summary_json,
            self.layout.summary_tsv,
            batch_id,
        )
        if problem is None and all(row.status.complete for row in rows):
            with contextlib.suppress(OSError):
                _digest_path(self.layout.summary_json).write_text(
                    AFTER_A_BATCH + _noted_digest(digest, self.qa)
                )
        return rows, problem

    def refresh(self, digest: str | None = None) -> str | None:
        """After a run with nothing to do: rebuilt only if the records changed."""
        return refresh_summary(
            self.measurement_sets,
            self.layout.log_dir,
            self.layout.summary_json,
            self.layout.summary_tsv,
            digest,
            self.store,
            self.qa,
        )

    def verdict_of_batch(self, batch_id: str) -> Verdict | None:
        """The verdict of the summary the central job wrote after the batch, else None."""
        return verdict_of_batch(self.layout.summary_json, batch_id)
