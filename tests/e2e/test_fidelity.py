"""DP3 as astronomers know it: the workflow's output is what DP3 itself writes for the data
(real snakemake, real DP3, tiny generated MSs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from conftest import make_ms
from dp3batch.dp3.install import dp3_environment, find_dp3_executable, wheel_strategies_directory

DP3 = find_dp3_executable()
STRATEGIES = wheel_strategies_directory(DP3)


def _flags(path: Path) -> np.ndarray:
    with tables.table(str(path), ack=False) as table:
        return table.getcol("FLAG")


def _dp3_by_hand(source: Path, output: Path, *arguments: str) -> np.ndarray:
    """DP3 run by hand, the way an astronomer checks a result; returns the output's flags."""
    completed = subprocess.run(
        [DP3, f"msin={source}", f"msout={output}", *arguments],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    return _flags(output)


def test_aoflagger_uses_the_strategy_aoflagger_picks_for_the_telescope(workflow):
    """No strategy named: a LOFAR MS is flagged with lofar-default.lua, bit for bit as DP3
    does by hand (and not as generic-default.lua would: on this data the two differ); the
    name matches without regard to case, and an unknown telescope gets the generic one."""
    inputs = workflow.directory / "inputs"
    make_ms(inputs / "lofar.ms", seed=1, telescope_name="lofar")
    make_ms(inputs / "other.ms", seed=2, telescope_name="MyDish")
    workflow.config["steps"] = [{"AOFlagger": None}]
    result = workflow.run()
    assert result.returncode == 0, result.output

    lofar = _flags(workflow.output("lofar"))
    strategy = f"aoflagger.strategy={STRATEGIES / 'lofar-default.lua'}"
    by_hand = _dp3_by_hand(
        inputs / "lofar.ms", workflow.directory / "h.ms", "steps=[aoflagger]", strategy
    )
    generic = f"aoflagger.strategy={STRATEGIES / 'generic-default.lua'}"
    with_generic = _dp3_by_hand(
        inputs / "lofar.ms", workflow.directory / "g.ms", "steps=[aoflagger]", generic
    )
    assert np.count_nonzero(with_generic != by_hand) > 0  # else this test could not fail
    assert np.array_equal(lofar, by_hand)

    record = workflow.record("lofar")
    assert record["telescope"] == "lofar"
    assert record["aoflagger_strategies"] == {"aoflagger": str(STRATEGIES / "lofar-default.lua")}
    assert workflow.record("other")["aoflagger_strategies"] == {
        "aoflagger": str(STRATEGIES / "generic-default.lua")
    }
    # The choice is remembered: a rerun has nothing to do.
    again = workflow.run("-n")
    assert "All 2 MS(s)" in again.output, again.output


def _column(path: Path, column: str, subtable: str = "") -> np.ndarray:
    with tables.table(f"{path}::{subtable}" if subtable else str(path), ack=False) as table:
        return table.getcol(column)


def test_the_output_check_follows_the_input_as_dp3_reads_it(workflow):
    """A window of a two-window MS (`msin.band`), with two time slots missing (DP3 fills
    them in), read from CORRECTED_DATA and averaged to a time and frequency resolution: the
    output passes the check, and it is what was asked for."""
    inputs = workflow.directory / "inputs"
    source = make_ms(inputs / "gaps.ms", missing_times=(3, 4), n_windows=2, corrected_data=True)
    workflow.config["steps"] = [
        {"MsIn": {"band": 1, "datacolumn": "CORRECTED_DATA"}},
        {"Averager": {"timeresolution": 4.0, "freqresolution": "400kHz"}},
    ]
    result = workflow.run()
    assert result.returncode == 0, result.output
    output = workflow.output("gaps")
    record = workflow.record("gaps")
    assert record["shape_expected"] == {
        "times": 10,
        "baselines": 15,
        "channels": 8,
        "interval": 4.0,
    }
    assert record["shape_after"]["rows"] == 10 * 15
    window_1 = _column(source, "CHAN_FREQ", "SPECTRAL_WINDOW")[1]
    assert np.allclose(
        _column(output, "CHAN_FREQ", "SPECTRAL_WINDOW")[0], window_1.reshape(8, 2).mean(1)
    )
    # The first output slot averages window 1's CORRECTED_DATA over slots 0-1 and channel
    # pairs (nothing flagged, equal weights).
    rows = _column(source, "DATA_DESC_ID") == 1
    corrected = _column(source, "CORRECTED_DATA")[rows][: 2 * 15].reshape(2, 15, 8, 2, 4)
    expected = corrected.mean(axis=(0, 3))
    assert np.allclose(_column(output, "DATA")[:15], expected, rtol=1e-4, atol=1e-4)


def test_missing_time_slots_pass_the_check_of_the_default_chain(workflow):
    make_ms(workflow.directory / "inputs" / "gaps.ms", missing_times=(3, 4))
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert workflow.record("gaps")["shape_after"]["times"] == 10
    # The summary's AOFlagger percentage is the one DP3 printed in the MS's log.
    log = (workflow.output_dir / "logs" / "gaps.log").read_text()
    printed = log.split("Flags set by AOFlaggerStep aoflagger.")[1].split("Total flagged:")[1]
    percent = float(printed.split("%")[0])
    assert percent > 1.0  # the injected RFI channel alone is 1/16 of the data
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    (row,) = summary["measurement_sets"]
    assert row["flagged_aoflagger_pct"] == percent
    assert row["flagged_preflagger_pct"] == 0.0
    header = (workflow.output_dir / "summary.tsv").read_text().splitlines()[0].split("\t")
    assert {"flagged_aoflagger_pct", "flagged_preflagger_pct"} <= set(header)
    # DP3 counted the inserted slots too: its counts and the input's do not add up, so no
    # figure before averaging is made up; the output's own is there.
    assert row["flagged_total_pct"] is None and row["flagged_output_pct"] > 0
    assert row["flag_statistics"]["station_total_pct"] is None


def test_only_a_run_that_submits_work_opens_every_pending_input(tmp_path):
    # A dry run lists what would run (10,000 pending inputs would take it minutes to open);
    # the run itself opens each pending input before it submits anything.
    from dp3batch.config.errors import ConfigError
    from dp3batch.planning.plan import make_plan

    make_ms(tmp_path / "inputs" / "c.ms", data_column="CORRECTED_DATA")
    config = {"inputs": ["inputs/*.ms"], "steps": [{"Averager": {"timestep": 2}}]}
    dry = make_plan(dict(config), tmp_path, inspect_inputs=False)
    assert [(ms.name, reason) for ms, reason in dry.pending] == [("c", "missing")]
    with pytest.raises(ConfigError, match=r"c\.ms lacks the column\(s\) DATA"):
        make_plan(dict(config), tmp_path)


def test_a_misspelled_dp3_key_is_named_before_anything_runs(workflow):
    make_ms(workflow.directory / "inputs" / "obs.ms")
    workflow.config["steps"] = [{"Averager": {"timestpe": 2}}]
    started = time.monotonic()
    result = workflow.run()
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "Error: steps: DP3 does not know the parameter(s) averager.timestpe" in result.output
    assert not workflow.output_dir.exists() or not list(workflow.output_dir.glob("*.ms"))
    assert not (workflow.output_dir / "logs" / "obs.log").exists()


def test_a_dry_run_has_dp3_check_an_aoflagger_chain_with_the_strategy_of_the_telescope(
    tmp_path, monkeypatch
):
    # The wheel's AOFlagger needs the strategy of the MS's telescope. Checked without it, DP3
    # fails once it has checked the keys: nothing would be remembered, and every dry run
    # would run DP3 again.
    from dp3batch.config.errors import ConfigError
    from dp3batch.dp3 import parameter_check as parset_check
    from dp3batch.planning.plan import make_plan

    monkeypatch.setattr(parset_check, "casarc_directories", lambda: [tmp_path / "cache"])
    make_ms(tmp_path / "inputs" / "obs.ms", n_times=4, n_channels=4)
    config = {
        "inputs": ["inputs/*.ms"],
        "output_dir": "results",
        "steps": [{"AOFlagger": None}, {"Averager": {"timestep": 2}}],
    }
    dry = make_plan(dict(config), tmp_path, inspect_inputs=False)
    assert [reason for _, reason in dry.pending] == ["missing"]
    accepted = json.loads((tmp_path / "cache" / parset_check.ACCEPTED_FILE).read_text())
    assert len(accepted) == 1
    # A misspelled key is still named by a dry run.
    config["steps"] = [{"AOFlagger": None}, {"Averager": {"timestpe": 2}}]
    with pytest.raises(ConfigError, match=r"does not know the parameter\(s\) averager.timestpe"):
        make_plan(dict(config), tmp_path, inspect_inputs=False)


def use_logging_dp3_wrapper(workflow) -> Path:
    """Make the workflow run DP3 through a wrapper that logs each command line; the log."""
    calls = workflow.directory / "dp3-calls.txt"
    wrapper = workflow.directory / "dp3-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {find_dp3_executable()} "$@"\n')
    wrapper.chmod(0o755)
    workflow.config["dp3_executable"] = str(wrapper)
    return calls


def test_a_report_or_a_list_of_changes_runs_no_dp3(workflow):
    # Neither processes anything: the last batch's report must not wait for, or fail on,
    # a check of parameters no batch has run yet.
    make_ms(workflow.directory / "inputs" / "obs.ms", n_times=4, n_channels=4)
    calls = use_logging_dp3_wrapper(workflow)
    workflow.config["steps"] = [{"Averager": {"timestep": 2}}]
    assert workflow.run().returncode == 0
    runs = len(calls.read_text().splitlines())
    workflow.config["steps"] = [{"Averager": {"timestpe": 4}}]
    report = workflow.run("--report", "report.html")
    assert report.returncode == 0, report.output[-3000:]
    assert (workflow.directory / "report.html").is_file()
    assert workflow.run("--list-changes", "params").returncode == 0
    # Only `DP3 --version` (each run asks a wrapper), never a run of the chain.
    assert [line for line in calls.read_text().splitlines()[runs:] if "--version" not in line] == []
    assert "timestpe" in workflow.run("-n").output


def test_dp3_checks_the_keys_only_until_an_output_proves_them(workflow):
    # The check costs a DP3 start on every run; a finished output made with the very same
    # parameters by the same DP3 already proves that DP3 knows every key.
    for index in range(2):
        make_ms(workflow.directory / "inputs" / f"obs_{index}.ms", n_times=4, n_channels=4)
    calls = use_logging_dp3_wrapper(workflow)
    workflow.config["steps"] = [{"Averager": {"timestep": 2}}]

    def checks() -> int:
        return sum("parset-check" in line for line in calls.read_text().splitlines())

    assert workflow.run().returncode == 0
    assert checks() == 1
    shutil.rmtree(workflow.output("obs_1"))
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert checks() == 1
    # Other parameters are not proven by any output: DP3 checks them again.
    workflow.config["steps"] = [{"Averager": {"timestep": 4}}]
    assert workflow.run().returncode == 0
    assert checks() == 2


def test_a_chain_too_long_for_an_argument_list_runs_from_a_parset(workflow):
    make_ms(workflow.directory / "inputs" / "obs.ms", n_times=4, n_channels=4)
    workflow.config["steps"] = [{"PreFlagger": None}] * 1_000  # ~45 KB of arguments
    result = workflow.run(timeout=600)
    assert result.returncode == 0, result.output[-3000:]
    record = workflow.record("obs")
    assert record["dp3_arguments"] == [str(workflow.output_dir / "logs" / "obs.parset")]
    assert record["parameters"][1][0] == "steps"
