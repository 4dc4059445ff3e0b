"""`dp3batch run`: the reference pipeline's command line, running this Snakemake workflow.

Users of SKA's batch pre-processing pipeline run
`ska-sdp-batch-preprocess run -c C -o O [-d HOST:PORT] [--sdm-path S] INPUT...`. The same
line with `dp3batch run` runs this workflow with the matching config: it becomes one
`snakemake` command (shown first), which then replaces this process, so that every
Snakemake guarantee holds (locks, `-n`, reports, signals) and the exit code and messages are
the workflow's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

# The workflow beside this package (an editable install, `make setup`).
SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"

_SCHEDULER_HELP = (
    "Network address of the dask scheduler to use for distribution; format is HOST:PORT. "
    "NOTE: the pipeline expects workers to define a dask resource called 'process' and "
    "each worker to hold exactly 1 of it. Make sure to add '--resources \"process=1\"' to "
    "the command that launches the dask workers. Without it, an embedded local dask "
    "cluster sized to this machine is started."
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dp3batch",
        description="DP3 batch pre-processing (the options of SKA's batch pre-processing "
        "pipeline, run as a Snakemake workflow that resumes: finished MSs are kept)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        description="Run the batch pre-processing pipeline on the input MSs. A rerun "
        "processes only the MSs that are missing, failed, interrupted or out of date.",
        add_help=False,
        epilog="Anything after `--` goes to snakemake as is (e.g. `-- --forceall`).",
    )
    required = run.add_argument_group("required arguments")
    required.add_argument("-c", "--config", required=True, help="YAML configuration file")
    required.add_argument(
        "-o",
        "--output-dir",
        required=True,
        help="Output directory where the pre-processed data will be written (it may hold "
        "the outputs of an earlier run: those up to date are kept)",
    )
    required.add_argument("input_ms", nargs="+", help="Input measurement set(s)")
    optional = run.add_argument_group("optional arguments")
    optional.add_argument("-d", "--dask-scheduler", help=_SCHEDULER_HELP)
    optional.add_argument(
        "--sdm-path",
        help="SDM directory: ApplyCal `table: {kind: sdm, field_id: F, purpose: P}` reads "
        "<SDM>/calibration/<P>/<F>/gaintable.h5parm, and the run's log, config, task list, "
        "dask report and QA go to a new <SDM>/logs/NN-dp3batch/",
    )
    optional.add_argument(
        "-e",
        "--extra-inputs-dir",
        help="Directory that relative file paths in the config (solution tables, sky "
        "models, strategies) are resolved against (the option of the 2.x releases)",
    )
    optional.add_argument(
        "--frequency-chunk-hz",
        type=_positive_hz,
        metavar="W",
        help="Split the processing of each input MeasurementSet (each spectral window) into "
        "independent frequency chunks with a maximum width (in Hz), whole averaged channels "
        "each: one DP3 task per chunk, then a checked join into NAME.ms. A rerun redoes only "
        "the chunks not done (config key frequency_chunk_hz)",
    )
    optional.add_argument(
        "--flagging-report",
        choices=("always", "auto", "never"),
        default="always",
        help="Which outputs get a flagging report (qa/NAME_flagging_report.zarr and .png): "
        "every one, as the reference pipeline (default); `auto`: those whose DP3 run took "
        "at least 20 s and the suspect ones (a report costs about 0.7 s of CPU, most of a "
        "small MS's task); `never`. The flag statistics of every MS are kept either way",
    )
    optional.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="List the MSs that would be processed, and why; process nothing",
    )
    optional.add_argument("-h", "--help", action="help", help="show this help message and exit")
    return parser


def _positive_hz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a width in Hz above 0 (e.g. 2e6), not {text!r}")
    return value


def snakemake_command(arguments: argparse.Namespace, passed_on: Sequence[str]) -> list[str]:
    """The `snakemake` command line that runs these options (paths made absolute: the inputs
    as given, patterns included)."""
    overrides: dict[str, object] = {
        "inputs": [str(Path(path).expanduser().absolute()) for path in arguments.input_ms],
        "output_dir": str(Path(arguments.output_dir).expanduser().absolute()),
    }
    # Snakemake merges a mapping given with --config into the config file's, key by key.
    overrides["qa"] = {"flagging_report": arguments.flagging_report}
    if arguments.dask_scheduler:
        overrides["scheduler"] = arguments.dask_scheduler
    if arguments.sdm_path:
        overrides["sdm_path"] = str(Path(arguments.sdm_path).expanduser().absolute())
    if arguments.extra_inputs_dir:
        overrides["extra_inputs_dir"] = str(
            Path(arguments.extra_inputs_dir).expanduser().absolute()
        )
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(SNAKEFILE),
        "--cores",
        "1",
        "--configfile",
        str(Path(arguments.config).expanduser().absolute()),
        "--config",
        # JSON is YAML, which Snakemake reads each value as: any path survives as it is.
        *(f"{key}={json.dumps(value)}" for key, value in overrides.items()),
    ]
    if arguments.frequency_chunk_hz is not None:
        # After the user's --configfile: the option wins over the file's key.
        command.append(f"frequency_chunk_hz={arguments.frequency_chunk_hz!r}")
    if arguments.dry_run:
        command.append("-n")
    return command + list(passed_on)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed_on: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, passed_on = argv[:index], argv[index + 1 :]
    arguments = make_parser().parse_args(argv)
    if not SNAKEFILE.is_file():
        sys.exit(
            f"dp3batch: the workflow's Snakefile is not at {SNAKEFILE}; install this "
            "package from its checkout (`make setup`, or `pip install -e .` there)"
        )
    if not Path(arguments.config).is_file():
        sys.exit(f"dp3batch: -c/--config {arguments.config} is not a file")
    command = snakemake_command(arguments, passed_on)
    print(f"dp3batch: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
