"""End to end with calibration steps: the real `snakemake` command, real DP3 and real dask
(embedded and external), a batch pre-processing config with `extra_inputs_dir`."""

from __future__ import annotations

import numpy as np
from calibration_data import (
    add_sky_to_measurement_set,
    antenna_names,
    write_identity_h5parm,
    write_sky_model,
)
from casacore import tables
from conftest import SMALL_MS, make_inputs
from dp3batch.dp3.h5parm import read_h5parm
from h5parm_writer import SoltabData, identity_soltabs, write_h5parm

# PreFlagger, Demixer, AOFlagger, ApplyCal and Averager, as the reference pipeline writes them.
BPP_STEPS = [
    {"MsIn": {"datacolumn": "DATA"}},
    # The generated RFI (amplitude 1000) would wreck the demixer's solutions: clip it first.
    {"PreFlagger": {"amplmax": 100.0}},
    {
        "Demixer": {
            "skymodel": "two_sources.skymodel",
            "subtractsources": ["bright_a", "bright_b"],
            "demixtimestep": 2,
            "demixfreqstep": 4,
            # The field has no target emission to project away; and with the sources within
            # a degree of the phase centre, projecting it away is ill-conditioned on these 6
            # stations once the demixer averages (residuals of ~100 Jy measured).
            "ignoretarget": True,
        }
    },
    {"AOFlagger": None},
    {"ApplyCal": {"parmdb": "diagonal.h5"}},
    {"Averager": {"timestep": 2, "freqstep": 2}},
    {"MsOut": {"overwrite": True}},
]


def prepare_calibration_run(workflow, count: int) -> list:
    """Generated MSs holding noise, RFI and the two-source sky; the sky model and an identity
    diagonal H5Parm in `extra_inputs_dir`."""
    inputs = make_inputs(workflow.directory / "inputs", count)
    extra = workflow.directory / "calibration"
    sky_model = write_sky_model(extra / "two_sources.skymodel")
    for ms in inputs:
        add_sky_to_measurement_set(ms, sky_model)
    write_identity_h5parm(extra / "diagonal.h5", "diagonal", inputs[0])
    workflow.config["extra_inputs_dir"] = "calibration"
    workflow.config["steps"] = BPP_STEPS
    return inputs


def parallel_hand_median(path) -> float:
    """Median amplitude of the unflagged XX and YY visibilities (robust to the RFI)."""
    with tables.table(str(path), ack=False) as table:
        data = table.getcol("DATA")[..., [0, 3]]
        flags = table.getcol("FLAG")[..., [0, 3]]
    return float(np.median(np.abs(data[~flags])))


def check_calibrated_output(workflow, name: str, source) -> None:
    output = workflow.output(name)
    baselines = SMALL_MS["n_antennas"] * (SMALL_MS["n_antennas"] - 1) // 2
    with tables.table(str(output), ack=False) as table:
        assert table.nrows() == SMALL_MS["n_times"] // 2 * baselines
        assert table.getcell("DATA", 0).shape == (SMALL_MS["n_channels"] // 2, 4)
    # The demixer removed the 10 and 5 Jy sources: what is left is noise (sigma 1 per real
    # and imaginary part, averaged over 4 samples: median amplitude about 0.6).
    assert parallel_hand_median(source) > 5
    assert parallel_hand_median(output) < 1.0
    # Its instrument model sits inside the output, and the parset says so.
    with tables.table(str(output / "instrument"), ack=False) as parmdb:
        assert parmdb.nrows() > 0
    parset = (output / "dp3.parset").read_text()
    assert f"demixer.instrumentmodel={output}/instrument\n" in parset
    # ApplyCal's options were chosen from the H5Parm: one sub-step per diagonal soltab.
    assert "applycal.steps=[amplitude,phase]\n" in parset
    assert "applycal.amplitude.correction=amplitude000\n" in parset
    assert workflow.record(name)["required_files"] == ["instrument"]


def test_bpp_calibration_config_runs_on_the_embedded_cluster(workflow):
    inputs = prepare_calibration_run(workflow, 2)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "2 of 2 MS(s) done" in result.output
    for index, source in enumerate(inputs):
        check_calibrated_output(workflow, f"obs_{index}", source)
    # No task wrote DP3's default instrument model into the working directory.
    assert not (workflow.directory / "instrument").exists()
    assert not list(workflow.output_dir.glob(".*tmp-*"))


def test_bpp_calibration_config_runs_on_an_external_cluster(workflow, dask_cluster):
    inputs = prepare_calibration_run(workflow, 2)
    workflow.config["scheduler"] = dask_cluster.start(workers=2, threads=1)
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "embedded" not in result.output
    for index, source in enumerate(inputs):
        check_calibrated_output(workflow, f"obs_{index}", source)
        assert workflow.record(f"obs_{index}")["worker"].startswith("tcp://127.0.0.1:")
    assert not (workflow.directory / "instrument").exists()
    assert not (dask_cluster.directory / "instrument").exists()


def test_changed_h5parm_or_sky_model_makes_the_outputs_pending_again(workflow):
    """Predict (subtracting the sky model) and ApplyCal: after a complete run, new content in
    either file makes every MS pending again, with that reason; the old content makes them
    up to date again (files count by content)."""
    inputs = make_inputs(workflow.directory / "inputs", 2)
    extra = workflow.directory / "calibration"
    sky_model = write_sky_model(extra / "two_sources.skymodel")
    for ms in inputs:
        add_sky_to_measurement_set(ms, sky_model)
    h5parm = write_identity_h5parm(extra / "solutions.h5", "scalarphase", inputs[0])
    workflow.config["extra_inputs_dir"] = "calibration"
    workflow.config["steps"] = [
        {"Predict": {"sourcedb": "two_sources.skymodel", "operation": "subtract"}},
        {"ApplyCal": {"parmdb": "solutions.h5"}},
    ]
    result = workflow.run()
    assert result.returncode == 0, result.output
    # Predict subtracted exactly what was added: the generated noise is back (sigma 1 per
    # part, RMS amplitude sqrt(2)), apart from the RFI the chain does not flag.
    baselines = SMALL_MS["n_antennas"] * (SMALL_MS["n_antennas"] - 1) // 2
    for index in range(len(inputs)):
        with tables.table(str(workflow.output(f"obs_{index}")), ack=False) as table:
            residual = table.getcol("DATA")[:, :4]  # channels 0-3: not the RFI channel
            rows = np.arange(table.nrows()) // baselines != 7  # nor the RFI time slot
        assert 1.2 < np.sqrt(np.mean(np.abs(residual[rows]) ** 2)) < 1.6

    original = h5parm.read_bytes()
    names = antenna_names(inputs[0])
    (phase,) = identity_soltabs("scalarphase", names)
    write_h5parm(h5parm, [SoltabData("phase000", "phase", phase.axes, phase.values + 0.1)], names)
    assert read_h5parm(h5parm).soltabs[0].name == "phase000"  # same layout, new solutions
    dry_run = workflow.run("-n").output
    assert "2 of 2 MS(s) to process" in dry_run
    assert "obs_0: calibration or sky model file changed" in dry_run
    assert "obs_1: calibration or sky model file changed" in dry_run

    h5parm.write_bytes(original)
    assert "All 2 MS(s)" in workflow.run("-n").output

    write_sky_model(sky_model, fluxes={"bright_b": 6.0})
    dry_run = workflow.run("-n").output
    assert "2 of 2 MS(s) to process" in dry_run
    assert "obs_1: calibration or sky model file changed" in dry_run
