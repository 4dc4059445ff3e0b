"""Interrupted runs (embedded cluster): Ctrl-C, SIGTERM and `kill -9` of Snakemake mid-batch.

Whatever the interruption: DP3 stops within seconds, no partial MS sits at a final path, and
the rerun processes only what was not finished, leaving finished outputs untouched."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import dp3_processes, make_inputs, output_dir_released, wait_until

SLOW_MS = {"n_antennas": 16, "n_times": 100, "n_channels": 64}
# Two slots each run one MS and hold the next one waiting (small MSs): with 4, all four
# could finish within the stop's latency on a loaded machine; the 5th and 6th are submitted
# only by the central job, so an interruption always leaves some unfinished.
COUNT = 6
NAMES = [f"obs_{index}" for index in range(COUNT)]


def _records(workflow) -> dict[str, bytes]:
    return {
        name: (workflow.output(name) / "dp3_completion.json").read_bytes()
        for name in NAMES
        if (workflow.output(name) / "dp3_completion.json").is_file()
    }


def _interrupt_mid_batch(workflow, interrupt, *flags: str) -> dict[str, bytes]:
    """Start a batch, interrupt it once the first MS is complete; return the records then."""
    if not (workflow.directory / "inputs").exists():
        make_inputs(workflow.directory / "inputs", COUNT, **SLOW_MS)
    workflow.config["local_cluster"] = {"n_workers": 2, "threads_per_worker": 1}
    marker = str(workflow.directory)
    before = _records(workflow)
    snakemake = workflow.start(*flags)
    try:
        assert wait_until(lambda: _records(workflow) != before, timeout=120, interval=0.05)
        interrupt(snakemake)
        assert wait_until(lambda: not dp3_processes(marker), timeout=15), "DP3 still running"
        wait_until(lambda: snakemake.poll() is not None, timeout=30)
        # No DP3 may mean two slots between DP3 runs, with an MS being committed: what is
        # finished is known once the central job has ended (after `kill -9` of Snakemake
        # alone, it notices within a second), and no DP3 outlives it.
        assert output_dir_released(workflow.output_dir, timeout=30), "the run did not end"
        assert wait_until(lambda: not dp3_processes(marker), timeout=15), "DP3 outlived its run"
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    # Whatever was interrupted left no partial MS at a final path.
    for name in NAMES:
        assert not workflow.output(name).exists() or workflow.record(name) is not None
    # However often the signal came, no traceback: one clear message.
    output = (workflow.directory / "snakemake.out").read_text()
    assert "Traceback" not in output, output
    finished = _records(workflow)
    if not before:
        assert 0 < len(finished) < COUNT, "the interruption did not land mid-batch"
    return finished


def _rerun_completes_only_the_rest(workflow, finished: dict[str, bytes]) -> None:
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    plan = "\n".join(line for line in rerun.output.splitlines() if "obs_" in line or " of " in line)
    assert f"{COUNT - len(finished)} of {COUNT} MS(s) to process" in rerun.output, (
        f"finished when interrupted: {sorted(finished)}; the rerun's plan:\n{plan}"
    )
    after = _records(workflow)
    assert sorted(after) == NAMES
    assert {name: after[name] for name in finished} == finished


@pytest.mark.parametrize(
    "interrupt",
    [
        pytest.param(lambda process: os.killpg(process.pid, signal.SIGINT), id="ctrl-c"),
        # The terminal's Ctrl-C, and again from a wrapper (`timeout`, `srun`) a moment later.
        pytest.param(
            lambda process: (
                os.killpg(process.pid, signal.SIGINT),
                time.sleep(0.05),
                os.killpg(process.pid, signal.SIGINT),
            ),
            id="ctrl-c-twice",
        ),
        pytest.param(lambda process: os.kill(process.pid, signal.SIGKILL), id="kill-9"),
        pytest.param(lambda process: os.kill(process.pid, signal.SIGTERM), id="sigterm"),
    ],
)
def test_interrupted_batch_resumes_without_redoing_finished_outputs(workflow, interrupt):
    finished = _interrupt_mid_batch(workflow, interrupt)
    _rerun_completes_only_the_rest(workflow, finished)


def test_the_forced_mss_an_interrupted_forced_run_did_not_reach_are_finished_next(workflow):
    """After Ctrl-C of `snakemake -F`, "run again to process the remaining MSs" is true: the
    next plain run processes the forced MSs the interrupted one did not finish, and no more."""
    make_inputs(workflow.directory / "inputs", COUNT, **SLOW_MS)
    workflow.config["local_cluster"] = {"n_workers": 2, "threads_per_worker": 1}
    assert workflow.run().returncode == 0
    first = _records(workflow)
    assert sorted(first) == NAMES
    _interrupt_mid_batch(workflow, lambda process: os.killpg(process.pid, signal.SIGINT), "-F")
    output = (workflow.directory / "snakemake.out").read_text()
    assert "run again to process the remaining MSs" in output
    interrupted = _records(workflow)
    redone = [name for name in NAMES if interrupted[name] != first[name]]
    owed = [name for name in NAMES if name not in redone]
    assert redone and owed, "the interruption did not land mid-batch"
    rerun = workflow.run()
    assert rerun.returncode == 0, rerun.output
    assert f"{len(owed)} of {COUNT} MS(s) to process" in rerun.output
    for name in owed:
        assert f"{name}: forced by an earlier run that did not finish it" in rerun.output
    after = _records(workflow)
    assert {name for name in NAMES if after[name] != interrupted[name]} == set(owed)
    assert not (workflow.output_dir / ".forced-unfinished.json").exists()
    assert "Nothing to be done" in workflow.run().output
