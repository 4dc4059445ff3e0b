"""Flag accounting end to end (issue 27): real DP3 on generated MSs of 16, 62 and 64 stations,
each with one station made bad on purpose (80 % of its input visibilities already flagged)
and strong narrow-band RFI in one channel. The terminal, the summary, the completion record,
the zarr dataset and the QA verdict must all name that station and that channel; the per-step
and per-station counts must agree with the FLAG columns."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from casacore import tables
from conftest import REPO, Workflow, make_ms

STATIONS = (16, 62, 64)
RFI_CHANNEL = 11
QA = {
    "max_flagged_fraction": 0.5,
    "max_station_flagged_fraction": 0.5,
    "max_channel_flagged_fraction": 0.9,
}


def bad_station(stations: int) -> int:
    """In the last block of DP3's per-antenna table (15 antennas a block), not the last."""
    return stations - 2


def station_name(index: int) -> str:
    return f"CS{index + 1:03d}HBA0"  # the generator's naming


def make_bad_inputs(directory: Path) -> dict[str, Path]:
    return {
        f"obs_{stations}": make_ms(
            directory / f"obs_{stations}.ms",
            seed=stations,
            n_antennas=stations,
            n_times=20,
            n_channels=16,
            rfi_channels=(RFI_CHANNEL,),
            bad_station=bad_station(stations),
        )
        for stations in STATIONS
    }


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory):
    """The default chain (PreFlagger, AOFlagger, Averager 2x2) with QA limits."""
    workflow = Workflow(tmp_path_factory.mktemp("flagging"))
    inputs = make_bad_inputs(workflow.directory / "inputs")
    workflow.config["qa"] = QA
    result = workflow.run()
    return workflow, inputs, result


def per_station_flagged_pct(ms: Path, stations: int) -> np.ndarray:
    """Independently of the workflow: per station, the percentage of correlation samples
    flagged on its baselines, from the FLAG column."""
    with tables.table(str(ms), ack=False) as table:
        flags = table.getcol("FLAG")
        antenna1, antenna2 = table.getcol("ANTENNA1"), table.getcol("ANTENNA2")
    per_row = flags.sum(axis=(1, 2))
    flagged = np.bincount(antenna1, per_row, stations) + np.bincount(antenna2, per_row, stations)
    rows = np.bincount(antenna1, minlength=stations) + np.bincount(antenna2, minlength=stations)
    return 100 * flagged / (rows * flags.shape[1] * flags.shape[2])


def test_suspect_mss_are_named_with_station_and_channel_and_the_run_succeeds(flagged_run):
    workflow, _, result = flagged_run
    assert result.returncode == 0, result.output
    closing = result.output.split("QA: 3 of 3 MS(s) suspect")[1]
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    suspect = {entry["name"]: entry["reason"] for entry in summary["suspect"]}
    assert set(suspect) == {f"obs_{stations}" for stations in STATIONS}
    for stations in STATIONS:
        name = f"obs_{stations}"
        reason = suspect[name]
        # The bad station and the RFI channel (with its frequency), nothing else.
        assert f"station {station_name(bad_station(stations))} 8" in reason, reason
        assert f"channel {RFI_CHANNEL} (122.148 MHz) 100 %" in reason, reason
        assert "stations" not in reason and "channels" not in reason, reason
        # In the progress line as it finished, and listed again at the end.
        assert f"{name}: done in" in result.output and f"QA: SUSPECT, {reason}" in result.output
        assert f"  {name}: {reason}" in closing
    rows = {row["name"]: row for row in summary["measurement_sets"]}
    assert {row["qa"] for row in rows.values()} == {"suspect"}


def test_record_holds_every_station_of_every_block(flagged_run):
    workflow, inputs, _ = flagged_run
    for stations in STATIONS:
        record = workflow.record(f"obs_{stations}")
        aoflagger = record["flags_by_step"]["aoflagger"]
        assert len(aoflagger["per_antenna"]) == stations  # every block of DP3's table
        assert None not in aoflagger["per_antenna"]
        # AOFlagger counts only the flags it adds: all of the RFI channel but what the bad
        # station's input flags already covered (80 % of its n-1 of n(n-1)/2 baselines).
        already = 100 * 0.8 * 2 / stations
        assert aoflagger["per_channel"][RFI_CHANNEL] == round(100 - already)
        statistics = record["flag_statistics"]
        assert statistics["stations"][bad_station(stations)] == station_name(bad_station(stations))
        totals = statistics["station_total_pct"]
        assert int(np.argmax(totals)) == bad_station(stations)
        assert totals[bad_station(stations)] >= 80
        assert statistics["station_input_pct"][bad_station(stations)] == pytest.approx(80.0)
        channels = statistics["channel_total_pct"]
        # DP3 prints whole percents per channel: the sum is within its rounding.
        assert channels[RFI_CHANNEL] == pytest.approx(100, abs=0.5)
        assert max(np.delete(channels, RFI_CHANNEL)) < 90
        assert statistics["input_frequency_hz"][RFI_CHANNEL] == pytest.approx(122148437.5)
        # The output's per-station figures, as the FLAG column of the output has them.
        output = per_station_flagged_pct(workflow.output(f"obs_{stations}"), stations)
        assert statistics["station_output_pct"] == pytest.approx(output, abs=1e-3)
        assert Path(statistics["zarr"]).is_dir() and Path(statistics["png"]).is_file()


def test_zarr_dataset_sums_are_the_outputs_flag_counts(flagged_run):
    workflow, _, _ = flagged_run
    for stations in STATIONS:
        name = f"obs_{stations}"
        dataset = xr.open_zarr(workflow.output_dir / "qa" / f"{name}_flagging_report.zarr")
        with tables.table(str(workflow.output(name)), ack=False) as table:
            flags = table.getcol("FLAG")
            rows = table.nrows()
        assert int(dataset["flagged"].sum()) == int(flags.sum())
        assert int(dataset["total"].sum()) == flags.size
        assert dataset.sizes["baseline"] == stations * (stations - 1) // 2
        assert dataset.sizes["time"] * dataset.sizes["baseline"] == rows
        assert dataset.sizes["frequency"] == flags.shape[1]
        for coordinate in ("baseline_antenna1", "baseline_antenna2", "baseline_length", "time"):
            assert coordinate in dataset.coords
        # The output as committed, not the temporary copy the report was read from.
        assert dataset.attrs["ms"] == str(workflow.output(name))
        assert dataset.attrs["title"] == f"Flagging report of {name}.ms"
        assert (dataset["baseline_length"] > 0).all()
        # The bad station and the RFI channel, as DP3 counted them per step (before averaging).
        bad = station_name(bad_station(stations))
        total = dataset["total_antenna_flagged_pct"]
        assert str(total.idxmax("antenna").values) == bad
        aoflagger = dataset["step_channel_flagged_pct"].sel(step="aoflagger")
        assert int(np.argmax(aoflagger.values)) == RFI_CHANNEL
        assert float(dataset["total_channel_flagged_pct"][RFI_CHANNEL]) == pytest.approx(
            100, abs=0.5
        )
        assert float(dataset["input_frequency"][RFI_CHANNEL]) == pytest.approx(122148437.5)
        # Output flags on the bad station's baselines: its first 80 % of the night.
        on_bad = (dataset["baseline_antenna1"] == bad) | (dataset["baseline_antenna2"] == bad)
        fraction = dataset["flagged"].where(on_bad).sum() / dataset["total"].where(on_bad).sum()
        assert float(fraction) >= 0.8


def test_summary_columns_say_their_unit(flagged_run):
    workflow, _, _ = flagged_run
    with open(workflow.output_dir / "summary.tsv") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        rows = list(reader)
    flag_columns = [column for column in reader.fieldnames if "flag" in column]
    assert flag_columns[:-1] == [
        "flagged_input_pct",
        "flagged_preflagger_pct",
        "flagged_aoflagger_pct",
        "flagged_total_pct",
        "flagged_output_pct",
    ]
    assert flag_columns[-1] == "flagging_report"
    for row in rows:
        # The input's 80 % of one station's baselines, as a percentage of the whole.
        stations = int(row["name"].split("_")[1])
        assert float(row["flagged_input_pct"]) == pytest.approx(100 * 0.8 * 2 / stations, 1e-3)
        assert float(row["flagged_total_pct"]) > float(row["flagged_output_pct"])


def test_the_batch_report_holds_every_flagging_plot(flagged_run):
    workflow, _, _ = flagged_run
    (report,) = (workflow.output_dir / "report").iterdir()
    plots = sorted(path.name for path in (report / "flagging").glob("*.png"))
    assert plots == [f"obs_{stations}_flagging_report.png" for stations in STATIONS]


def test_flagging_report_command_makes_the_same_for_any_ms(flagged_run, tmp_path):
    workflow, inputs, _ = flagged_run
    name = "obs_16"
    record_before = workflow.record(name)["flag_statistics"]
    command = [sys.executable, "-m", "dp3batch.report.flagging_command"]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    # An output of the workflow: written where the workflow writes it, with DP3's counts.
    done = subprocess.run(
        [*command, str(workflow.output(name))],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    zarr = workflow.output_dir / "qa" / f"{name}_flagging_report.zarr"
    assert str(zarr) in done.stdout
    again = xr.open_zarr(zarr)
    assert float(again["total_flagged_pct"]) == pytest.approx(record_before["total_pct"], 1e-3)
    # Any MS (an input): its own flags, in the directory named.
    plain = subprocess.run(
        [*command, str(inputs[name]), "--output-dir", str(tmp_path), str(tmp_path / "no.ms")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert plain.returncode == 1  # the missing MS, said once
    assert plain.stderr.strip().endswith("no.ms: not a MeasurementSet (no table.dat)")
    dataset = xr.open_zarr(tmp_path / f"{name}_flagging_report.zarr")
    station = dataset["flagged"].sum(("time", "frequency"))
    assert int(dataset["flagged"].sum()) == int(0.8 * 20 * 15 * 16 * 4)  # 15 baselines
    assert int(station.sum()) == int(dataset["flagged"].sum())
    assert (tmp_path / f"{name}_flagging_report.png").stat().st_size > 10_000
    assert (
        'dp3batch-flagging-report = "dp3batch.report.flagging_command:main"'
        in (REPO / "pyproject.toml").read_text()
    )


@pytest.fixture(scope="module")
def one_flagger_run(tmp_path_factory):
    """A chain with one flagger and no averaging: the output's FLAG column is the input's
    flags plus AOFlagger's, so every figure can be checked against it."""
    workflow = Workflow(tmp_path_factory.mktemp("one-flagger"))
    inputs = make_bad_inputs(workflow.directory / "inputs")
    workflow.config["steps"] = [{"AOFlagger": None}]
    result = workflow.run()
    assert result.returncode == 0, result.output
    return workflow, inputs


@pytest.mark.parametrize("stations", STATIONS)
def test_per_station_counts_agree_with_the_flag_columns(one_flagger_run, stations):
    workflow, inputs = one_flagger_run
    name = f"obs_{stations}"
    before = per_station_flagged_pct(inputs[name], stations)
    after = per_station_flagged_pct(workflow.output(name), stations)
    record = workflow.record(name)
    # What AOFlagger flagged per station, as DP3 printed it (whole percent), against the
    # FLAG columns: the station's new flags, as a share of all its visibilities.
    per_antenna = np.array(record["flags_by_step"]["aoflagger"]["per_antenna"], dtype=float)
    assert per_antenna == pytest.approx(after - before, abs=0.5 + 1e-6)
    statistics = record["flag_statistics"]
    assert statistics["station_input_pct"] == pytest.approx(before, abs=1e-3)
    # Input + the step, before averaging (there is none): the output's own, within DP3's
    # rounding.
    assert statistics["station_total_pct"] == pytest.approx(after, abs=0.5 + 1e-6)
    assert statistics["station_output_pct"] == pytest.approx(after, abs=1e-3)
    # DP3's count of the step is exact: input + step = the output's flagged visibilities.
    with tables.table(str(workflow.output(name)), ack=False) as table:
        flagged = table.getcol("FLAG").any(axis=2).mean() * 100
    assert statistics["total_pct"] == pytest.approx(flagged, abs=1e-3)


def test_new_limits_judge_again_without_reprocessing(flagged_run):
    """Runs last of the module's flagged_run tests: it changes the config."""
    workflow, _, _ = flagged_run
    records = {name: workflow.record(name)["finished"] for name in ("obs_16", "obs_64")}
    # A batch report of a version before issue 27 had no flagging plots: still a no-op.
    (report,) = (workflow.output_dir / "report").iterdir()
    for plot in (report / "flagging").iterdir():
        plot.unlink()
    (report / "flagging").rmdir()
    workflow.config["qa"] = {"max_station_flagged_fraction": 0.9}
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "Nothing to be done" in result.output or "0 of 3 MS(s) to process" in result.output
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    assert summary["suspect"] == []
    assert {row["qa"] for row in summary["measurement_sets"]} == {"ok"}
    assert {name: workflow.record(name)["finished"] for name in records} == records
