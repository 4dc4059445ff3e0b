"""The flagging report (report.flagging), its command, and the QA verdict (books.qa): on MSs
the generator writes, without DP3 (the e2e tests in tests/e2e/test_flagging.py run DP3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from casacore import tables
from contract_examples import make_record
from dp3batch.books.batch_spec import MSPaths
from dp3batch.books.qa import QALimits, qa_verdict
from dp3batch.books.records import write_record
from dp3batch.config.errors import ConfigError
from dp3batch.config.validation import validate_config
from dp3batch.dask_stage.execution import FLAGGING_FILES_MIN_DP3_SECONDS, wants_flagging_files
from dp3batch.dask_stage.task import Task
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.report.flagging import (
    count_input_flags,
    flag_statistics,
    flagging_data,
    flagging_dataset,
    make_flagging_report,
    prepare_flagging_report,
)
from dp3batch.report.flagging_command import main as flagging_command
from dp3batch.report.summary import iter_rows, write_summary
from dp3batch.testing.synthetic_ms import SyntheticMSSpec, generate_measurement_set

TASK = {
    "name": "bad",
    "input": "bad.ms",
    "output": "out/bad.ms",
    "log": "out/logs/bad.log",
    "dp3_executable": "DP3",
    "dp3_version": "6.6.0",
    "parameters": DP3Parameters({}, {}, ()),
    "parameters_fingerprint": "",
    "extra_inputs_fingerprint": "",
}
STATIONS = 17  # two blocks of DP3's per-antenna table
BAD = 15


@pytest.fixture(scope="module")
def bad_ms(tmp_path_factory) -> Path:
    spec = SyntheticMSSpec(n_antennas=STATIONS, n_times=10, n_channels=8, bad_station=BAD)
    return generate_measurement_set(tmp_path_factory.mktemp("flagging") / "bad.ms", spec)


def aoflagger_log(visibilities: int, flagged: int = 0) -> str:
    """DP3's section of a step that flagged `flagged` of `visibilities` (no tables)."""
    percent = 100 * flagged / visibilities
    return (
        "Flags set by AOFlaggerStep aoflagger.\n===\n"
        f"Total flagged: {percent:10.3f}%   ({flagged} out of {visibilities} visibilities)\n"
    )


def test_input_flags_per_station_and_channel(bad_ms):
    counts = count_input_flags(bad_ms)
    baselines = STATIONS * (STATIONS - 1) // 2
    assert counts.rows == 10 * baselines and counts.channels == 8 and counts.correlations == 4
    # The bad station's baselines, the first 8 of 10 time slots: 80 % of its visibilities.
    per_station = counts.antenna_pct()
    assert per_station[BAD] == pytest.approx(80.0)
    others = np.delete(per_station, BAD)
    assert others == pytest.approx(np.full(STATIONS - 1, 80.0 / (STATIONS - 1)))
    assert counts.fraction == pytest.approx(0.8 * (STATIONS - 1) / baselines)
    assert counts.channel_pct() == pytest.approx(np.full(8, 100 * counts.fraction))
    assert len(counts.frequencies) == 8
    # The channels DP3 reads (msin.startchan, msin.nchan) only.
    part = count_input_flags(bad_ms, startchan=2, nchan=3)
    assert part.channels == 3 and part.frequencies == counts.frequencies[2:5]


def test_dataset_sums_are_the_flag_column(bad_ms):
    data = flagging_data(bad_ms)
    dataset = flagging_dataset(data)
    with tables.table(str(bad_ms), ack=False) as table:
        flags = table.getcol("FLAG")
    assert int(dataset["flagged"].sum()) == int(flags.sum())
    assert int(dataset["total"].sum()) == flags.size
    assert dict(dataset.sizes) == {"time": 10, "baseline": 136, "frequency": 8, "antenna": 17}
    statistics = flag_statistics(data)
    assert int(np.argmax(statistics["station_output_pct"])) == BAD
    assert statistics["stations"][BAD] == "CS016HBA0"
    # Nothing before averaging without DP3's log and the input's flags.
    assert statistics["total_pct"] is None and statistics["station_total_pct"] is None


def test_statistics_need_no_cube_and_are_those_of_the_cube(bad_ms):
    """The counts over time x baseline x frequency take 2 bytes a visibility (4 % of an
    output's size): read only for the report's files. What the statistics are made of,
    summed per baseline and per channel as the rows are read, is the same."""
    counts = count_input_flags(bad_ms)
    log = aoflagger_log(counts.visibilities, flagged=counts.visibilities // 10)
    lean = flagging_data(bad_ms, log, counts)
    full = flagging_data(bad_ms, log, counts, cube=True)
    assert lean.read["flagged"].size == 0
    assert full.read["flagged"].shape == (10, 136, 8)
    assert flag_statistics(lean) == flag_statistics(full)
    assert np.array_equal(lean.station_output_pct(), full.station_output_pct())
    assert np.array_equal(full.read["flagged"].sum(axis=(0, 2)), lean.read["baseline_flagged"])
    assert np.array_equal(full.read["total"].sum(axis=(0, 1)), lean.read["channel_total"])
    # The dataset of files reads the cube itself when the numbers were read without it.
    assert flagging_dataset(lean).equals(flagging_dataset(full))


def test_totals_before_averaging_are_the_input_plus_every_step(bad_ms):
    counts = count_input_flags(bad_ms)
    log = aoflagger_log(counts.visibilities, flagged=counts.visibilities // 10)
    statistics = flag_statistics(flagging_data(bad_ms, log, counts))
    assert statistics["input_pct"] == pytest.approx(100 * counts.fraction, abs=1e-3)
    assert statistics["total_pct"] == pytest.approx(100 * counts.fraction + 10, abs=1e-3)
    assert statistics["station_total_pct"][BAD] == pytest.approx(80.0)
    # A step that saw other visibilities (after an averager, inserted slots): no totals.
    other = flag_statistics(flagging_data(bad_ms, aoflagger_log(counts.visibilities // 2), counts))
    assert other["total_pct"] is None and other["station_input_pct"][BAD] == pytest.approx(80.0)


def test_report_files_appear_only_when_published(bad_ms, tmp_path):
    qa = tmp_path / "qa"
    qa.mkdir()
    stale = qa / ".bad_flagging_report.png.tmp-1-2"  # left by a killed attempt
    stale.write_text("old")
    report = prepare_flagging_report(bad_ms, qa, "bad")
    assert not stale.exists()
    assert sorted(path.name for path in qa.iterdir() if not path.name.startswith(".")) == []
    report.publish()
    assert sorted(path.name for path in qa.iterdir()) == [
        "bad_flagging_report.png",
        "bad_flagging_report.zarr",
    ]
    assert (qa / "bad_flagging_report.png").read_bytes().startswith(b"\x89PNG")
    # Again: replaced in place; a discarded one leaves nothing behind.
    make_flagging_report(bad_ms, qa, "bad")
    prepare_flagging_report(bad_ms, qa, "bad").discard()
    assert len(list(qa.iterdir())) == 2
    import xarray as xr

    assert int(xr.open_zarr(qa / "bad_flagging_report.zarr")["flagged"].sum()) > 0


def test_a_report_read_from_a_temporary_copy_names_the_output_as_committed(bad_ms, tmp_path):
    import shutil

    import xarray as xr

    temporary = tmp_path / ".bad.ms.tmp-0123456789ab"
    shutil.copytree(bad_ms, temporary)
    report = prepare_flagging_report(temporary, tmp_path / "qa", "bad", final=tmp_path / "bad.ms")
    report.publish()
    attributes = xr.open_zarr(tmp_path / "qa" / "bad_flagging_report.zarr").attrs
    assert attributes["title"] == "Flagging report of bad.ms"
    assert attributes["ms"] == str(tmp_path / "bad.ms")


def test_an_output_without_report_files_removes_those_of_the_output_it_replaced(bad_ms, tmp_path):
    qa = tmp_path / "qa"
    make_flagging_report(bad_ms, qa, "bad")  # an earlier output of this MS had them
    report = prepare_flagging_report(bad_ms, qa, "bad", with_files=lambda statistics: False)
    assert report.statistics["output_pct"] is not None and "png" not in report.statistics
    assert len(list(qa.iterdir())) == 2  # until this output is committed
    report.publish()
    assert list(qa.iterdir()) == []  # they described the output this one replaced


@pytest.mark.parametrize(
    ("mode", "dp3_seconds", "limits", "wanted"),
    [
        ("always", 0.1, None, True),
        ("never", 3600.0, {"max_flagged_fraction": 0.01}, False),
        ("auto", 0.1, None, False),  # small: the report would cost more than DP3
        ("auto", FLAGGING_FILES_MIN_DP3_SECONDS, None, True),
        ("auto", 0.1, {"max_station_flagged_fraction": 0.5}, True),  # suspect: BAD at 80 %
        ("auto", 0.1, {"max_station_flagged_fraction": 0.9}, False),
    ],
)
def test_which_outputs_get_report_files(bad_ms, mode, dp3_seconds, limits, wanted):
    counts = count_input_flags(str(bad_ms))
    statistics = flag_statistics(flagging_data(bad_ms, aoflagger_log(counts.visibilities), counts))
    task = Task(**{**TASK, "flagging_report": mode, "qa": limits})
    assert wants_flagging_files(task, dp3_seconds)(statistics) is wanted


def test_command_writes_the_report_and_names_what_it_cannot_read(bad_ms, tmp_path, capsys):
    code = flagging_command([str(bad_ms), str(tmp_path / "none.ms"), "--output-dir", str(tmp_path)])
    assert code == 1
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'bad_flagging_report.zarr'}" in out and "% flagged" in out
    assert (
        err.strip()
        == f"dp3batch-flagging-report: {tmp_path / 'none.ms'}: not a MeasurementSet (no table.dat)"
    )
    with pytest.raises(SystemExit):
        flagging_command([str(bad_ms), str(bad_ms), "--log", "x.log"])
    assert "--log goes with one MS" in capsys.readouterr().err


STATISTICS = {
    "output_pct": 12.0,
    "total_pct": 30.0,
    "stations": ["CS001", "CS002", "CS003"],
    "station_output_pct": [10.0, 60.0, 10.0],
    "station_total_pct": [20.0, 85.0, 20.0],
    "output_frequency_hz": [120e6, 121e6],
    "channel_output_pct": [5.0, 10.0],
    "input_frequency_hz": [120e6, 120.5e6, 121e6, 121.5e6],
    "channel_total_pct": [10.0, 100.0, 12.0, 11.0],
}


def test_qa_is_off_by_default_and_names_station_and_channel_when_on():
    assert qa_verdict(STATISTICS, QALimits()).status is None
    ok = qa_verdict(STATISTICS, QALimits(max_flagged_fraction=0.5))
    assert ok.status == "ok" and not ok.reasons
    limits = QALimits(0.25, 0.5, 0.9)
    verdict = qa_verdict(STATISTICS, limits)
    assert verdict.suspect
    assert verdict.reasons == (
        "30.0 % flagged (limit 25 %)",
        "station CS002 85.0 % flagged (limit 50 %)",
        "channel 1 (120.500 MHz) 100 % flagged (limit 90 %)",
    )


def test_qa_falls_back_to_the_output_and_counts_past_five():
    output_only = {**STATISTICS, "total_pct": None, "station_total_pct": None}
    output_only["channel_total_pct"] = None
    verdict = qa_verdict(output_only, QALimits(0.1, 0.5, 0.09))
    assert verdict.reasons == (
        "12.0 % flagged in the output (limit 10 %)",
        "station CS002 60.0 % flagged in the output (limit 50 %)",
        "channel of the output 1 (121.000 MHz) 10 % flagged (limit 9 %)",
    )
    many = {
        "stations": [f"S{i}" for i in range(8)],
        "station_total_pct": [90.0 + i for i in range(8)],
    }
    reason = qa_verdict(many, QALimits(max_station_flagged_fraction=0.5)).reason
    assert (
        reason == "8 stations S7 97.0 %, S6 96.0 %, S5 95.0 %, S4 94.0 %, S3 93.0 % and 3 more "
        "flagged (limit 50 %)"
    )
    # An output without statistics (older record): no verdict rather than a wrong one.
    assert qa_verdict(None, QALimits(0.1)).status is None


def test_qa_config_is_checked_by_the_schema():
    config = {"qa": {"max_flagged_fraction": 0.5}}
    validate_config(config)
    assert config["qa"] == {"max_flagged_fraction": 0.5}
    with pytest.raises(ConfigError, match=r"qa.max_station_flagged_fraction: 1.5 is greater"):
        validate_config({"qa": {"max_station_flagged_fraction": 1.5}})
    with pytest.raises(ConfigError, match="qa: Additional properties are not allowed"):
        validate_config({"qa": {"max_flagged_percent": 50}})
    defaults = {}
    validate_config(defaults)
    assert QALimits.from_config(defaults["qa"]) == QALimits()


def test_summary_judges_with_the_current_limits_and_lists_suspect_mss(tmp_path):
    output = tmp_path / "results" / "a.ms"
    output.mkdir(parents=True)
    write_record(output, make_record(name="a", output=str(output), flag_statistics=STATISTICS))
    sets = [MSPaths("a", "/in/a.ms", str(output))]
    (row,) = list(iter_rows(sets, [], tmp_path / "logs"))
    assert row.qa is None and row.flagged_total_pct == 30.0
    strict = QALimits(max_station_flagged_fraction=0.5)
    (row,) = list(iter_rows(sets, [], tmp_path / "logs", qa=strict))
    assert row.qa == "suspect" and "CS002" in row.qa_reason
    json_path, tsv_path = tmp_path / "s.json", tmp_path / "s.tsv"
    assert write_summary([row], json_path, tsv_path)[1] is None
    summary = json.loads(json_path.read_text())
    assert list(summary) == ["batch", "counts", "measurement_sets", "suspect"]
    assert summary["suspect"] == [{"name": "a", "reason": row.qa_reason}]
    header = tsv_path.read_text().splitlines()[0].split("\t")
    flag_columns = [column for column in header if column.startswith("flagged_")]
    assert flag_columns == [
        "flagged_input_pct",
        "flagged_preflagger_pct",
        "flagged_aoflagger_pct",
        "flagged_total_pct",
        "flagged_output_pct",
    ]


def test_a_no_op_summary_is_rebuilt_when_a_qa_limit_changed(tmp_path):
    from dp3batch.report.summary import refresh_summary

    output = tmp_path / "results" / "a.ms"
    output.mkdir(parents=True)
    write_record(output, make_record(name="a", output=str(output), flag_statistics=STATISTICS))
    sets = [MSPaths("a", "/in/a.ms", str(output))]
    paths = (tmp_path / "results" / "summary.json", tmp_path / "results" / "summary.tsv")
    refresh_summary(sets, tmp_path / "logs", *paths, qa=QALimits(max_flagged_fraction=0.5))
    assert json.loads(paths[0].read_text())["suspect"] == []
    refresh_summary(sets, tmp_path / "logs", *paths, qa=QALimits(max_flagged_fraction=0.1))
    assert json.loads(paths[0].read_text())["suspect"][0]["name"] == "a"


@pytest.mark.parametrize("correlations", [1, 2, 3, 4, 8])
def test_flagged_correlations_counts_as_numpy_counts_along_the_correlations(correlations):
    from dp3batch.report.flagging import flagged_correlations

    flags = np.random.default_rng(correlations).random((50, 16, correlations)) < 0.4
    for chosen in (flags, flags[:, 3:11], flags[::2]):  # whole, and not contiguous
        counts = flagged_correlations(chosen)
        assert counts.shape == chosen.shape[:2]
        assert np.array_equal(counts, np.count_nonzero(chosen, axis=2))
