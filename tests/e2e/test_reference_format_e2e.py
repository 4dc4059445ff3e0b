"""End to end: a config in the reference pipeline's current format, and nothing else, run by
the real `snakemake` with real DP3 and an embedded dask cluster."""

from __future__ import annotations

import subprocess

import numpy as np
from casacore import tables
from conftest import REPO, SMALL_MS, SNAKEMAKE, make_inputs

# Channel i of a synthetic MS is centred on 120 + 0.1953125 i MHz: this range holds 12 and 13.
STEPS_ONLY_CONFIG = """\
steps:
  - step: preflagger
    frequency_ranges_mhz:
      - {start: 122.3, stop: 122.6}
  - step: aoflagger
    strategy: {kind: preset, name: lofar_default}
    memory_max_gb: 1
"""


def run_snakemake(directory, config_file) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1", "--configfile", config_file],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    completed.output = completed.stdout + completed.stderr
    return completed


def test_a_steps_only_reference_config_runs_unchanged(workflow):
    # The default inputs are demo_data/*.ms: put one small MS there instead of the demo set.
    make_inputs(workflow.directory / "demo_data", 1, prefix="demo")
    (workflow.directory / "bpp.yaml").write_text(STEPS_ONLY_CONFIG)

    result = run_snakemake(workflow.directory, "bpp.yaml")
    assert result.returncode == 0, result.output
    assert "1 of 1 MS(s) to process" in result.output

    output = workflow.directory / "results" / "demo_0.ms"
    parset = (output / "dp3.parset").read_text()
    assert "preflagger.freqrange=[122.3..122.6 MHz]" in parset
    assert "aoflagger.strategy=" in parset and "lofar-default.lua" in parset
    assert "aoflagger.memorymax=1" in parset
    with tables.table(str(output), ack=False) as table:
        flags = table.getcol("FLAG")
    assert flags.shape[1] == SMALL_MS["n_channels"]
    # DP3 flagged exactly the two channels of the range (and AOFlagger the injected RFI).
    assert flags[:, 12:14, :].all()
    assert flags[:, 5, :].all()
    assert np.mean(flags[:, [0, 1, 2, 3, 8, 9, 10, 15], :]) < 0.2

    again = run_snakemake(workflow.directory, "bpp.yaml")
    assert again.returncode == 0, again.output
    assert "All 1 MS(s)" in again.output and "up to date" in again.output
