"""MSs of several spectral windows: every window is processed, checked and resumed on its own
(real snakemake, real DP3, a real embedded dask cluster, tiny generated MSs)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
from casacore import tables
from conftest import make_ms
from dp3batch.dp3.install import dp3_environment, find_dp3_executable

DP3 = find_dp3_executable()
# The chain of the issue: averaging to a time resolution (the synthetic interval is 2 s).
STEPS = [{"PreFlagger": {"baseline": "0&1"}}, {"Averager": {"timeresolution": 4.0}}]
HAND_STEPS = [
    "steps=[preflagger,averager]",
    "preflagger.type=preflagger",
    "preflagger.baseline=0&1",
    "averager.type=averager",
    "averager.timeresolution=4.0",
]


def _columns(path: Path, *names: str) -> dict[str, np.ndarray]:
    with tables.table(str(path), ack=False) as table:
        return {name: table.getcol(name) for name in names}


def _frequencies(path: Path) -> np.ndarray:
    with tables.table(f"{path}::SPECTRAL_WINDOW", ack=False) as spw:
        return spw.getcol("CHAN_FREQ")


def _dp3_by_hand(source: Path, output: Path, band: int) -> Path:
    completed = subprocess.run(
        [DP3, f"msin={source}", f"msin.band={band}", f"msout={output}", *HAND_STEPS],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    return output


def _summary(workflow) -> dict[str, dict[str, str]]:
    with open(workflow.output_dir / "summary.tsv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


def test_every_window_is_processed_checked_and_resumed_on_its_own(workflow):
    """A two-window MS with rows grouped by window and one with rows sorted by time: each
    window becomes NAME_spw<k>.ms, bit for bit what `DP3 msin.band=k` writes, with its own
    record, log and summary row; a deleted window alone is processed again."""
    inputs = workflow.directory / "inputs"
    grouped = make_ms(inputs / "grouped.ms", n_windows=2, window_order="window")
    by_time = make_ms(inputs / "bytime.ms", n_windows=2, window_order="time", seed=3)
    workflow.config["steps"] = STEPS
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "4 of 4 MS(s) to process" in result.output, result.output

    names = ["bytime_spw0", "bytime_spw1", "grouped_spw0", "grouped_spw1"]
    for source, stem in ((grouped, "grouped"), (by_time, "bytime")):
        assert not workflow.output(stem).exists()
        source_frequencies = _frequencies(source)
        for band in (0, 1):
            name = f"{stem}_spw{band}"
            record = workflow.record(name)
            assert record["band"] == band
            assert record["windows"]["bands"] == [0, 1]
            # 20 slots of 2 s averaged to 4 s, 15 baselines, all 16 channels of the window.
            assert record["shape_expected"] == {
                "times": 10,
                "baselines": 15,
                "channels": 16,
                "interval": 4.0,
            }
            assert record["shape_before"]["rows"] == 20 * 15
            assert record["shape_after"]["rows"] == 10 * 15
            assert f"msin.band={band}" in (workflow.output(name) / "dp3.parset").read_text()
            assert (workflow.output_dir / "logs" / f"{name}.log").is_file()
            assert np.array_equal(_frequencies(workflow.output(name))[0], source_frequencies[band])

    # Bit for bit what DP3 writes for that window by hand, in either row order.
    hand = _dp3_by_hand(by_time, workflow.directory / "hand.ms", band=1)
    expected = _columns(hand, "DATA", "FLAG")
    written = _columns(workflow.output("bytime_spw1"), "DATA", "FLAG")
    assert np.array_equal(written["DATA"], expected["DATA"])
    assert np.array_equal(written["FLAG"], expected["FLAG"])
    grouped_hand = _columns(
        _dp3_by_hand(grouped, workflow.directory / "hand_grouped.ms", band=1), "DATA", "FLAG"
    )
    grouped_1 = _columns(workflow.output("grouped_spw1"), "DATA", "FLAG")
    assert np.array_equal(grouped_1["DATA"], grouped_hand["DATA"])
    assert np.array_equal(grouped_1["FLAG"], grouped_hand["FLAG"])
    # The windows hold different data (window 1 = 2 × window 0): not one window twice.
    grouped_0 = _columns(workflow.output("grouped_spw0"), "DATA")["DATA"]
    assert np.allclose(grouped_1["DATA"], 2 * grouped_0)

    summary = _summary(workflow)
    assert sorted(summary) == names
    assert {row["status"] for row in summary.values()} == {"done"}

    # Resumable per window: only the deleted window is pending and processed.
    shutil.rmtree(workflow.output("bytime_spw1"))
    dry = workflow.run("-n")
    assert "1 of 4 MS(s) to process" in dry.output, dry.output
    assert "bytime_spw1: missing" in dry.output
    before = {name: workflow.record(name)["finished"] for name in names if name != "bytime_spw1"}
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    assert "1 of 4 MS(s) to process" in rerun.output
    assert {name: workflow.record(name)["finished"] for name in before} == before
    again = _columns(workflow.output("bytime_spw1"), "DATA", "FLAG")
    assert np.array_equal(again["DATA"], expected["DATA"])
    summary = _summary(workflow)
    assert summary["bytime_spw1"]["status"] == "done"
    assert {summary[name]["status"] for name in before} == {"up to date"}
    assert "All 4 MS(s)" in workflow.run("-n").output


def test_an_explicit_band_processes_that_window_only_into_name_ms(workflow):
    """`MsIn: {band: 1}` chooses one window: one output NAME.ms, holding window 1."""
    source = make_ms(workflow.directory / "inputs" / "obs.ms", n_windows=2, window_order="time")
    workflow.config["steps"] = [{"MsIn": {"band": 1}}, *STEPS]
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "1 of 1 MS(s) to process" in result.output, result.output
    assert sorted(path.name for path in workflow.output_dir.glob("*.ms")) == ["obs.ms"]
    record = workflow.record("obs")
    assert record["band"] is None  # the steps' own choice, not an item's
    assert record["shape_after"]["rows"] == 10 * 15
    assert np.array_equal(_frequencies(workflow.output("obs"))[0], _frequencies(source)[1])
    assert sorted(_summary(workflow)) == ["obs"]
