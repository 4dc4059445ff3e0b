"""DP3 as astronomers know it: the workflow's output is what DP3 itself writes for the data
(real snakemake, real DP3, tiny generated MSs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from casacore import tables
from conftest import make_ms
from dp3batch.dp3 import dp3_environment, find_dp3_executable, wheel_strategies_directory

DP3 = find_dp3_executable()
STRATEGIES = wheel_strategies_directory(DP3)


def _flags(path: Path) -> np.ndarray:
    with tables.table(str(path), ack=False) as table:
        return table.getcol("FLAG")


def _dp3_by_hand(source: Path, output: Path, *arguments: str) -> np.ndarray:
    """DP3 run by hand, the way an astronomer checks a result; returns the output's flags."""
    completed = subprocess.run(
        [DP3, f"msin={source}", f"msout={output}", *arguments],
        env=dp3_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-2000:]
    return _flags(output)


def test_aoflagger_uses_the_strategy_aoflagger_picks_for_the_telescope(workflow):
    """No strategy named: a LOFAR MS is flagged with lofar-default.lua, bit for bit as DP3
    does by hand (and not as generic-default.lua would: on this data the two differ); the
    name matches without regard to case, and an unknown telescope gets the generic one."""
    inputs = workflow.directory / "inputs"
    make_ms(inputs / "lofar.ms", seed=1, telescope_name="lofar")
    make_ms(inputs / "other.ms", seed=2, telescope_name="MyDish")
    workflow.config["steps"] = [{"AOFlagger": None}]
    result = workflow.run()
    assert result.returncode == 0, result.output

    lofar = _flags(workflow.output("lofar"))
    strategy = f"aoflagger.strategy={STRATEGIES / 'lofar-default.lua'}"
    by_hand = _dp3_by_hand(
        inputs / "lofar.ms", workflow.directory / "h.ms", "steps=[aoflagger]", strategy
    )
    generic = f"aoflagger.strategy={STRATEGIES / 'generic-default.lua'}"
    with_generic = _dp3_by_hand(
        inputs / "lofar.ms", workflow.directory / "g.ms", "steps=[aoflagger]", generic
    )
    assert np.count_nonzero(with_generic != by_hand) > 0  # else this test could not fail
    assert np.array_equal(lofar, by_hand)

    record = workflow.record("lofar")
    assert record["telescope"] == "lofar"
    assert record["aoflagger_strategies"] == {"aoflagger": str(STRATEGIES / "lofar-default.lua")}
    assert workflow.record("other")["aoflagger_strategies"] == {
        "aoflagger": str(STRATEGIES / "generic-default.lua")
    }
    # The choice is remembered: a rerun has nothing to do.
    again = workflow.run("-n")
    assert "All 2 MS(s)" in again.output, again.output
