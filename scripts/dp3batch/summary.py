"""The run summary: one row per MS (`summary.tsv`, `summary.json`), built from the completion
records on disk and the results of the batch that ran (which also carry the failures)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dp3batch.batch_spec import MSPaths
from dp3batch.completion import RECORD_NAME, CompletionRecord, ms_log_file, read_record
from dp3batch.record_checks import without_collections
from dp3batch.status import Status
from dp3batch.task_result import TaskResult

DONE = Status.DONE
UP_TO_DATE = Status.UP_TO_DATE
FAILED = Status.FAILED
NOT_PROCESSED = Status.NOT_PROCESSED

COLUMNS = [
    "name",
    "status",
    "duration_seconds",
    "size_estimate_bytes",
    "worker",
    "numthreads",
    "dp3_version",
    "rows_before",
    "rows_after",
    "channels_before",
    "channels_after",
    "time_resolution_before",
    "time_resolution_after",
    "freq_resolution_before",
    "freq_resolution_after",
    "flagged_before",
    "flagged_after",
    "output_bytes",
    "finished",
    "log",
    "error",
    "input",
    "output",
]


def _row_from(
    ms: MSPaths, status: Status, log: str, source: CompletionRecord | TaskResult | None
) -> dict[str, Any]:
    """The summary row of one MS: what its record (or its result) says of the run."""
    before = (source.shape_before if source else None) or {}
    after = (source.shape_after if source else None) or {}
    flags_by_step = (source.flags_by_step if source else None) or {}
    return {
        "name": ms.name,
        "status": status,
        "duration_seconds": source.duration_seconds if source else None,
        # What the dispatch took for the size of the job (largest first), beside it.
        "size_estimate_bytes": source.size_estimate_bytes if source else None,
        "worker": source.worker if source else None,
        "numthreads": source.numthreads if source else None,
        "dp3_version": source.dp3_version if source else None,
        "rows_before": before.get("rows"),
        "rows_after": after.get("rows"),
        "channels_before": before.get("channels"),
        "channels_after": after.get("channels"),
        "time_resolution_before": before.get("interval"),
        "time_resolution_after": after.get("interval"),
        "freq_resolution_before": before.get("channel_width"),
        "freq_resolution_after": after.get("channel_width"),
        "flagged_before": before.get("flagged_fraction"),
        "flagged_after": after.get("flagged_fraction"),
        "output_bytes": source.output_bytes if source else None,
        "finished": source.finished if source else None,
        "log": log,
        "error": source.error if isinstance(source, TaskResult) and status == FAILED else None,
        # As the record says (the path it was made from), else as the workflow knows it.
        "input": source.input if source else ms.input,
        "output": source.output if source else ms.output,
        "step_seconds": dict((source.step_seconds if source else None) or {}),
        # For the report's RFI spectrum and per-station plots (JSON only).
        "flags_by_step": dict(flags_by_step),
        "stations": list((source.stations if source else None) or []),
        # Per flagging step, DP3's own percentage; `flagged_after` is read from the averaged
        # output, where a sample is flagged only if all its inputs were.
        **{f"flagged_{step}": count.get("percent") for step, count in flags_by_step.items()},
    }


def collect_rows(
    measurement_sets: Sequence[MSPaths],
    batch_results: Sequence[TaskResult] | None,
    log_dir: str | Path,
    batch_names: set[str] | None = None,
    batch_started: str = "",
) -> list[dict[str, Any]]:
    """One row per MS, built from the completion records on disk, so that it is true after
    any fault: an MS of this run's batch (`batch_names`) whose record was finished after
    `batch_started` is done, even if its result was lost with the scheduler or an interrupt;
    a failed result without such a record is failed.

    `measurement_sets` are every MS of the workflow."""
    in_batch = {result.name: result for result in batch_results or []}
    batch_names = set(batch_names or ()) | set(in_batch)
    rows = []
    for ms in measurement_sets:
        result = in_batch.get(ms.name)
        log = ms_log_file(log_dir, ms.name)
        record = read_record(Path(ms.output))
        made_now = record is not None and record.finished >= batch_started
        if record is not None and ms.name in batch_names and made_now:
            rows.append(_row_from(ms, DONE, log, record))
        elif result is not None and result.status in (FAILED, NOT_PROCESSED):
            rows.append(_row_from(ms, result.status, result.log, result))
        elif record is not None and ms.name not in batch_names:
            rows.append(_row_from(ms, UP_TO_DATE, log, record))
        else:
            rows.append(_row_from(ms, NOT_PROCESSED, log, None))
    return rows


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _tsv_cell(value: Any) -> str:
    """One line per MS: line breaks and tabs in a value (DP3's error lines) become spaces."""
    return "" if value is None else " ".join(str(value).split())


def write_summary(
    rows: list[dict[str, Any]], json_path: str | Path, tsv_path: str | Path
) -> str | None:
    """The machine-readable summary: JSON (with per-step times) and TSV (one line per MS).

    Returns a problem (e.g. a full disk) instead of raising: the run's own outcome matters
    more than its summary, and no half-written file is left behind."""
    json_path, tsv_path = Path(json_path), Path(tsv_path)
    # Only refresh_summary vouches for a summary with its digest: any other write drops it.
    with contextlib.suppress(OSError):
        _digest_path(json_path).unlink()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    temporaries = (json_path.with_suffix(".json.tmp"), tsv_path.with_suffix(".tsv.tmp"))
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        table = io.StringIO()
        step_columns = sorted({key for row in rows for key in row if key.startswith("flagged_")})
        columns = COLUMNS + [key for key in step_columns if key not in COLUMNS]
        writer = csv.DictWriter(
            table,
            fieldnames=columns,
            delimiter="\t",
            extrasaction="ignore",
            lineterminator="\n",
            quoting=csv.QUOTE_NONE,
            escapechar="\\",
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _tsv_cell(row.get(key)) for key in columns})
        contents = {
            json_path: json.dumps({"counts": counts, "measurement_sets": rows}, indent=2),
            tsv_path: table.getvalue(),
        }
        for (path, text), temporary in zip(contents.items(), temporaries, strict=True):
            if _read_text(path) != text:  # unchanged files are left alone (no-op reruns)
                temporary.write_text(text)
                temporary.replace(path)
    except OSError as error:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return f"could not write the summary {tsv_path}: {error.strerror or error}"
    return None


def rows_written_since(json_path: Path, since: Path) -> list[dict[str, Any]] | None:
    """The rows of a summary written after `since` was (the batch's result: the central job
    writes the summary from the records right after it), else None."""
    try:
        if json_path.stat().st_mtime_ns < since.stat().st_mtime_ns:
            return None
        rows = json.loads(json_path.read_text())["measurement_sets"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rows if isinstance(rows, list) else None


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


def refresh_summary(
    measurement_sets: Sequence[MSPaths],
    log_dir: Path,
    json_path: Path,
    tsv_path: Path,
    digest: str | None = None,
) -> str | None:
    """The summary of a run with nothing to do, rebuilt only when the records changed since
    it was last written (a digest beside it says which records it was built from).
    `digest`: `records_digest(measurement_sets)`, if the caller has it already."""
    digest_path = _digest_path(json_path)
    digest = digest or records_digest(measurement_sets)
    if _read_text(digest_path) == digest and json_path.is_file() and tsv_path.is_file():
        return None
    with without_collections():  # every record parsed: see record_checks
        problem = write_summary(collect_rows(measurement_sets, [], log_dir), json_path, tsv_path)
    if problem is None:
        with contextlib.suppress(OSError):
            digest_path.write_text(digest)
    return problem
