"""Frequency chunks (`frequency_chunk_hz`): one DP3 task per chunk, a checked join into
NAME.ms, resume below the MS (real snakemake, real DP3, a real embedded dask cluster, tiny
generated MSs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from calibration_data import write_sky_model
from casacore import tables
from conftest import make_ms
from dp3batch.dp3.install import dp3_environment, find_dp3_executable, wheel_aoflagger_strategy
from dp3batch.testing.harness import dp3_processes, wait_until

DP3 = find_dp3_executable()
WIDTH = 195312.5  # the synthetic MSs' channel width: 16 channels span 3.125 MHz
COLUMNS = ("DATA", "FLAG", "WEIGHT_SPECTRUM", "UVW", "TIME")
# Channel-local: a PreFlagger by frequency range, then 2 channels averaged into one.
CHANNEL_LOCAL = [
    {"PreFlagger": {"freqrange": "[120.3 .. 120.9 MHz]"}},
    {"Averager": {"freqstep": 2}},
]
CLUSTER = {"n_workers": 2, "threads_per_worker": 1}


def _columns(path: Path) -> dict[str, np.ndarray]:
    with tables.table(str(path), ack=False) as table:
        found = {name: table.getcol(name) for name in COLUMNS}
    with tables.table(f"{path}::SPECTRAL_WINDOW", ack=False) as spw:
        found["CHAN_FREQ"] = spw.getcol("CHAN_FREQ")
    return found


def _assert_identical(first: Path, second: Path, channels: slice = slice(None)) -> None:
    ours, theirs = _columns(first), _columns(second)
    for name, values in theirs.items():
        mine = ours[name]
        if name in ("DATA", "FLAG", "WEIGHT_SPECTRUM"):
            mine = mine[:, channels]
        elif name == "CHAN_FREQ":
            mine = mine[:, channels]
        assert mine.shape == values.shape, name
        assert np.array_equal(mine, values, equal_nan=name == "DATA"), f"{name} differs"


def _dp3(*arguments: str) -> None:
    completed = subprocess.run(
        [DP3, *arguments], env=dp3_environment(), capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stdout[-2000:]


def _runs(directory: Path) -> tuple[list[str], list[str]]:
    """(chunk runs, joins) the counting wrapper saw."""
    path = directory / "dp3-runs.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    chunks = [line for line in lines if "msin.startchan=" in line and ".chunks/" in line]
    joins = [line for line in lines if "steps=[]" in line and "msin=[" in line]
    return chunks, joins


def test_a_channel_local_chain_chunked_is_bit_identical_to_unchunked(workflow):
    """4 chunks of 4 channels (PreFlagger by frequency + Averager): NAME.ms is bit for bit
    the unchunked output, its record lists each chunk, the chunk directory is gone, the
    summary and task list show the chunks, and a rerun does nothing."""
    make_ms(workflow.directory / "inputs" / "obs_SB001.ms")
    workflow.config.update(
        steps=CHANNEL_LOCAL,
        local_cluster=CLUSTER,
        output_dir="plain",
        qa={"flagging_report": "always"},
    )
    assert workflow.run().returncode == 0
    workflow.config.update(output_dir="results", frequency_chunk_hz=4 * WIDTH)
    dry = workflow.run("-n")
    assert "obs_SB001: missing (4 frequency chunks: 4 to process, then joined)" in dry.output
    assert "obs_SB001 chunk 3/4 (121.46–122.25 MHz): missing" in dry.output, dry.output
    result = workflow.run()
    assert result.returncode == 0, result.output
    output = workflow.output("obs_SB001")
    _assert_identical(output, workflow.directory / "plain" / "obs_SB001.ms")
    assert not (workflow.output_dir / ".obs_SB001.ms.chunks").exists()
    record = workflow.record("obs_SB001")
    chunks = record["frequency_chunks"]["chunks"]
    assert record["frequency_chunks"]["width_hz"] == 4 * WIDTH
    assert [(chunk["startchan"], chunk["nchan"]) for chunk in chunks] == [
        (0, 4),
        (4, 4),
        (8, 4),
        (12, 4),
    ]
    assert all(chunk["output_fingerprint"] and chunk["worker"] for chunk in chunks)
    assert record["shape_after"]["channels"] == 8
    # What the MS cost: every chunk's DP3 and the join's own.
    chunk_cpu = sum(chunk["dp3_cpu_seconds"] for chunk in chunks)
    assert all(chunk["dp3_cpu_seconds"] > 0 for chunk in chunks)
    assert record["dp3_cpu_seconds"] > chunk_cpu
    summary = json.loads((workflow.output_dir / "summary.json").read_text())
    (row,) = summary["measurement_sets"]
    assert len(row["frequency_chunks"]["chunks"]) == 4
    # The chunks' flag figures together are the unchunked output's.
    (plain,) = json.loads((workflow.directory / "plain" / "summary.json").read_text())[
        "measurement_sets"
    ]
    for key in ("flagged_total_pct", "flagged_output_pct", "flagged_preflagger_pct"):
        assert row[key] == pytest.approx(plain[key], abs=0.01), key
    # The joined output's flagging report files, where the unchunked run puts them.
    assert row["flagging_report"] == str(
        workflow.output_dir / "qa" / "obs_SB001_flagging_report.png"
    )
    assert Path(row["flagging_report"]).is_file()
    (run_dir,) = (workflow.output_dir / "runs").iterdir()
    tasks = json.loads((run_dir / "task-list.json").read_text())["tasks"]
    assert [task.get("chunk") for task in tasks] == ["1/4", "2/4", "3/4", "4/4", None]
    assert tasks[2]["startchan"] == 8 and tasks[2]["dp3_parameters"]["msin.nchan"] == "4"
    assert tasks[-1]["joins"] == [task["output"] for task in tasks[:4]]
    (html,) = (workflow.output_dir / "report").glob("*/summary.html")
    assert "Frequency chunks" in html.read_text() and "obs_SB001" in html.read_text()
    again = workflow.run()
    assert again.returncode == 0 and "are complete and up to date" in again.output
    changed = workflow.run("-n", "--config", f"frequency_chunk_hz={8 * WIDTH}")
    assert "obs_SB001: steps changed: frequency_chunk_hz (2 frequency chunks" in changed.output
    # A damaged joined output is made again from scratch: its chunks went with the join.
    (output / "table.f1").unlink()
    damaged = workflow.run("-n")
    assert "obs_SB001: output changed (4 frequency chunks: 4 to process" in damaged.output


def test_a_non_local_chain_is_each_chunk_as_dp3_by_hand_and_the_join_a_hand_join(workflow):
    """AOFlagger sees one chunk at a time: each chunk of the join is bit for bit a hand DP3
    run of that msin.startchan/msin.nchan, and the join a hand DP3 join of those."""
    source = make_ms(workflow.directory / "inputs" / "rfi.ms", seed=5)
    strategy = wheel_aoflagger_strategy(DP3)
    workflow.config.update(
        steps=[{"AOFlagger": {"strategy": strategy}}],
        local_cluster=CLUSTER,
        frequency_chunk_hz=8 * WIDTH,
    )
    result = workflow.run()
    assert result.returncode == 0, result.output
    hand = workflow.directory / "hand"
    hand.mkdir()
    parts = []
    for start in (0, 8):
        part = hand / f"ch{start}.ms"
        _dp3(
            f"msin={source}",
            f"msin.startchan={start}",
            "msin.nchan=8",
            f"msout={part}",
            "steps=[aoflagger]",
            f"aoflagger.strategy={strategy}",
        )
        _assert_identical(workflow.output("rfi"), part, slice(start, start + 8))
        parts.append(str(part))
    _dp3(f"msin=[{','.join(parts)}]", f"msout={hand / 'joined.ms'}", "steps=[]")
    _assert_identical(workflow.output("rfi"), hand / "joined.ms")


def test_a_killed_batch_is_resumed_chunk_by_chunk(workflow):
    """Kill the whole run (SIGKILL to its process group) while some chunks are done and one
    runs: the rerun redoes only the chunks not done, and one damaged since, then joins (the
    DP3 runs are counted by the batch that made each chunk's record)."""
    make_ms(workflow.directory / "inputs" / "obs_SB001.ms", n_channels=24)
    workflow.config.update(
        # AOFlagger's strategy chosen for the MS's telescope: the dry run must find the
        # chunks' fingerprints as the run that made them did.
        steps=[{"AOFlagger": {}}, {"Averager": {"freqstep": 2}}],
        local_cluster={"n_workers": 1, "threads_per_worker": 1},
        frequency_chunk_hz=4 * WIDTH,
    )
    chunk_dir = workflow.output_dir / ".obs_SB001.ms.chunks"

    def committed() -> list[Path]:
        return sorted(chunk_dir.glob("obs_SB001_ch*.ms/dp3_completion.json"))

    process = workflow.start()
    try:
        assert wait_until(lambda: len(committed()) >= 2, timeout=90), "no chunk was committed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert wait_until(lambda: not dp3_processes(str(workflow.directory)), timeout=30)
    done = committed()
    assert 2 <= len(done) < 6 and not workflow.output("obs_SB001").exists()
    # A chunk damaged after it was made is redone alone (its data file truncated).
    damaged = done[0].parent
    data_file = max(damaged.glob("table.f*_TSM*"), key=lambda path: path.stat().st_size)
    with open(data_file, "r+b") as handle:
        handle.truncate(data_file.stat().st_size // 2)
    kept = {path.parent.stem: json.loads(path.read_text())["batch_id"] for path in done[1:]}
    dry = workflow.run("-n")
    owed = 6 - len(done) + 1
    assert f"6 frequency chunks: {owed} to process, {len(done) - 1} done and kept" in dry.output
    assert "obs_SB001 chunk 1/6 (119.90–120.68 MHz): output changed" in dry.output, dry.output
    result = workflow.run()
    assert result.returncode == 0, result.output
    record = workflow.record("obs_SB001")
    chunks = record["frequency_chunks"]["chunks"]
    assert len(chunks) == 6
    redone = [chunk["name"] for chunk in chunks if chunk["batch_id"] == record["batch_id"]]
    assert len(redone) == owed and damaged.stem in redone
    for chunk in chunks:
        if chunk["name"] in kept:  # made by the killed run, not again
            assert chunk["batch_id"] == kept[chunk["name"]] != record["batch_id"]


def test_a_failed_chunk_or_join_check_fails_its_ms_alone_and_keeps_the_chunks(workflow):
    """A chunk DP3 fails on fails its MS alone (the other chunks are kept); a join whose
    output differs from its chunks (a flag flipped after DP3 wrote it) fails the check, and
    its chunks stay. The rerun redoes the failed chunk only, then both joins."""
    inputs = workflow.directory / "inputs"
    make_ms(inputs / "obs_a.ms")
    make_ms(inputs / "obs_b.ms", seed=1)
    triggers = workflow.directory / "fail-now"
    triggers.touch()
    wrapper = workflow.directory / "faulty-dp3"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {workflow.directory}/dp3-runs.txt\n'
        f'if [ -e {triggers} ] && [[ "$*" == *obs_a_ch0008-0015.ms.tmp* ]]; then\n'
        '  echo "Error: injected failure"; exit 1\nfi\n'
        f'{DP3} "$@"; code=$?\n'
        f'if [ -e {triggers} ] && [[ "$*" == *"steps=[]"* ]] && [[ "$*" == *obs_b* ]]; then\n'
        "  out=$(printf '%s\\n' \"$@\" | sed -n 's/^msout=//p')\n"
        f'  {sys.executable} -c "from casacore import tables; '
        "t = tables.table('$out', readonly=False, ack=False); f = t.getcol('FLAG'); "
        "f[0, 0, 0] = not f[0, 0, 0]; t.putcol('FLAG', f); t.close()\"\n"
        "fi\nexit $code\n"
    )
    wrapper.chmod(0o755)
    workflow.config.update(
        steps=CHANNEL_LOCAL,
        local_cluster=CLUSTER,
        frequency_chunk_hz=8 * WIDTH,
        dp3_executable=str(wrapper),
    )
    result = workflow.run()
    assert result.returncode != 0
    assert "obs_a (" in result.output and "chunk 2/2 (121.5–123.0 MHz)" in result.output
    assert "join check failed: obs_b_ch0000-0007.ms: its flags differ" in result.output
    assert not workflow.output("obs_a").exists() and not workflow.output("obs_b").exists()
    kept_a = sorted((workflow.output_dir / ".obs_a.ms.chunks").glob("*.ms/dp3_completion.json"))
    kept_b = sorted((workflow.output_dir / ".obs_b.ms.chunks").glob("*.ms/dp3_completion.json"))
    assert len(kept_a) == 1 and len(kept_b) == 2
    triggers.unlink()
    (workflow.directory / "dp3-runs.txt").unlink()
    again = workflow.run()
    assert again.returncode == 0, again.output
    chunk_runs, joins = _runs(workflow.directory)
    assert len(chunk_runs) == 1 and "obs_a_ch0008-0015" in chunk_runs[0]
    assert len(joins) == 2
    assert not (workflow.output_dir / ".obs_b.ms.chunks").exists()


@pytest.mark.parametrize(
    ("freqstep", "expected"),
    [
        (4, "one averaged channel (4 channel(s)) is 781250 Hz (0.781 MHz) wide, more than "),
        # A freqstep above the channel count averages them all into one (DP3 caps it).
        (
            32,
            "averages all 16 channels into one, so it cannot be cut; a width that works: "
            "frequency_chunk_hz=3125000",
        ),
    ],
)
def test_widths_that_would_split_an_averaged_channel_are_refused(workflow, freqstep, expected):
    make_ms(workflow.directory / "inputs" / "obs_SB001.ms")
    workflow.config.update(
        steps=[{"Averager": {"freqstep": freqstep}}], frequency_chunk_hz=3 * WIDTH
    )
    result = workflow.run()
    assert result.returncode != 0
    assert "frequency_chunk_hz:" in result.output and "obs_SB001.ms" in result.output
    assert expected in result.output, result.output
    assert not (workflow.output_dir / ".obs_SB001.ms.chunks").exists()
    assert not workflow.output("obs_SB001").exists()


def test_four_windows_are_each_chunked_and_a_narrow_ms_is_one_chunk(workflow):
    """Each window of a 4-window MS is cut and joined into NAME_spw<k>.ms, bit for bit what
    DP3 makes of it whole; an MS narrower than the width is processed whole, as it says."""
    inputs = workflow.directory / "inputs"
    wide = make_ms(inputs / "wide.ms", n_windows=4, window_order="window")
    make_ms(inputs / "narrow.ms", n_channels=8, seed=2)
    workflow.config.update(steps=CHANNEL_LOCAL, local_cluster=CLUSTER, frequency_chunk_hz=2e6)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "narrow: missing (one frequency chunk: 119.9–121.5 MHz fits" in result.output
    assert "no join" in result.output
    for band in range(4):
        name = f"wide_spw{band}"
        assert "2 frequency chunks" in result.output
        assert len(workflow.record(name)["frequency_chunks"]["chunks"]) == 2
        if band == 2:
            hand = workflow.directory / f"hand_{band}.ms"
            _dp3(
                f"msin={wide}",
                f"msin.band={band}",
                f"msout={hand}",
                "steps=[preflagger,averager]",
                "preflagger.freqrange=[120.3 .. 120.9 MHz]",
                "averager.freqstep=2",
            )
            _assert_identical(workflow.output(name), hand)
    assert "frequency_chunks" not in workflow.record("narrow")


def _descending(path: Path) -> Path:
    """The MS with its channels from high to low frequency (a lower sideband, as some
    correlators write it): CHAN_FREQ reversed, CHAN_WIDTH negative."""
    with tables.table(f"{path}::SPECTRAL_WINDOW", readonly=False, ack=False) as spw:
        spw.putcol("CHAN_FREQ", spw.getcol("CHAN_FREQ")[:, ::-1].copy())
        spw.putcol("CHAN_WIDTH", -spw.getcol("CHAN_WIDTH"))
    return path


def test_a_window_whose_frequencies_descend_is_processed_whole_as_dp3_makes_it(workflow):
    """DP3 joins chunk outputs in ascending order of frequency whatever order it is given
    (its multi-MS reader sorts them): the chunks of a descending window were joined
    scrambled, the join check failed the MS, and it failed on every run. Such a window is
    processed whole, as it says, bit for bit what DP3 makes of it; an ascending one beside
    it is still cut."""
    inputs = workflow.directory / "inputs"
    descending = _descending(make_ms(inputs / "lsb.ms"))
    make_ms(inputs / "usb.ms", seed=1)
    workflow.config.update(steps=CHANNEL_LOCAL, local_cluster=CLUSTER, frequency_chunk_hz=8 * WIDTH)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert (
        "lsb: missing (processed whole (119.9–123.0 MHz): its channels descend in frequency, "
        "and DP3 joins chunks in ascending order of frequency, which would scramble them)"
    ) in result.output
    assert "usb: missing (2 frequency chunks: 2 to process, then joined)" in result.output
    assert "frequency_chunks" not in workflow.record("lsb")
    assert len(workflow.record("usb")["frequency_chunks"]["chunks"]) == 2
    hand = workflow.directory / "hand.ms"
    _dp3(
        f"msin={descending}",
        f"msout={hand}",
        "steps=[preflagger,averager]",
        "preflagger.freqrange=[120.3 .. 120.9 MHz]",
        "averager.freqstep=2",
    )
    _assert_identical(workflow.output("lsb"), hand)
    again = workflow.run()
    assert again.returncode == 0 and "are complete and up to date" in again.output, again.output


def test_a_demixers_solutions_are_kept_per_chunk_named_by_channel_range(workflow):
    """Each chunk's Demixer solutions (`instrument`) end up in the joined output, named by
    the chunk's channels, and the output is complete only with all of them."""
    make_ms(workflow.directory / "inputs" / "obs.ms")
    write_sky_model(workflow.directory / "sky" / "two_sources.skymodel")
    workflow.config.update(
        steps=[
            {
                "Demixer": {
                    "skymodel": "two_sources.skymodel",
                    "subtractsources": ["bright_a", "bright_b"],
                }
            }
        ],
        extra_inputs_dir="sky",
        local_cluster=CLUSTER,
        frequency_chunk_hz=8 * WIDTH,
    )
    result = workflow.run()
    assert result.returncode == 0, result.output
    output = workflow.output("obs")
    names = ["instrument_ch0000-0007", "instrument_ch0008-0015"]
    assert workflow.record("obs")["required_files"] == names
    for name in names:
        with tables.table(str(output / name), ack=False) as solutions:
            assert solutions.nrows() > 0
    assert not (output / "instrument").exists()
    shutil.rmtree(output / names[1])
    assert "obs: incomplete" in workflow.run("-n").output


def test_turning_chunking_off_makes_the_ms_whole_and_removes_its_leftover_chunks(workflow):
    """A chunked run that failed leaves its done chunks; a run without chunking makes the
    MS whole, and the chunks it supersedes go."""
    make_ms(workflow.directory / "inputs" / "obs.ms")
    wrapper = workflow.directory / "failing-dp3"
    wrapper.write_text(
        "#!/bin/bash\n"
        'if [[ "$*" == *obs_ch0008-0015.ms.tmp* ]]; then echo "Error: injected"; exit 1; fi\n'
        f'exec {DP3} "$@"\n'
    )
    wrapper.chmod(0o755)
    workflow.config.update(
        steps=CHANNEL_LOCAL,
        local_cluster=CLUSTER,
        frequency_chunk_hz=8 * WIDTH,
        dp3_executable=str(wrapper),
    )
    assert workflow.run().returncode != 0
    chunk_dir = workflow.output_dir / ".obs.ms.chunks"
    assert (chunk_dir / "obs_ch0000-0007.ms" / "dp3_completion.json").is_file()
    result = workflow.run("--config", "frequency_chunk_hz=")
    assert result.returncode == 0, result.output
    assert "obs: missing\n" in result.output
    assert "frequency_chunks" not in workflow.record("obs")
    assert not chunk_dir.exists()


def test_dp3batch_run_takes_the_reference_option(tmp_path):
    """`dp3batch run --frequency-chunk-hz W` (the reference pipeline's option) cuts the MSs
    as `frequency_chunk_hz` does."""
    from conftest import BIN

    source = make_ms(tmp_path / "obs.ms")
    config = tmp_path / "bpp.yaml"
    config.write_text("steps:\n  - Averager: {freqstep: 2}\n")
    completed = subprocess.run(
        [str(BIN / "dp3batch"), "run", "-c", str(config), "-o", str(tmp_path / "out")]
        + ["--frequency-chunk-hz", str(8 * WIDTH), "-n", str(source)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "frequency_chunk_hz=1562500.0" in completed.stderr.splitlines()[0]
    assert "obs: missing (2 frequency chunks: 2 to process, then joined)" in output
