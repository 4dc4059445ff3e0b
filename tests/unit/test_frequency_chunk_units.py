"""Frequency chunks: the cut of a window, its alignment to the chain's averaging, names,
fingerprints, the join's DP3 arguments and the join check's grid (no DP3, no snakemake)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp3batch.books.batch_spec import PendingMS
from dp3batch.books.chunks import (
    PlannedChunk,
    chunk_directory,
    chunk_fingerprint,
    chunk_name,
    chunk_output,
    chunk_parameters,
    chunked_fingerprint,
    frequency_span,
    join_msout,
)
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.config.validation import validate_config
from dp3batch.dask_stage.join_check import _contiguity_problems, averaged_grid
from dp3batch.dp3.averaging import frequency_averaging, frequency_in_hz
from dp3batch.dp3.parset import UnsafeParameter, literal_list
from dp3batch.dp3.translation import chain_parameters
from dp3batch.planning.frequency_chunks import CannotCut, cut_window, refusal

WIDTH = 195312.5  # the synthetic MSs' channel width


def _grid(channels: int, width: float = WIDTH, start: float = 120e6):
    return [start + width * index for index in range(channels)], [width] * channels


def _parameters(*steps):
    return chain_parameters(parse_steps(list(steps)))


def test_a_window_is_cut_into_the_fewest_chunks_of_nearly_equal_channels():
    frequencies, widths = _grid(16)
    blocks = cut_window(frequencies, widths, 4 * WIDTH, 1)
    assert [(block.startchan, block.nchan) for block in blocks] == [(0, 4), (4, 4), (8, 4), (12, 4)]
    # 5 channels of width fit: 4 chunks of 4 (balanced), not 5 + 5 + 5 + 1.
    blocks = cut_window(frequencies, widths, 5 * WIDTH, 1)
    assert [block.nchan for block in blocks] == [4, 4, 4, 4]
    assert all(block.width_hz <= 5 * WIDTH for block in blocks)


def test_chunks_hold_whole_averaged_channels():
    frequencies, widths = _grid(24)
    # freqstep 4: 7 channels of width would split an averaged channel; 4 per chunk do not.
    blocks = cut_window(frequencies, widths, 7 * WIDTH, 4)
    assert all(block.nchan % 4 == 0 for block in blocks)
    assert sum(block.nchan for block in blocks) == 24
    assert [block.startchan for block in blocks] == [0, 4, 8, 12, 16, 20]


def test_chunk_edges_are_the_channel_edges_and_contiguous():
    frequencies, widths = _grid(8)
    first, second = cut_window(frequencies, widths, 4 * WIDTH, 2)
    assert first.low_hz == pytest.approx(120e6 - WIDTH / 2)
    assert first.high_hz == pytest.approx(second.low_hz)
    assert second.high_hz == pytest.approx(120e6 + 7.5 * WIDTH)


def test_a_window_narrower_than_the_width_is_one_chunk():
    frequencies, widths = _grid(16)
    (block,) = cut_window(frequencies, widths, 16 * WIDTH, 3)  # not even divisible: no cut
    assert (block.startchan, block.nchan) == (0, 16)


def test_an_averaged_channel_wider_than_the_width_is_refused_with_a_width_that_works():
    frequencies, widths = _grid(16)
    with pytest.raises(CannotCut) as refused:
        cut_window(frequencies, widths, 3 * WIDTH, 4)
    assert "one averaged channel (4 channel(s))" in str(refused.value)
    assert refused.value.working_width == pytest.approx(4 * WIDTH)
    assert refusal(refused.value).endswith("frequency_chunk_hz=781250")


def test_averaging_that_does_not_divide_the_channels_is_refused():
    frequencies, widths = _grid(18)
    with pytest.raises(CannotCut, match="does not divide its 18 channels"):
        cut_window(frequencies, widths, 8 * WIDTH, 4)
    with pytest.raises(CannotCut, match="averages all 18 channels into one"):
        cut_window(frequencies, widths, 8 * WIDTH, 32)


def test_the_first_channel_offsets_the_chunks_in_the_window():
    frequencies, widths = _grid(8)
    blocks = cut_window(frequencies, widths, 4 * WIDTH, 1, first_channel=8)
    assert [block.startchan for block in blocks] == [8, 12]


def test_frequency_averaging_multiplies_averagers_and_demixer_and_converts_resolution():
    assert frequency_averaging(_parameters({"PreFlagger": {}}), WIDTH) == 1
    assert frequency_averaging(_parameters({"Averager": {"freqstep": 4}}), WIDTH) == 4
    chain = _parameters({"Averager": {"freqstep": 2}}, {"Averager": {"freqstep": 3}})
    assert frequency_averaging(chain, WIDTH) == 6
    # DP3: max(1, int(resolution / width + 0.5)), of the width that step reads.
    by_resolution = _parameters({"Averager": {"freqresolution": "0.8MHz"}})
    assert frequency_averaging(by_resolution, WIDTH) == 4
    after_step = _parameters(
        {"Averager": {"freqstep": 2}}, {"Averager": {"freqresolution": 781250}}
    )
    assert frequency_averaging(after_step, WIDTH) == 4
    assert frequency_in_hz("48.828kHz") == pytest.approx(48828)
    assert frequency_in_hz("nchan/4") is None


def test_names_outputs_and_directory_of_chunks():
    output = Path("/out/obs_SB001.ms")
    assert chunk_directory(output) == Path("/out/.obs_SB001.ms.chunks")
    assert chunk_name("obs_SB001", 16, 16) == "obs_SB001_ch0016-0031"
    assert chunk_output(output, "obs_SB001", 0, 8) == Path(
        "/out/.obs_SB001.ms.chunks/obs_SB001_ch0000-0007.ms"
    )
    assert frequency_span(120e6, 122e6) == "120.0–122.0 MHz"
    assert frequency_span(120e6, 120.390625e6) == "120.00–120.39 MHz"


def test_fingerprints_change_with_the_width_and_the_channels_but_not_when_off():
    assert chunked_fingerprint("abc", None) == "abc"
    assert chunked_fingerprint("abc", 2e6) != chunked_fingerprint("abc", 1e6)
    assert chunked_fingerprint("abc", 2e6) == chunked_fingerprint("abc", 2000000)
    assert chunk_fingerprint("abc", 0, 8) != chunk_fingerprint("abc", 8, 8)


def test_a_chunk_reads_its_channels_and_leaves_the_storage_manager_to_the_join():
    parameters = _parameters({"MsOut": {"storagemanager": "dysco"}}, {"Averager": {"freqstep": 2}})
    chunk = chunk_parameters(parameters, 8, 8)
    pairs = dict(chunk.pairs())
    assert pairs["msin.startchan"] == "8" and pairs["msin.nchan"] == "8"
    assert "msout.storagemanager" not in pairs
    assert join_msout(parameters) == {"storagemanager": "dysco"}


def test_the_join_reads_its_chunks_as_a_list_of_literal_paths():
    assert literal_list(["/a/x.ms", "/b/y.ms"]) == "[/a/x.ms,/b/y.ms]"
    assert literal_list(["/a/o'q.ms"]) == '["/a/o\'q.ms"]'
    with pytest.raises(UnsafeParameter, match="syntax of a list"):
        literal_list(["/a,b/x.ms"])


def test_the_unchunked_grid_and_contiguity():
    frequencies, widths = _grid(8)
    grid = averaged_grid(frequencies, widths, 2)
    assert grid == pytest.approx([120e6 + WIDTH * (2 * index + 0.5) for index in range(4)])
    assert _contiguity_problems(frequencies, widths) == []
    gap = frequencies[:4] + [frequency + WIDTH for frequency in frequencies[4:]]
    assert "not contiguous between channels 3 and 4" in _contiguity_problems(gap, widths)[0]


def test_config_takes_a_width_as_a_number_or_a_yaml_string_and_refuses_others():
    config = {"frequency_chunk_hz": "2e6"}
    validate_config(config)
    assert config["frequency_chunk_hz"] == 2e6
    for bad in (0, -1, "wide"):
        with pytest.raises(ConfigError, match="frequency_chunk_hz"):
            validate_config({"frequency_chunk_hz": bad})
    config = {}
    validate_config(config)
    assert config["frequency_chunk_hz"] is None


def _chunk(index: int, reason: str | None = "missing") -> PlannedChunk:
    return PlannedChunk(
        index=index,
        count=4,
        name=f"obs_ch{index}",
        output=f"/out/.obs.ms.chunks/obs_ch{index}.ms",
        log=f"/out/logs/chunks/obs_ch{index}.log",
        startchan=4 * (index - 1),
        nchan=4,
        low_hz=120e6,
        high_hz=121e6,
        parameters_fingerprint="f",
        reason=reason,
    )


def test_the_embedded_cluster_counts_each_chunk_to_run_as_a_task():
    from contract_examples import make_spec
    from dp3batch.books.batch_spec import parallel_tasks

    whole = PendingMS(
        name="a", input="/in/a.ms", output="/out/a.ms", band=None, reason="missing", size=1
    )
    chunked = PendingMS(
        name="obs",
        input="/in/obs.ms",
        output="/out/obs.ms",
        band=None,
        reason="missing",
        size=1,
        chunks=(_chunk(1), _chunk(2, None), _chunk(3), _chunk(4)),
    )
    joined_only = PendingMS(
        name="b",
        input="/in/b.ms",
        output="/out/b.ms",
        band=None,
        reason="missing",
        size=1,
        chunks=(_chunk(1, None), _chunk(2, None)),
    )
    assert parallel_tasks(make_spec(measurement_sets=(whole, chunked, joined_only))) == 5


def test_a_pending_ms_carries_its_chunks_through_json():
    chunk = PlannedChunk(
        index=1,
        count=2,
        name="obs_ch0000-0007",
        output="/out/.obs.ms.chunks/obs_ch0000-0007.ms",
        log="/out/logs/chunks/obs_ch0000-0007.log",
        startchan=0,
        nchan=8,
        low_hz=120e6,
        high_hz=122e6,
        parameters_fingerprint="f",
        reason="missing",
    )
    pending = PendingMS(
        name="obs", input="/in/obs.ms", output="/out/obs.ms", band=None, reason="missing", size=1
    )
    assert PendingMS.from_json(pending.to_json()) == pending
    chunked = PendingMS.from_json({**pending.to_json(), "chunks": [chunk.to_json()]})
    assert chunked.chunks == (chunk,)
    assert chunk.label == "chunk 1/2 (120.0–122.0 MHz)"


def test_dp3batch_run_maps_the_reference_option_to_the_config_key(tmp_path):
    from dp3batch.cli import make_parser, snakemake_command

    arguments = make_parser().parse_args(
        ["run", "-c", "c.yaml", "-o", "out", "--frequency-chunk-hz", "2e6", "in.ms"]
    )
    command = snakemake_command(arguments, [])
    config = command[command.index("--config") + 1 :]
    assert "frequency_chunk_hz=2000000.0" in config
    with pytest.raises(SystemExit):
        make_parser().parse_args(["run", "-c", "c", "-o", "o", "--frequency-chunk-hz", "0", "x"])


def test_the_join_check_passes_a_join_equal_to_its_chunk_and_names_what_differs(tmp_path):
    import shutil

    import numpy as np
    from casacore import tables
    from conftest import make_ms
    from dp3batch.dask_stage.join_check import join_problems

    joined = make_ms(tmp_path / "joined.ms", n_channels=8)
    with tables.table(str(joined), readonly=False, ack=False) as table:  # as DP3 writes one
        description = tables.makearrcoldesc("WEIGHT_SPECTRUM", 0.0, ndim=2, valuetype="float")
        table.addcols(description)
        table.putcol("WEIGHT_SPECTRUM", np.ones(table.getcol("FLAG").shape, dtype="float32"))
    same = tmp_path / "same.ms"
    shutil.copytree(joined, same)
    with tables.table(f"{joined}::SPECTRAL_WINDOW", ack=False) as spw:
        grid = list(spw.getcell("CHAN_FREQ", 0))
    assert join_problems([str(same)], str(joined), grid) == []
    assert (
        "not the grid an unchunked run makes"
        in join_problems([str(same)], str(joined), [frequency + 1.0 for frequency in grid])[0]
    )
    assert join_problems([str(same), str(same)], str(joined)) == [
        "the join has 8 channels, its chunks 16 together"
    ]
    with tables.table(str(same), readonly=False, ack=False) as table:
        flags = table.getcol("FLAG")
        flags[3, 2, 0] = not flags[3, 2, 0]
        table.putcol("FLAG", flags)
    assert join_problems([str(same)], str(joined)) == [
        "same.ms: its flags differ from its channels in the join"
    ]
    shutil.rmtree(same)
    shutil.copytree(joined, same)
    with tables.table(str(same), readonly=False, ack=False) as table:
        weights = table.getcol("WEIGHT_SPECTRUM")
        weights[5, 7, 1] *= 2
        table.putcol("WEIGHT_SPECTRUM", weights)
        uvw = table.getcol("UVW")
        uvw[4, 2] += 1e-9
        table.putcol("UVW", uvw)
    assert join_problems([str(same)], str(joined)) == [
        "same.ms: its uvw coordinates, weights differ from its channels in the join"
    ]
    shorter = make_ms(tmp_path / "shorter.ms", n_channels=8, n_times=10)
    assert "shorter.ms: 150 rows, the join 300" in join_problems([str(shorter)], str(joined))
    without = make_ms(tmp_path / "without.ms", n_channels=8)
    assert join_problems([str(without)], str(joined)) == [
        "without.ms: has no WEIGHT_SPECTRUM column, the join has"
    ]


def test_a_joined_outputs_flag_figures_are_its_chunks_weighted_and_side_by_side():
    from dp3batch.report.chunk_flags import merged_flag_counts, merged_flag_statistics

    first = {
        "total_pct": 10.0,
        "stations": ["a", "b"],
        "station_total_pct": [0.0, 20.0],
        "channel_total_pct": [10.0, 10.0],
    }
    second = {
        "total_pct": 40.0,
        "stations": ["a", "b"],
        "station_total_pct": [30.0, 50.0],
        "channel_total_pct": [40.0, 40.0, 40.0, 40.0],
    }
    merged = merged_flag_statistics([first, second], [2, 4])
    assert merged["total_pct"] == 30.0
    assert merged["station_total_pct"] == [20.0, 40.0]
    assert merged["channel_total_pct"] == [10.0, 10.0, 40.0, 40.0, 40.0, 40.0]
    assert merged["output_pct"] is None  # no chunk said: nothing is made up
    assert merged_flag_statistics([first, None], [2, 4]) is None
    step = {
        "percent": 10.0,
        "flagged": 10,
        "visibilities": 100,
        "per_channel": [1],
        "per_antenna": [0, 20],
    }
    other = {
        "percent": 40.0,
        "flagged": 120,
        "visibilities": 300,
        "per_channel": [2],
        "per_antenna": [40, 60],
    }
    counts = merged_flag_counts([{"preflagger": step}, {"preflagger": other}])
    assert counts["preflagger"] == {
        "percent": 32.5,
        "flagged": 130,
        "visibilities": 400,
        "per_channel": [1, 2],
        "per_antenna": [30, 50],
    }


def _plan_with_chunks(tmp_path, chunks_per_ms: dict[str, tuple[PlannedChunk, ...]], single=()):
    from dp3batch.books.records import Expectation
    from dp3batch.inputs.discovery import WorkItem
    from dp3batch.planning.plan import Plan

    names = [*chunks_per_ms, *single]
    items = [
        WorkItem(name, tmp_path / "in" / f"{name}.ms", tmp_path / f"{name}.ms") for name in names
    ]
    plan = Plan(
        scheduler=None,
        chain=parse_steps([]),
        output_dir=tmp_path,
        dp3_executable="DP3",
        dp3_version="6.6.0",
        parameters=_parameters(),
        expectation=Expectation("p", "e", "6.6.0"),
        measurement_sets=items,
        pending=[(item, "missing") for item in items],
        frequency_chunk_hz=4 * WIDTH,
    )
    plan.chunks.update(chunks_per_ms)
    note = "one frequency chunk: 119.9–121.5 MHz fits in frequency_chunk_hz; no join"
    plan.single_chunk.update({name: note for name in single})
    return plan


def test_the_dry_run_lists_each_chunk_to_run_and_says_when_an_ms_fits_in_one(tmp_path):
    from dp3batch.planning.plan import describe_pending

    chunks = (_chunk(1), _chunk(2, None), _chunk(3), _chunk(4))
    text = describe_pending(_plan_with_chunks(tmp_path, {"obs": chunks}, single=("narrow",)))
    assert "  obs: missing (4 frequency chunks: 3 to process, 1 done and kept, then joined)" in text
    assert "  obs chunk 3/4 (120.0–121.0 MHz): missing" in text
    assert "chunk 2/4" not in text  # done and kept
    assert "  narrow: missing (one frequency chunk: 119.9–121.5 MHz fits in" in text
    # At most `limit` chunk lines in all: 10,000 chunks do not flood the terminal.
    many = {f"ms{index}": chunks for index in range(30)}
    listed = describe_pending(_plan_with_chunks(tmp_path, many), limit=50)
    assert listed.count(" chunk ") == 50


def test_list_changes_params_names_outputs_of_another_chunk_width(tmp_path):
    from dp3batch.books.chunks import CHUNK_WIDTH_CHANGED
    from dp3batch.rule_layer.flags import changed_outputs

    plan = _plan_with_chunks(tmp_path, {"obs": (_chunk(1),)})
    plan.pending = [(plan.pending[0][0], CHUNK_WIDTH_CHANGED)]
    assert changed_outputs(plan, "params") == [str(tmp_path / "obs.ms")]


def _cut(item, width: float, log_dir: Path):
    """item_chunks of a chain that averages 2 channels into one, for a missing output."""
    from dp3batch.books.records import Expectation, RecordStore
    from dp3batch.planning.frequency_chunks import item_chunks

    parameters = _parameters({"Averager": {"freqstep": 2}})
    expected = Expectation("f", "e", "6.6.0")
    return item_chunks(item, parameters, "f", width, expected, RecordStore(), log_dir, "missing")


def test_planning_cuts_a_real_window_and_finds_each_chunk_missing(tmp_path):
    from conftest import make_ms
    from dp3batch.inputs.discovery import WorkItem

    source = make_ms(tmp_path / "obs.ms", n_channels=16)
    item = WorkItem("obs", source, tmp_path / "out" / "obs.ms")
    found = _cut(item, 4 * WIDTH, tmp_path / "out" / "logs")
    assert [(chunk.startchan, chunk.nchan, chunk.reason) for chunk in found.chunks] == [
        (0, 4, "missing"),
        (4, 4, "missing"),
        (8, 4, "missing"),
        (12, 4, "missing"),
    ]
    assert found.chunks[1].output == str(tmp_path / "out" / ".obs.ms.chunks" / "obs_ch0004-0007.ms")
    narrow = _cut(item, 16 * WIDTH, tmp_path)
    assert narrow.chunks == () and narrow.single is not None and narrow.single.nchan == 16
    refused = _cut(item, WIDTH, tmp_path)
    assert refused.refused.endswith("a width that works: frequency_chunk_hz=390625")


def test_a_window_whose_frequencies_descend_is_one_block_and_says_why(tmp_path):
    from casacore import tables
    from conftest import make_ms
    from dp3batch.inputs.discovery import WorkItem
    from dp3batch.planning.frequency_chunks import DESCENDING

    source = make_ms(tmp_path / "lsb.ms", n_channels=16)
    with tables.table(f"{source}::SPECTRAL_WINDOW", readonly=False, ack=False) as spw:
        frequencies = spw.getcol("CHAN_FREQ")
        spw.putcol("CHAN_FREQ", frequencies[:, ::-1].copy())
        spw.putcol("CHAN_WIDTH", -spw.getcol("CHAN_WIDTH"))
    found = _cut(WorkItem("lsb", source, tmp_path / "out" / "lsb.ms"), 4 * WIDTH, tmp_path)
    assert found.chunks == () and found.refused is None
    assert found.whole_because == DESCENDING
    assert (found.single.startchan, found.single.nchan) == (0, 16)
    assert found.single.low_hz == frequencies.min() - WIDTH / 2
    assert found.single.high_hz == frequencies.max() + WIDTH / 2


def test_chunks_also_hold_whole_demixer_solution_intervals():
    from dp3batch.dp3.averaging import chunk_alignment

    demixer = {"Demixer": {"skymodel": "/sky.skymodel", "freqstep": 4, "demixfreqstep": 16}}
    assert chunk_alignment(_parameters(demixer), WIDTH) == 16
    # After an Averager of 2, the Demixer's 16 channels are 32 input channels.
    averaged = _parameters({"Averager": {"freqstep": 2}}, demixer)
    assert chunk_alignment(averaged, WIDTH) == 32
    assert chunk_alignment(_parameters({"Averager": {"freqstep": 3}}), WIDTH) == 3
