"""End to end: Snakemake's forcing flags reprocess every MS; `--list-changes params` lists
the MSs whose steps changed, and nothing when none did."""

from __future__ import annotations

from conftest import make_inputs


def finished(workflow, name: str) -> str:
    return workflow.record(name)["finished"]


def test_forceall_and_forcerun_reprocess_every_ms(workflow):
    make_inputs(workflow.directory / "inputs", 2)
    first = workflow.run()
    assert first.returncode == 0, first.output
    before = {name: finished(workflow, name) for name in ("obs_0", "obs_1")}
    assert workflow.run("--lc", "params").stdout.strip() == ""

    for flags in (["-F"], ["-R", "process_measurement_sets"]):
        forced = workflow.run(*flags)
        assert forced.returncode == 0, forced.output
        assert "2 of 2 MS(s) to process" in forced.output
        assert "obs_0: forced" in forced.output and "obs_1: forced" in forced.output
        assert "2 of 2 MS(s) done" in forced.output
        after = {name: finished(workflow, name) for name in ("obs_0", "obs_1")}
        assert all(after[name] > before[name] for name in after), (before, after)
        before = after

    assert "All 2 MS(s)" in workflow.run("-n").output
    workflow.config["steps"] = [{"Averager": {"timestep": 4}}]
    listed = workflow.run("--lc", "params")
    assert listed.returncode == 0, listed.output
    assert listed.stdout.split() == [str(workflow.output("obs_0")), str(workflow.output("obs_1"))]


def test_unlock_and_the_dag_with_pending_mss_run_nothing_and_make_no_run_directory(workflow):
    """`snakemake --unlock`, which users type when a run went wrong, and `--dag` read the
    workflow, which plans: each made a new run directory (`runs/NN-dp3batch`) for nothing."""
    make_inputs(workflow.directory / "inputs", 1)
    unlocked = workflow.run("--unlock")
    assert unlocked.returncode == 0, unlocked.output
    assert "Unlocked working directory" in unlocked.output
    dag = workflow.run("--dag")
    assert dag.returncode == 0, dag.output
    assert dag.stdout.startswith("digraph") and "process_measurement_sets" in dag.stdout
    assert "1 of 1 MS(s) to process" in dag.stderr  # the pending MSs, on stderr only
    assert not (workflow.output_dir / "runs").exists()
    assert workflow.record("obs_0") is None
