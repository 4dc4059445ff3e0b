"""One `snakemake` run of the workflow as its rules see it: built once, when the Snakefile is
read, from Snakemake's config and command line; the rules and hooks only ask it.

It plans (which MSs are pending, and why), names this run's batch, answers the rules
(`final_output`, `batch_specification`, the report files), and at the end gives the run's
verdict: the summary of every MS and, if any MS of the batch is not done, the failure
report and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from dp3batch.books.batch_spec import BatchSpec, task_entries
from dp3batch.books.codec import write_contract, write_json_object
from dp3batch.books.layout import (
    RECORD_NAME,
    OutputLayout,
    RunFiles,
    make_run_directory,
    output_dir_problem,
    why_unwritable,
)
from dp3batch.books.task_result import TaskResult, results_from_json
from dp3batch.config.errors import ConfigError
from dp3batch.config.repeated_keys import refuse_repeated_keys
from dp3batch.config.validation import validate_config
from dp3batch.dask_stage.interrupts import forward_interrupts_to_batch
from dp3batch.dask_stage.memory import memory_limit
from dp3batch.dp3.install import (
    DP3Error,
    casarc_directories,
    ensure_home,
    writable_directory,
)
from dp3batch.dp3.parset import shown
from dp3batch.dp3.wrapper import aoflagger_strategy_warning
from dp3batch.inputs.demo_data import ensure_demo_data
from dp3batch.planning.parallel import PlanningProcessLost
from dp3batch.planning.plan import (
    Plan,
    all_measurement_sets,
    batch_id,
    batch_specification,
    describe_pending,
    make_plan,
    output_dir_path,
    qa_limits,
)
from dp3batch.remembered import RememberedKeys
from dp3batch.report.batch_report import ReportFiles
from dp3batch.report.summary import Summary, Verdict, records_digest
from dp3batch.rule_layer.flags import (
    CommandLineFlags,
    all_forced,
    changed_outputs,
    command_line_flags,
    scheduler_taken_for_directory,
)

# What the batch wildcard matches when this run has no batch to make.
NO_BATCH = "no batch to process"
# The configs that passed the schema check (newest last, this many): see configs_passed.
CONFIGS_PASSED_FILE = "config-schema-passed.json"
CONFIGS_PASSED_KEPT = 50


def _say(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass
class Run:
    """This run: its config, Snakemake's flags, the plan, and the batch it makes (if any)."""

    config: dict[str, Any]
    flags: CommandLineFlags
    plan: Plan
    layout: OutputLayout
    # This run's batch: set when MSs are pending and the run processes them.
    batch: str | None = None
    # Where this run keeps its log, config, task list, dask report and QA (not for a dry
    # run, a report or a list of changes).
    run_files: RunFiles | None = None

    @classmethod
    def start(
        cls, config: dict[str, Any], argv: list[str], configfiles: Sequence[Path] = ()
    ) -> Run:
        """Validate the config (`configfiles`: the files it was read from) and plan; a
        problem ends the run here with one message."""
        ensure_home()
        flags = command_line_flags(argv)
        _refuse_scheduler_as_directory(flags)
        _refuse_unwritable_working_directory()
        plan = _plan_or_exit(config, flags, configfiles)
        if flags.touch and plan.pending:
            _say(describe_pending(plan))
            _exit(touch_refusal(plan, flags))
        run = cls(config, flags, plan, OutputLayout(plan.output_dir))
        if plan.pending and not flags.report and flags.list_changes is None:
            run.batch = batch_id()
        if not flags.processes_nothing:
            run.run_files = run._make_run_files()
        run._say(describe_pending(plan))
        warning = aoflagger_strategy_warning(config.get("dp3_executable"), plan.parameters)
        if warning:
            run._say(f"Warning: {warning}")
        if flags.list_changes is not None:
            # `--list-changes KIND`: the MS outputs pending for that kind of change, no jobs.
            for changed in changed_outputs(plan, flags.list_changes):
                print(changed)
        # Nothing can be refreshed in a read-only output_dir (a dry run was warned).
        if not plan.pending and not flags.report and not output_dir_problem(plan.output_dir):
            run._refresh_books()
        return run

    # --- what the rules ask ---------------------------------------------------------

    @property
    def summary(self) -> Summary:
        return Summary(
            self.layout, all_measurement_sets(self.plan), self.plan.store, qa_limits(self.config)
        )

    def described_batch(self) -> str | None:
        """The batch the report describes: this run's, else the last one that ran."""
        if self.batch:
            return self.batch
        markers = sorted(self.layout.batches_dir.glob("*.json"))
        return markers[-1].stem if markers else None

    @property
    def batch_pattern(self) -> str:
        """What `{batch}` may be: this run's batch; for `--report`, the last batch's files are
        the central rule's outputs (so that the report finds them), never remade."""
        if self.batch:
            return self.batch
        return (self.flags.report and self.described_batch()) or NO_BATCH

    def batch_marker(self, batch: str) -> str:
        """The central job's output: the result of every MS of one batch (failures too)."""
        return str(self.layout.batch_result(batch))

    def batch_log(self, batch: str) -> str:
        return str(self.layout.batch_log(batch))

    def report_files(self, batch: str) -> dict[str, str]:
        """The report of one batch (a directory of its own: no two runs share a file)."""
        return ReportFiles(self.layout.report_dir(batch)).as_dict()

    def batch_specification_file(self, batch: str) -> list[str]:
        """The central job's input: where this run wrote the batch's specification (none
        for a run that processes nothing, a dry run among them: it runs no job)."""
        if self.run_files is None or batch != self.batch:
            return []
        return [str(self.run_files.batch_specification)]

    def _specification(self, batch: str, run_files: RunFiles | None = None) -> BatchSpec:
        run_files = run_files or self.run_files
        run_dir = str(run_files.directory) if run_files else None
        return batch_specification(self.plan, self.config, batch, run_dir)

    def final_output(self) -> list[str]:
        """This run's batch (checked) and its report; with nothing to process, files that
        exist (the last report, else the completion records), so Snakemake has nothing to do."""
        if self.flags.list_changes is not None:
            return []
        batch = self.described_batch()
        if self.flags.report:
            return self._earlier_report(batch) if batch else []
        if self.batch:
            return [self.batch_marker(self.batch), *self.report_files(self.batch).values()]
        if batch:
            # Every record exists (nothing is pending): the last report stands for them, and
            # Snakemake need not check thousands of files.
            return self._earlier_report(batch)
        return [str(ms.output / RECORD_NAME) for ms in self.plan.measurement_sets]

    def _earlier_report(self, batch: str) -> list[str]:
        """The files of a batch that ran before. A batch of a version before issue 27 has no
        `flagging/` directory of flagging plots: an empty one stands for it (no rule could
        make it, and Snakemake would refuse the run or the report)."""
        files = ReportFiles(self.layout.report_dir(batch))
        if files.directory.is_dir():
            files.flagging.mkdir(exist_ok=True)
        return list(files.as_dict().values())

    # --- the hooks ------------------------------------------------------------------

    def on_start(self) -> None:
        """Ctrl-C, SIGTERM and SIGHUP stop the central job (and its DP3s) first."""
        if self.batch:
            forward_interrupts_to_batch(self.layout.batch_pid(self.batch))

    def on_success(self) -> None:
        """The central job has written the summary from the records (rebuilt here only if it
        could not); the run fails, with the failure report last, unless every MS is done."""
        verdict = self.summary.verdict_of_batch(self.batch) if self.batch else None
        if verdict is not None and verdict.total:
            self._announce(verdict)
        else:
            verdict = self._write_summary()
        _release_snakemake_timers()
        if verdict.complete < verdict.total:
            self._report_failure()
            sys.exit(1)

    def on_error(self) -> None:
        """A failed or interrupted run: the status of every MS, then the failure report."""
        self._write_summary()
        _release_snakemake_timers()
        self._report_failure()
        killed = self._central_job_killed()
        if killed:
            self._say(f"\nError: {killed}")

    # --- the verdict ----------------------------------------------------------------

    def _batch_results(self) -> list[TaskResult]:
        marker = Path(self.batch_marker(self.batch)) if self.batch else None
        if marker is None or not marker.is_file():
            return []
        return results_from_json(json.loads(marker.read_text()), str(marker))

    def _write_summary(self) -> Verdict:
        """From the completion records on disk and this run's batch result, if any."""
        names = {ms.name for ms, _ in self.plan.pending} if self.batch else set()
        rows, problem = self.summary.write(self._batch_results(), names, self.batch)
        if problem:
            self._say(f"Error: {problem}")
        verdict = Verdict.of(rows)
        self._announce(verdict)
        return verdict

    def _announce(self, verdict: Verdict) -> None:
        """The run's closing line: how many MSs are complete, and where to look."""
        done = verdict.complete
        self._say(
            f"\n{done} of {verdict.total} MS(s) complete in {self.plan.output_dir}/"
            f" (status of each: {self.layout.summary_tsv};"
            f" HTML report: {self.flags.command('--report', 'report.html')})"
        )
        suspect = verdict.suspect
        if suspect:
            # A suspect MS is still data: said last, and the exit code does not change.
            reports = self.layout.qa_dir
            _say(f"QA: {len(suspect)} of {done} MS(s) suspect (flagging reports: {reports}/):")
            for entry in suspect:
                _say(f"  {entry['name']}: {entry['reason']}")

    def _central_job_killed(self) -> str | None:
        """The central job ended without a word (its pid file is left: no `finally` ran),
        as a process does that SIGKILL ends: say what that means here."""
        if not self.batch:
            return None
        pid_file = self.layout.batch_pid(self.batch)
        try:
            pid = int(pid_file.read_text())
            pid_file.unlink()
        except (OSError, ValueError):
            return None
        embedded = "" if self.plan.scheduler else " (and with it the embedded dask workers)"
        return (
            f"the central job (pid {pid}){embedded} was killed before it finished its batch; "
            "every DP3 it started ended with it. Killed by SIGKILL (Snakemake says so above), "
            f"it was possibly out of memory: the memory limit here is {memory_limit().describe()}"
            ". The MSs it finished are kept: give the run more memory, or fewer workers "
            "(local_cluster), and run again"
        )

    def _report_failure(self) -> None:
        """The batch's failure report, printed once, below Snakemake's own messages."""
        if self.layout.failures.is_file():
            self._say(f"\n{self.layout.failures.read_text()}")

    def _refresh_books(self) -> None:
        """No job will run, so no `onsuccess` either: the summary is refreshed here, only
        when the records changed since it was written (a dry run changes nothing true), and
        so is what the next rerun checks of each record."""
        summary = self.summary
        digest = records_digest(summary.measurement_sets)
        problem = summary.refresh(digest)
        if problem:
            self._say(f"Error: {problem}")
        self.plan.store.keep_checks(
            self.layout.record_checks, [ms.output for ms in summary.measurement_sets], digest
        )

    # --- this run's own files ----------------------------------------------------------

    def _make_run_files(self) -> RunFiles:
        """A new `NN-dp3batch/` for this run (in the SDM's `logs/` when one is given), with
        the config as run and the task list, before anything runs: an interrupted or
        failed run leaves them too."""
        sdm_path = self.config.get("sdm_path")
        parent = Path(sdm_path).absolute() / "logs" if sdm_path else self.layout.runs_dir
        try:
            files = RunFiles(make_run_directory(parent))
            files.config.write_text(
                f"# The config of this run, as run (every default filled in); batch "
                f"{self.batch or 'none: nothing to process'}.\n"
                + yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)
            )
            specification = self._specification(self.batch, files) if self.batch else None
            # Both written as they are made: at 10,000 MSs their whole JSON weighs tens of MB.
            with open(files.task_list, "w", encoding="utf-8") as handle:
                tasks = task_entries(specification) if specification else iter(())
                write_json_object(handle, (("batch", self.batch), ("tasks", tasks)))
            if specification:
                # For the central job: a file, not `params:` (see central_job_shell).
                with open(files.batch_specification, "w", encoding="utf-8") as handle:
                    write_contract(handle, specification)
        except OSError as error:
            _exit(
                f"Error: cannot write this run's files in {parent}: "
                f"{error.strerror or error}; make it writable or choose another "
                f"{'sdm_path' if sdm_path else 'output_dir'}"
            )
        return files

    def _say(self, text: str) -> None:
        """To the terminal, and into this run's log."""
        _say(text)
        if self.run_files is not None:
            with contextlib.suppress(OSError):  # a full disk must not end the run here
                with open(self.run_files.log, "a") as log:
                    log.write(text + "\n")


def _refuse_scheduler_as_directory(flags: CommandLineFlags) -> None:
    """`snakemake ... -d localhost:8786`: the reference pipeline's scheduler option, which
    Snakemake took for its working directory (and made): stop before anything runs."""
    address = scheduler_taken_for_directory(flags, Path.cwd())
    if address:
        _exit(
            f"Error: -d is Snakemake's --directory; to use the dask scheduler at {address}, "
            f"run with --config scheduler={address} (or dp3batch run -d {address} ...). "
            f"Snakemake made the directory {Path.cwd()} for it: remove it."
        )


def _refuse_unwritable_working_directory() -> None:
    """Snakemake keeps its state (`.snakemake/`: logs, locks, metadata) in its working
    directory; in a read-only one (an archive's data directory, say) it ends with a traceback
    after the workflow has planned: stop before anything runs, saying where to run."""
    state = Path.cwd() / ".snakemake"
    unwritable = why_unwritable(state if state.is_dir() else Path.cwd())
    if unwritable:
        _exit(
            f"Error: Snakemake's working directory {shown(str(Path.cwd()))} (its state is kept "
            f"in .snakemake/ there) {unwritable}: run from a writable directory (cd to one "
            "first), with inputs and output_dir as absolute paths or relative to it"
        )


def configs_passed() -> RememberedKeys:
    """The configs that passed the schema check before (beside the casarc, as DP3's own
    checks: see dp3.parameter_check)."""
    return RememberedKeys(
        writable_directory(casarc_directories()) / CONFIGS_PASSED_FILE, CONFIGS_PASSED_KEPT
    )


def _plan_or_exit(
    config: dict[str, Any], flags: CommandLineFlags, configfiles: Sequence[Path]
) -> Plan:
    try:
        # First: one message naming the offending key, before any work.
        refuse_repeated_keys(configfiles, flags.config_items)
        validated = validate_config(config, configs_passed())
        writable_or_exit(config, flags)
        ensure_demo_data(config)
        return make_plan(
            config,
            # -F, -R process_measurement_sets: every MS is processed again.
            force=all_forced(flags.forceall, flags.forcerun),
            validated=validated,
            inspect_inputs=not flags.processes_nothing,
            check_parameters=not (flags.report or flags.list_changes is not None),
        )
    except (ConfigError, DP3Error, PlanningProcessLost) as error:
        _exit(f"Error: {error}")
    except KeyboardInterrupt:
        _exit("Interrupted while planning: nothing was processed.")


def touch_refusal(plan: Plan, flags: CommandLineFlags) -> str:
    """`--touch` marks Snakemake's outputs up to date without running their jobs. The MS
    outputs are not Snakemake's (see docs/design.md), and an MS counts as done only when DP3
    made it and its completion record says so: nothing here can be marked done by hand."""
    return (
        f"Error: --touch cannot mark MSs as processed: {len(plan.pending)} MS(s) are pending "
        "(listed above), and an output counts as done only when DP3 made it and its "
        "completion record says so. Nothing was changed. Run without --touch to process "
        f"them ({flags.command()}); -n lists them"
    )


def writable_or_exit(config: dict[str, Any], flags: CommandLineFlags) -> None:
    """A run writes into output_dir: one that cannot is refused before anything runs. A dry
    run, a report or a list of changes writes nothing there, and is only warned."""
    problem = output_dir_problem(output_dir_path(config, Path.cwd()))
    if problem and not flags.processes_nothing:
        raise ConfigError(problem)
    if problem:
        _say(f"Warning: {problem}")


def _exit(message: str) -> NoReturn:
    sys.exit(message)


def _release_snakemake_timers() -> None:
    """Snakemake re-evaluates its job queue on a `threading.Timer` (1 s) after each
    submission, and the process cannot exit before that timer fires. When the workflow is
    done, nothing is left to evaluate: cancel them, a second off every run."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
