"""Unit tests of Snakemake's flags in terms of MSs: forcing, and `--list-changes`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_ms
from dp3batch.books.records import Expectation
from dp3batch.config.steps import Chain
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.inputs.discovery import WorkItem
from dp3batch.planning.plan import Plan
from dp3batch.rule_layer.flags import (
    CommandLineFlags,
    all_forced,
    changed_outputs,
    command_line_flags,
)

SNAKEMAKE = "/venv/bin/snakemake"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--cores", "1"], CommandLineFlags()),
        (["--cores", "1", "-F"], CommandLineFlags(forceall=True)),
        (["--forceall", "--cores", "1"], CommandLineFlags(forceall=True)),
        (["-nF", "--cores", "1"], CommandLineFlags(forceall=True, dryrun=True)),
        (
            ["--cores", "1", "-R", "process_measurement_sets"],
            CommandLineFlags(forcerun=frozenset({"process_measurement_sets"})),
        ),
        (
            ["--forcerun", "make_report", "process_measurement_sets", "--cores", "1"],
            CommandLineFlags(forcerun=frozenset({"make_report", "process_measurement_sets"})),
        ),
        (["--cores", "1", "-R"], CommandLineFlags()),
        (["--lc", "params"], CommandLineFlags(list_changes="params")),
        (["--list-changes", "input", "-n"], CommandLineFlags(list_changes="input", dryrun=True)),
        (["--cores", "1", "--dry-run"], CommandLineFlags(dryrun=True)),
        (["--list-changes=code"], CommandLineFlags(list_changes="code")),
    ],
)
def test_flags_are_read_with_snakemakes_own_parser(arguments, expected):
    assert command_line_flags([SNAKEMAKE, *arguments]) == expected


@pytest.mark.parametrize(
    "arguments",
    [["--unlock"], ["--dag"], ["--rulegraph"], ["--lint"], ["--summary"], ["-l"]],
)
def test_a_flag_with_which_snakemake_runs_no_job_processes_nothing(arguments):
    """`--unlock`, `--dag`, …: the workflow plans, but makes no run's directory."""
    flags = command_line_flags([SNAKEMAKE, "--cores", "1", *arguments])
    assert flags.no_jobs and flags.processes_nothing
    assert not command_line_flags([SNAKEMAKE, "--cores", "1"]).processes_nothing


@pytest.mark.parametrize(
    "argv",
    [["pytest", "-x", "tests/"], [SNAKEMAKE, "--lc", "nonsense"], [SNAKEMAKE, "--cores"]],
)
def test_a_command_line_snakemake_does_not_take_gives_no_flags(argv, capsys):
    assert command_line_flags(argv) == CommandLineFlags()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("forceall", "forcerun", "expected"),
    [
        (False, set(), False),
        (True, set(), True),
        (False, {"process_measurement_sets"}, True),
        (False, {"make_report", "check_batch", "all"}, False),
        (False, None, False),
    ],
)
def test_all_forced(forceall, forcerun, expected):
    assert all_forced(forceall, forcerun) is expected


def plan_of(directory: Path, pending: dict[str, str], names=("a", "b", "c")) -> Plan:
    sets = [
        WorkItem(name, make_ms(directory / "in" / f"{name}.ms"), directory / f"{name}.ms")
        for name in names
    ]
    return Plan(
        scheduler=None,
        chain=Chain({}, {}, ()),
        output_dir=directory,
        dp3_executable="DP3.py",
        dp3_version="6.6.0",
        parameters=DP3Parameters({}, {}, ()),
        expectation=Expectation("p", "e", "6.6.0"),
        measurement_sets=sets,
        pending=[(ms, pending[ms.name]) for ms in sets if ms.name in pending],
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("params", ["a"]), ("input", ["b", "c"]), ("code", ["d"]), ("nonsense", [])],
)
def test_list_changes_names_the_outputs_pending_for_that_kind(tmp_path, kind, expected):
    reasons = {
        "a": "steps changed",
        "b": "input changed",
        "c": "calibration or sky model file changed",
        "d": "DP3 changed",
        "e": "missing",
    }
    plan = plan_of(tmp_path, reasons, names=tuple(reasons))
    assert changed_outputs(plan, kind) == [str(tmp_path / f"{name}.ms") for name in expected]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["snakemake", "--cores", "1", "--report", "report.html"], True),
        (["snakemake", "--cores", "1", "--report=report.html"], True),
        (["snakemake", "--cores", "1", "-n"], False),
    ],
)
def test_report_mode_is_read_with_snakemakes_own_parser(argv, expected):
    assert command_line_flags(argv).report is expected


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--cores", "1"], False),
        (["--cores", "1", "-F"], False),
        (["--cores", "1", "-n"], True),
        (["--cores", "1", "--report", "r.html"], True),
        (["--lc", "params"], True),
    ],
)
def test_only_a_run_that_can_submit_work_inspects_every_input(arguments, expected):
    assert command_line_flags([SNAKEMAKE, *arguments]).processes_nothing is expected


def test_the_report_command_repeats_the_runs_workflow_arguments():
    flags = command_line_flags(
        ["snakemake", "--cores", "1", "-s", "/w/Snakefile", "--configfile", "my.yaml", "-n"]
        + ["--config", "output_dir=out dir", "scheduler=host:8786"]
    )
    assert flags.command("--report", "report.html") == (
        "snakemake --cores 1 -s /w/Snakefile --configfile my.yaml "
        "--config 'output_dir=out dir' scheduler=host:8786 --report report.html"
    )
    assert command_line_flags(["snakemake", "--cores", "1"]).command("--report", "r.html") == (
        "snakemake --cores 1 --report r.html"
    )
