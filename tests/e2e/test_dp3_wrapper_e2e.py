"""`dp3_executable` naming a wrapper script, as sites run DP3 from a container or a module."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import BIN, make_inputs
from dp3batch.dp3.install import wheel_aoflagger_strategy

REAL_DP3 = str(BIN / "DP3.py")
WHEEL_STRATEGY = wheel_aoflagger_strategy(REAL_DP3)


def make_wrapper(directory: Path) -> tuple[Path, Path]:
    """A wrapper that logs each call and execs the real DP3 (exec: signals reach DP3)."""
    calls = directory / "wrapper-calls.log"
    wrapper = directory / "site-dp3.sh"
    wrapper.write_text(f'#!/bin/bash\necho "$$ $*" >> "{calls}"\nexec "{REAL_DP3}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, calls


def test_a_wrapper_script_runs_every_dp3_of_the_workflow(workflow):
    assert WHEEL_STRATEGY, "the dp3 wheel's AOFlagger strategy is missing"
    make_inputs(workflow.directory / "inputs", 2)
    wrapper, calls = make_wrapper(workflow.directory)
    workflow.config["dp3_executable"] = str(wrapper)
    # A wrapper around the wheel needs the wheel's strategy named (see dp3_wrapper).
    workflow.config["steps"] = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": WHEEL_STRATEGY}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]
    result = workflow.run()
    assert result.returncode == 0, result.output
    assert "Warning:" not in result.output
    lines = calls.read_text().splitlines()
    assert any(line.endswith(" --version") for line in lines)
    for name in ("obs_0", "obs_1"):
        record = workflow.record(name)
        assert record is not None, name
        assert record["dp3_executable"] == str(wrapper)
        assert f"aoflagger.strategy={WHEEL_STRATEGY}" in record["dp3_arguments"]
        # The wrapper saw exactly the arguments of this MS's DP3 run.
        assert " ".join(record["dp3_arguments"]).split(" msout=")[0] in " ".join(lines)
        assert record["shape_after"]["channels"] == record["shape_before"]["channels"] // 2
        assert str(wrapper) in (workflow.output(name) / "dp3.parset").read_text()
    runs = [line for line in lines if "msin=" in line]
    assert len(runs) == 2


def test_a_wrapper_without_aoflagger_strategy_is_warned_about(workflow):
    make_inputs(workflow.directory / "inputs", 1)
    wrapper, _ = make_wrapper(workflow.directory)
    workflow.config["dp3_executable"] = str(wrapper)
    result = workflow.run("-n")
    assert result.returncode == 0, result.output
    assert "Warning: AOFlagger step(s) aoflagger name no `strategy`" in result.output
    assert f"strategy: {WHEEL_STRATEGY}" in result.output
