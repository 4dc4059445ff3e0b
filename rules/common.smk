import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from dp3batch.interrupts import forward_interrupts_to_batch
from dp3batch.layout import RECORD_NAME, OutputLayout
from dp3batch.parallel import PlanningProcessLost
from dp3batch.quick_exit import end_snakemake_quickly
from dp3batch.status import Status
from dp3batch.report import ReportFiles
from dp3batch.config import ConfigError, validate_config
from dp3batch.demo_data import ensure_demo_data
from dp3batch.dp3_install import DP3Error
from dp3batch.dp3_wrapper import aoflagger_strategy_warning
from dp3batch.completion import refresh_record_checks
from dp3batch.summary import (
    collect_rows,
    records_digest,
    refresh_summary,
    rows_written_since,
    write_summary,
)
from dp3batch.task_result import results_from_json
from dp3batch.snakemake_flags import (
    all_forced,
    changed_outputs,
    command_line_flags,
)
from dp3batch.planning import (
    all_measurement_sets,
    batch_id,
    batch_specification,
    describe_pending,
    make_plan,
)

end_snakemake_quickly()

# -F, -R, --list-changes (the workflow is read before Snakemake hands it its settings).
FLAGS = command_line_flags(sys.argv)


def plan_or_exit():
    """Validate the config and find the pending MSs; a problem ends the run with one message."""
    try:
        # First: one message naming the offending key, before any work.
        validated = validate_config(config)
        ensure_demo_data(config)
        # -F, -R process_measurement_sets: every MS is processed again.
        forced = all_forced(FLAGS.forceall, FLAGS.forcerun)
        plan = make_plan(
            config,
            force=forced,
            validated=validated,
            inspect_inputs=not FLAGS.processes_nothing,
            check_parameters=not (FLAGS.report or FLAGS.list_changes is not None),
        )
    except (ConfigError, DP3Error, PlanningProcessLost) as error:
        sys.exit(f"Error: {error}")
    except KeyboardInterrupt:
        sys.exit("Interrupted while planning: nothing was processed.")
    print(describe_pending(plan), file=sys.stderr)
    warning = aoflagger_strategy_warning(config.get("dp3_executable"), plan.parameters)
    if warning:
        print(f"Warning: {warning}", file=sys.stderr)
    return plan


PLAN = plan_or_exit()
# `snakemake --report` describes the last batch that ran, whatever is pending now.
REPORT_ONLY = FLAGS.report
# `--list-changes KIND`: the MS outputs pending for that kind of change, and no jobs.
LIST_CHANGES = FLAGS.list_changes
for changed in changed_outputs(PLAN, LIST_CHANGES) if LIST_CHANGES else []:
    print(changed)
BATCH_ID = (
    batch_id(PLAN) if PLAN.pending and not REPORT_ONLY and not LIST_CHANGES else None
)


LAYOUT = OutputLayout(PLAN.output_dir)
BATCHES_DIR = LAYOUT.batches_dir


def latest_batch():
    """The batch the report describes: this run's, else the last one that ran."""
    if BATCH_ID:
        return BATCH_ID
    markers = sorted(BATCHES_DIR.glob("*.json"))
    return markers[-1].stem if markers else None


wildcard_constraints:
    # Only this run's batch is made by the central rule; for `--report`, the last batch's
    # files are its outputs (so that the report finds them), and are never remade.
    batch=BATCH_ID or (REPORT_ONLY and latest_batch()) or "no batch to process",


def batch_marker(batch):
    """The central job's output: the result of every MS of one batch (failures included)."""
    return str(LAYOUT.batch_result(batch))


def batch_log(batch, step="process"):
    return str(LAYOUT.batch_log(batch, step))


def forward_interrupts():
    """Ctrl-C, SIGTERM and SIGHUP stop the central job (and its DP3s) before Snakemake ends."""
    if BATCH_ID:
        forward_interrupts_to_batch(LAYOUT.batch_pid(BATCH_ID))


def get_batch_specification(wildcards):
    """Plain JSON (Snakemake pickles `params:`); the central job parses it once."""
    return batch_specification(PLAN, config, wildcards.batch).to_json()


def report_files(batch):
    """The report of one batch (its own directory, so that no two runs share a file)."""
    return ReportFiles(LAYOUT.report_dir(batch)).as_dict()


def get_final_output():
    """This run's batch (checked) and its report; with nothing pending, files that exist
    (the last report, else the completion records), so that Snakemake has nothing to do.
    """
    batch = latest_batch()
    if LIST_CHANGES:
        return []
    if REPORT_ONLY:
        return list(report_files(batch).values()) if batch else []
    if BATCH_ID:
        return [batch_marker(BATCH_ID), *report_files(BATCH_ID).values()]
    if batch:
        # Every record exists (nothing is pending): the last report stands for them, and
        # Snakemake need not check thousands of files.
        return list(report_files(batch).values())
    return [str(ms.output / RECORD_NAME) for ms in PLAN.measurement_sets]


def write_run_summary():
    """After a failed or interrupted run: the status of every MS, from the completion
    records on disk and this run's batch result, if any."""
    marker = Path(batch_marker(BATCH_ID)) if BATCH_ID else None
    results = (
        results_from_json(json.loads(marker.read_text()), str(marker))
        if marker and marker.is_file()
        else []
    )
    batch_names = {ms.name for ms, _ in PLAN.pending} if BATCH_ID else set()
    rows = collect_rows(
        all_measurement_sets(PLAN),
        results,
        LAYOUT.log_dir,
        batch_names,
        PLAN.planned_at,
    )
    problem = write_summary(rows, LAYOUT.summary_json, LAYOUT.summary_tsv)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
    announce(rows)
    return rows


def announce(rows):
    """The run's closing line: how many MSs are complete, and where to look."""
    done = sum(1 for row in rows if Status(row["status"]).complete)
    print(
        f"\n{done} of {len(rows)} MS(s) complete in {PLAN.output_dir}/"
        f" (status of each: {LAYOUT.summary_tsv};"
        f" HTML report: {FLAGS.command('--report', 'report.html')})",
        file=sys.stderr,
    )


def finish_run():
    """`onsuccess`: the run's verdict: non-zero with the failure report (once, last) if any
    MS of the batch was not done. The central job has just written the summary from the
    records; it is built here only if it could not."""
    marker = Path(batch_marker(BATCH_ID)) if BATCH_ID else None
    rows = marker and rows_written_since(LAYOUT.summary_json, marker)
    if rows:
        announce(rows)
    else:
        rows = write_run_summary()
    release_snakemake_timers()
    if not all(Status(row["status"]).complete for row in rows):
        report_failure()
        sys.exit(1)


def release_snakemake_timers():
    """Snakemake re-evaluates its job queue on a `threading.Timer` (1 s) after each
    submission, and the process cannot exit before that timer fires. When the workflow is
    done, nothing is left to evaluate: cancel them, a second off every run."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()


def report_failure():
    """The batch's failure report, printed once, below Snakemake's own messages."""
    failure_report = LAYOUT.failures
    if failure_report.is_file():
        print(f"\n{failure_report.read_text()}", file=sys.stderr)


if not PLAN.pending and not REPORT_ONLY:
    # No job will run, so no `onsuccess` either: the summary is refreshed here, only when
    # the records changed since it was written (so a dry run changes nothing that is true).
    measurement_sets = all_measurement_sets(PLAN)
    digest = records_digest(measurement_sets)
    problem = refresh_summary(
        measurement_sets,
        LAYOUT.log_dir,
        LAYOUT.summary_json,
        LAYOUT.summary_tsv,
        digest,
    )
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
    # What the next rerun checks of each record, kept unless no record changed.
    refresh_record_checks(
        LAYOUT.record_checks, [ms.output for ms in measurement_sets], digest
    )
