"""End to end: the real `snakemake` command, real DP3, real dask (embedded and external)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import yaml
from casacore import tables
from conftest import REPO, SMALL_MS, SNAKEMAKE, make_inputs
from dp3batch.testing.harness import run_snakemake


def _flags(path) -> np.ndarray:
    with tables.table(str(path), ack=False) as table:
        return table.getcol("FLAG")


def test_embedded_cluster_runs_the_chain_on_every_ms(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 3)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "3 of 3 MS(s) to process" in result.output
    assert "3 of 3 MS(s) done" in result.output

    baselines = SMALL_MS["n_antennas"] * (SMALL_MS["n_antennas"] - 1) // 2
    for index, source in enumerate(inputs):
        output = workflow.output(f"obs_{index}")
        with tables.table(str(output), ack=False) as table:
            assert table.nrows() == SMALL_MS["n_times"] // 2 * baselines
            assert table.getcell("INTERVAL", 0) == 2 * 2.0
            assert table.getcell("DATA", 0).shape == (SMALL_MS["n_channels"] // 2, 4)
        with tables.table(f"{output}::SPECTRAL_WINDOW", ack=False) as spw:
            assert spw.getcell("NUM_CHAN", 0) == SMALL_MS["n_channels"] // 2
        # The injected RFI (amplitude 1000 against noise 1, in channel 5 and time slot 7)
        # was flagged before averaging: it is gone from the data, and the averaged cells it
        # fell into carry the weight of the unflagged half only.
        with tables.table(str(source), ack=False) as table:
            assert np.abs(table.getcol("DATA")).max() > 500
        with tables.table(str(output), ack=False) as table:
            data = table.getcol("DATA").reshape(SMALL_MS["n_times"] // 2, baselines, -1, 4)
            weights = table.getcol("WEIGHT_SPECTRUM").reshape(data.shape)
            flags = table.getcol("FLAG").reshape(data.shape)
        assert np.abs(data[~flags]).max() < 20
        clean_weight = np.median(weights[0, :, 0, :])
        assert np.allclose(np.median(weights[:, :, 2, :]), clean_weight / 2)
        assert np.allclose(np.median(weights[3, :, :, :]), clean_weight / 2)
        # The input is untouched: no flags were written into it.
        assert not _flags(source).any()
        record = workflow.record(f"obs_{index}")
        assert record["dp3_version"] and record["numthreads"] >= 1
        assert (output / "dp3.parset").read_text().count(
            "steps=[preflagger,aoflagger,averager]"
        ) == 1


def test_external_cluster_is_used_when_a_scheduler_is_given(workflow, dask_cluster):
    make_inputs(workflow.directory / "inputs", 2)
    workflow.config["scheduler"] = dask_cluster.start(workers=2, threads=1)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "embedded" not in result.output
    workers = {workflow.record(f"obs_{index}")["worker"] for index in range(2)}
    assert all(worker.startswith("tcp://127.0.0.1:") for worker in workers)
    assert dask_cluster.address not in workers  # a worker, not the scheduler, did the work


def test_a_run_and_workers_started_without_home_process_every_ms(workflow, dask_cluster):
    """casacore opens no table without HOME ("The HOME environment variable has not been
    set"), and a batch job, a cron job or `env -i` may start Snakemake or a dask worker
    without it: every input was refused as unreadable, or every task failed. The workflow
    gives itself and its DP3s the user's home, as a login would."""
    make_inputs(workflow.directory / "inputs", 2)
    without_home = {key: value for key, value in os.environ.items() if key != "HOME"}
    result = subprocess.run(
        workflow.command(),
        cwd=workflow.directory,
        capture_output=True,
        text=True,
        timeout=300,
        env=without_home,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 MS(s) done" in result.stdout + result.stderr

    workflow.config.update(output_dir="external")
    dask_cluster.start_scheduler()
    workflow.config["scheduler"] = dask_cluster.address
    dask_cluster.start_workers(count=1, threads=1, HOME="")  # as unset, to casacore
    dask_cluster.wait_for_workers(1)
    external = workflow.run()
    assert external.returncode == 0, external.output
    assert workflow.record("obs_0")["worker"].startswith("tcp://")


def test_batch_preprocessing_config_runs_unchanged_on_the_demo_data(workflow):
    """`snakemake --configfile bpp.yaml`, as a user of the reference pipeline would type it:
    the default inputs (the demo data set) are generated and processed with its steps."""
    bpp_config = workflow.directory / "bpp.yaml"
    bpp_config.write_text(
        "steps:\n"
        "  - MsIn:\n"
        "      datacolumn: DATA\n"
        "  - PreFlagger:\n"
        "  - Averager:\n"
        "      timestep: 4\n"
        "      freqstep: 4\n"
        "  - MsOut:\n"
        "      overwrite: true\n"
    )
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1"]
    result = subprocess.run(
        [*command, "--configfile", str(bpp_config)],
        cwd=workflow.directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = sorted((workflow.directory / "results").glob("demo_*.ms"))
    assert len(outputs) == len(list((workflow.directory / "demo_data").glob("*.ms"))) >= 3
    for output in outputs:
        with (
            tables.table(f"{output}::SPECTRAL_WINDOW", ack=False) as spw,
            tables.table(
                f"{output.parent.parent / 'demo_data' / output.name}::SPECTRAL_WINDOW", ack=False
            ) as source_spw,
        ):
            assert spw.getcell("NUM_CHAN", 0) == source_spw.getcell("NUM_CHAN", 0) // 4


def test_a_json_configfile_runs_as_its_yaml_would(workflow):
    """Snakemake reads a JSON configfile into OrderedDicts; the run writes its config back as
    YAML (its `config.yaml`), which failed on them with a traceback."""
    make_inputs(workflow.directory / "inputs", 1)
    config_file = workflow.directory / "config.json"
    steps = [{"PreFlagger": {}}, {"Averager": {"timestep": 2, "freqstep": 2}}]
    config_file.write_text(json.dumps({"inputs": ["inputs/*.ms"], "steps": steps}))
    result = run_snakemake(config_file, workflow.directory)
    output = result.output
    assert result.returncode == 0, output
    assert "1 of 1 MS(s) done" in output
    [run_config] = (workflow.output_dir / "runs").glob("*/config.yaml")
    assert yaml.safe_load(run_config.read_text())["steps"] == steps


def test_invalid_config_is_one_clear_message(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    workflow.config["steps"] = [{"Averager": {"timestep": 0}}]
    result = workflow.run()
    assert result.returncode != 0
    assert "steps[0] (Averager).timestep" in result.output
    assert "Traceback" not in result.output
    assert not workflow.output_dir.exists()


def test_a_key_given_twice_is_refused_naming_both_lines(workflow):
    """YAML keeps the last of a repeated key without a word: an edited config with two
    `output_dir:` lines would run into the second. Refused, for a file and for --config."""
    make_inputs(workflow.directory / "inputs", 1)
    config = workflow.directory / "edited.yaml"
    config.write_text(
        "inputs: [inputs/*.ms]\noutput_dir: first\nsteps:\n  - PreFlagger:\noutput_dir: second\n"
    )
    for extra in ([], ["-n"]):
        result = run_snakemake(config, workflow.directory, *extra, timeout=120)
        output = result.output
        assert result.returncode != 0, output
        assert (
            f"Error: {config}, line 5: output_dir is given twice (also on line 2); only the "
            "last would be used, without a word: delete the one you do not mean"
        ) in output
        assert "Traceback" not in output
        assert not (workflow.directory / "first").exists()
        assert not (workflow.directory / "second").exists()

    workflow.config["steps"] = [{"PreFlagger": None}]
    result = workflow.run("--config", "output_dir=first", "output_dir=second")
    assert result.returncode != 0, result.output
    assert "Error: --config gives output_dir twice (output_dir=first and output_dir=second)" in (
        result.output
    )
    assert not (workflow.directory / "first").exists()
    assert not (workflow.directory / "second").exists()


def test_missing_input_is_named(workflow):
    workflow.config["inputs"] = ["inputs/nothing_here.ms"]
    result = workflow.run()
    assert result.returncode != 0
    assert "nothing_here.ms does not exist" in result.output
    assert "Traceback" not in result.output


def test_corrupt_input_is_named_before_anything_runs(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 2)
    (inputs[1] / "table.dat").write_bytes(b"not a casacore table")
    result = workflow.run()
    assert result.returncode != 0
    assert f"inputs: {inputs[1]} cannot be read as a MeasurementSet" in result.output
    assert "Traceback" not in result.output
    assert not workflow.output_dir.exists()  # the good MS was not processed either
