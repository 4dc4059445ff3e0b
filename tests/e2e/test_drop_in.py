"""The reference pipeline's users, as they work: `dp3batch run` with its options and its own
example configs, its SDM mode, and the `-d HOST:PORT` habit (real DP3, a real external dask
scheduler and workers, generated MSs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import yaml
from calibration_data import write_identity_h5parm, write_sky_model
from casacore import tables
from conftest import BIN, REPO, SNAKEMAKE, make_inputs
from dp3batch.testing.harness import snakemake_command

DP3BATCH = str(BIN / "dp3batch")
COLUMNS = ("DATA", "FLAG", "WEIGHT_SPECTRUM", "UVW", "TIME")

# The config the reference pipeline's 2.x releases run in their own command-line tests
# (tests/pipeline_cli_app/config.yaml of ska-sdp-batch-preprocess), as it ships, with its
# files given by -e/--extra-inputs-dir. (Its config/config.yaml has the Demixer's parameters
# beside `Demixer:` instead of under it, which both pipelines refuse: tests/unit/test_config.)
REFERENCE_2X_CONFIG = """\
steps:
  - MsIn:
  - PreFlagger:
  - Demixer:
      skymodel: sky_model.txt
      subtractsources: ["bright_a", "bright_b"]
  - AOFlagger:
      memorymax: 8.0
  - ApplyCal:
      parmdb: diagonal.h5
  - Averager:
      timestep: 4
      freqstep: 4
  - MsOut:
      overwrite: true
"""

# The current format, as its documentation shows it, with an SDM calibration table.
REFERENCE_CURRENT_CONFIG = """\
steps:
  - step: preflagger
    frequency_ranges_mhz:
      - {start: 122.3, stop: 122.6}
  - step: aoflagger
    strategy: {kind: preset, name: lofar_default}
    memory_max_gb: 1
  - step: applycal
    table: {kind: sdm, field_id: 0, purpose: bandpass}
  - step: averager
    timestep: 2
    freqstep: 2
"""


def dp3batch_run(directory: Path, *arguments: str, timeout: float = 600):
    completed = subprocess.run(
        [DP3BATCH, "run", *arguments],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    completed.output = completed.stdout + completed.stderr
    return completed


def snakemake(directory: Path, config_file: Path, config: dict):
    """The plain route: `snakemake --configfile C --config key=value ...`."""
    completed = subprocess.run(
        snakemake_command(
            config_file,
            "--config",
            *(f"{key}={json.dumps(value)}" for key, value in config.items()),
        ),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    completed.output = completed.stdout + completed.stderr
    return completed


def columns(path: Path) -> dict[str, np.ndarray]:
    with tables.table(str(path), ack=False) as table:
        return {column: table.getcol(column) for column in COLUMNS}


def assert_same_outputs(first: Path, second: Path, names: list[str]) -> None:
    for name in names:
        ours, theirs = columns(first / f"{name}.ms"), columns(second / f"{name}.ms")
        for column in COLUMNS:
            assert np.array_equal(ours[column], theirs[column]), (name, column)


def sdm_with_bandpass(directory: Path, ms: Path) -> Path:
    """An SDM laid out as the reference documents it, with a bandpass table for field 0."""
    sdm = directory / "sdm"
    table = sdm / "calibration" / "bandpass" / "0" / "gaintable.h5parm"
    table.parent.mkdir(parents=True)
    write_identity_h5parm(table, "diagonal", ms)
    return sdm


def test_the_reference_2x_example_config_runs_through_dp3batch_run_as_through_snakemake(
    tmp_path, dask_cluster
):
    inputs = make_inputs(tmp_path / "data", 2, n_times=8)
    extra = tmp_path / "extra"
    write_sky_model(extra / "sky_model.txt")
    write_identity_h5parm(extra / "diagonal.h5", "diagonal", inputs[0])
    config = tmp_path / "config.yaml"
    config.write_text(REFERENCE_2X_CONFIG)
    address = dask_cluster.start(workers=2, threads=1)

    arguments = ["-c", str(config), "-o", "out", "-e", str(extra), "-d", address]
    result = dp3batch_run(tmp_path, *arguments, *(str(path) for path in inputs))
    assert result.returncode == 0, result.output
    assert "2 of 2 MS(s) complete" in result.output
    assert "dp3batch: " in result.output.splitlines()[0]  # the snakemake command, shown

    # The same config by the plain route, on the embedded cluster, into another directory.
    plain = snakemake(
        tmp_path,
        config,
        {
            "inputs": [str(path) for path in inputs],
            "output_dir": str(tmp_path / "plain"),
            "extra_inputs_dir": str(extra),
        },
    )
    assert plain.returncode == 0, plain.output
    assert_same_outputs(tmp_path / "out", tmp_path / "plain", ["obs_0", "obs_1"])

    # A rerun has nothing to do (the reference would refuse an output directory with MSs).
    again = dp3batch_run(tmp_path, *arguments, *(str(path) for path in inputs))
    assert again.returncode == 0, again.output
    assert "All 2 MS(s)" in again.output


def test_sdm_mode_reads_the_sdm_s_table_and_keeps_each_run_s_files_in_its_logs(
    tmp_path, dask_cluster
):
    inputs = make_inputs(tmp_path / "data", 2)
    sdm = sdm_with_bandpass(tmp_path, inputs[0])
    config = tmp_path / "bpp.yaml"
    config.write_text(REFERENCE_CURRENT_CONFIG)
    address = dask_cluster.start(workers=2, threads=1)

    arguments = ["-c", str(config), "-o", "out", "--sdm-path", str(sdm), "-d", address]
    result = dp3batch_run(tmp_path, *arguments, *(str(path) for path in inputs))
    assert result.returncode == 0, result.output
    table = sdm / "calibration" / "bandpass" / "0" / "gaintable.h5parm"
    for name in ("obs_0", "obs_1"):
        parset = (tmp_path / "out" / f"{name}.ms" / "dp3.parset").read_text()
        assert f"applycal.parmdb={table}" in parset
    assert not (tmp_path / "out" / "runs").exists()  # with an SDM, the run's files go there

    (run,) = sorted((sdm / "logs").iterdir())
    assert run.name == "01-dp3batch"
    log = (run / "pipeline.log").read_text()
    assert "2 of 2 MS(s) to process" in log and "obs_0: done" in log
    assert "2 of 2 MS(s) complete" in log
    as_run = yaml.safe_load((run / "config.yaml").read_text())
    assert as_run["sdm_path"] == str(sdm) and as_run["scheduler"] == address
    assert as_run["worker_wait_seconds"] == 60  # the defaults filled in
    tasks = json.loads((run / "task-list.json").read_text())["tasks"]
    assert [task["name"] for task in tasks] == ["obs_0", "obs_1"]
    for task, ms in zip(tasks, inputs, strict=True):
        assert task["input"] == str(ms) and task["band"] is None
        assert task["output"] == str(tmp_path / "out" / f"{ms.stem}.ms")
        assert task["dp3_parameters"]["applycal.parmdb"] == str(table)
    assert (run / "dask-report.html").is_file()
    # This run's flagging reports, beside its other files (hard links of the outputs' own).
    for name in ("obs_0", "obs_1"):
        kept = run / "qa" / f"{name}_flagging_report.png"
        own = tmp_path / "out" / "qa" / f"{name}_flagging_report.png"
        assert kept.read_bytes() == own.read_bytes()
        assert (run / "qa" / f"{name}_flagging_report.zarr" / ".zmetadata").is_file()

    # The same config by the plain route gives the same outputs.
    plain = snakemake(
        tmp_path,
        config,
        {
            "inputs": [str(path) for path in inputs],
            "output_dir": str(tmp_path / "plain"),
            "sdm_path": str(sdm),
        },
    )
    assert plain.returncode == 0, plain.output
    assert_same_outputs(tmp_path / "out", tmp_path / "plain", ["obs_0", "obs_1"])
    assert sorted(path.name for path in (sdm / "logs").iterdir()) == [
        "01-dp3batch",
        "02-dp3batch",
    ]


def test_two_runs_at_once_against_one_sdm_get_two_run_directories(tmp_path):
    inputs = make_inputs(tmp_path / "data", 2)
    sdm = sdm_with_bandpass(tmp_path, inputs[0])
    config = tmp_path / "bpp.yaml"
    config.write_text(REFERENCE_CURRENT_CONFIG)
    runs = []
    for index, ms in enumerate(inputs):
        directory = tmp_path / f"operator{index}"
        directory.mkdir()
        runs.append(
            subprocess.Popen(
                [DP3BATCH, "run", "-c", str(config), "-o", str(tmp_path / f"out{index}")]
                + ["--sdm-path", str(sdm), str(ms)],
                cwd=directory,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    directories = sorted((sdm / "logs").iterdir())
    assert [path.name for path in directories] == ["01-dp3batch", "02-dp3batch"]
    # Nothing lost: each directory holds one run's files, each run's own MS.
    names = sorted(
        json.loads((run / "task-list.json").read_text())["tasks"][0]["name"] for run in directories
    )
    assert names == ["obs_0", "obs_1"]
    for run in directories:
        assert "1 of 1 MS(s) complete" in (run / "pipeline.log").read_text()


def test_a_missing_sdm_table_is_refused_by_path_before_anything_runs(tmp_path):
    inputs = make_inputs(tmp_path / "data", 1)
    sdm = tmp_path / "sdm"
    (sdm / "calibration").mkdir(parents=True)
    config = tmp_path / "bpp.yaml"
    config.write_text(REFERENCE_CURRENT_CONFIG)
    result = dp3batch_run(tmp_path, "-c", str(config), "-o", "out", "--sdm-path", str(sdm))
    assert result.returncode == 2  # argparse: the inputs are missing
    result = dp3batch_run(
        tmp_path, "-c", str(config), "-o", "out", "--sdm-path", str(sdm), str(inputs[0])
    )
    assert result.returncode != 0
    expected = (
        f"Error: steps[2] (step: applycal).table: the SDM {sdm} has no calibration table for "
        f"purpose 'bandpass', field '0': {sdm}/calibration/bandpass/0/gaintable.h5parm does "
        "not exist"
    )
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not (sdm / "logs").exists()


def test_minus_d_with_a_scheduler_address_is_not_taken_for_a_directory(tmp_path):
    make_inputs(tmp_path / "demo_data", 1, prefix="demo")
    (tmp_path / "bpp.yaml").write_text(REFERENCE_CURRENT_CONFIG)
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1"]
    result = subprocess.run(
        [*command, "--configfile", str(tmp_path / "bpp.yaml"), "-d", "localhost:8786"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "Error: -d is Snakemake's --directory; to use the dask scheduler at localhost:8786, "
        "run with --config scheduler=localhost:8786 (or dp3batch run -d localhost:8786 ...)"
    ) in output
    # Nothing ran: no output anywhere, only the directory Snakemake made for itself.
    assert sorted(path.name for path in (tmp_path / "localhost:8786").iterdir()) == [".snakemake"]
    assert not (tmp_path / "results").exists()
