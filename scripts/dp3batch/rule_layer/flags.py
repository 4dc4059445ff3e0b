"""Snakemake's own command-line flags, in terms of this workflow's MSs.

The MS outputs are not Snakemake outputs (the rule layer finds the pending MSs from the
completion records), so Snakemake's forcing and listing flags need translating:
- `-F/--forceall` and `-R/--forcerun process_measurement_sets` reprocess every MS (those
  not pending otherwise with the reason `forced`);
- `--list-changes params|input|code` lists the MS outputs that are pending for that kind of
  change, instead of Snakemake's view of the per-batch bookkeeping files.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dp3batch.books.chunks import CHUNK_WIDTH_CHANGED
from dp3batch.planning.plan import Plan

PROCESS_RULE = "process_measurement_sets"

# Pending reasons (see completion.pending_reason) per `--list-changes` kind.
CHANGE_REASONS = {
    "params": ("steps changed", CHUNK_WIDTH_CHANGED),
    "input": ("input changed", "calibration or sky model file changed"),
    "code": ("DP3 changed",),
}


# Snakemake's flags (their argparse names) with which it reads the workflow and runs no job:
# the workflow plans (their output may show the batch's job) but makes no run directory.
NO_JOB_FLAGS = (
    "unlock",
    "lint",
    "dag",
    "rulegraph",
    "filegraph",
    "d3dag",
    "summary",
    "detailed_summary",
    "list_rules",
    "list_target_rules",
    "cleanup_metadata",
    "containerize",
    "print_compilation",
    "archive",
    "export_cwl",
    "generate_unit_tests",
    "cleanup_shadow",
    "delete_all_output",
    "delete_temp_output",
    "list_conda_envs",
    "conda_cleanup_envs",
    "conda_create_envs_only",
)


@dataclass(frozen=True)
class CommandLineFlags:
    forceall: bool = False
    forcerun: frozenset[str] = field(default_factory=frozenset)
    list_changes: str | None = None
    # `--report FILE`: build the report of the last batch, process nothing.
    report: bool = False
    # `-n`: say what would be processed, process nothing.
    dryrun: bool = False
    # `-d/--directory`: the working directory Snakemake was told to use (None: not given).
    directory: str | None = None
    # `--touch`: Snakemake would mark outputs up to date without running their jobs; here
    # an MS is done only when DP3 made it (see rule_layer.run: refused while MSs are pending).
    touch: bool = False
    # The arguments that say which workflow, directory and config a run used: a command
    # the user copies from our messages must name them again.
    workflow_arguments: tuple[str, ...] = ()
    # `--config KEY=VALUE ...`, as given.
    config_items: tuple[str, ...] = ()
    # A flag with which Snakemake runs no job at all (`--unlock`, `--dag`, `--lint`, ...).
    no_jobs: bool = False

    @property
    def processes_nothing(self) -> bool:
        """A dry run, a report, a list of changes, --touch, or a flag with which Snakemake
        runs no job: nothing will be submitted, and no run's files are made."""
        return (
            self.dryrun
            or self.report
            or self.touch
            or self.no_jobs
            or self.list_changes is not None
        )

    def command(self, *extra: str) -> str:
        """`snakemake --cores 1` with this run's workflow arguments and `extra`."""
        return shlex.join(["snakemake", "--cores", "1", *self.workflow_arguments, *extra])


def command_line_flags(argv: Sequence[str]) -> CommandLineFlags:
    """Snakemake's flags, read from its command line with its own parser.

    Snakemake reads the workflow before it hands the workflow its settings
    (`workflow.dag_settings` is None while the Snakefile is read, in 9.16.3 and 9.27.1), and
    the pending MSs are decided then. A command line Snakemake's parser does not take (the
    workflow read by another program) gives no flags."""
    from snakemake.cli import get_argument_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, _ = get_argument_parser().parse_known_args(list(argv[1:]))
    except (SystemExit, Exception):
        return CommandLineFlags()
    return CommandLineFlags(
        forceall=bool(args.forceall),
        forcerun=frozenset(args.forcerun or ()),
        list_changes=str(args.list_changes) if args.list_changes else None,
        report=bool(getattr(args, "report", None)),
        dryrun=bool(getattr(args, "dryrun", False)),
        directory=str(args.directory) if getattr(args, "directory", None) else None,
        touch=bool(getattr(args, "touch", False)),
        workflow_arguments=_workflow_arguments(args),
        config_items=tuple(str(item) for item in getattr(args, "config", None) or ()),
        no_jobs=any(getattr(args, name, None) for name in NO_JOB_FLAGS),
    )


def _workflow_arguments(args) -> tuple[str, ...]:
    arguments: list[str] = []
    if getattr(args, "snakefile", None):
        arguments += ["-s", str(args.snakefile)]
    if getattr(args, "directory", None):
        arguments += ["--directory", str(args.directory)]
    if getattr(args, "configfile", None):
        arguments += ["--configfile", *(str(path) for path in args.configfile)]
    if getattr(args, "config", None):
        arguments += ["--config", *(str(item) for item in args.config)]
    return tuple(arguments)


def all_forced(forceall: bool, forcerun: Iterable[str], rule: str = PROCESS_RULE) -> bool:
    """Whether Snakemake's flags ask for every MS to be processed again."""
    return bool(forceall) or rule in set(forcerun or ())


def changed_outputs(plan: Plan, kind: str) -> list[str]:
    """The MS outputs pending for one kind of change (params: the steps; input: the input MS
    or a calibration/sky model/strategy file; code: the DP3 version)."""
    reasons = CHANGE_REASONS.get(kind, ())
    return [str(ms.output) for ms, reason in plan.pending if reason in reasons]


# `-d localhost:8786`: the reference pipeline's scheduler option, which Snakemake reads as
# its working directory.
_SCHEDULER_LIKE = re.compile(r"^(tcp://)?([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}$")


def scheduler_taken_for_directory(flags: CommandLineFlags, working_dir: Path) -> str | None:
    """The `HOST:PORT` a user gave as `-d` meaning the dask scheduler (as the reference
    pipeline's `-d` is), when Snakemake made a working directory of that name for it and
    nothing is in it yet but Snakemake's own; else None."""
    if not flags.directory:
        return None
    name = Path(flags.directory).name
    if not _SCHEDULER_LIKE.match(flags.directory.rstrip("/")) or working_dir.name != name:
        return None
    try:
        entries = set(os.listdir(working_dir))
    except OSError:
        return None
    return flags.directory.rstrip("/") if entries <= {".snakemake"} else None
