"""`dp3_executable` naming a wrapper script, as sites run DP3 from a container or a module."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import BIN
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.install import wheel_aoflagger_strategy
from dp3batch.dp3.translation import chain_parameters
from dp3batch.dp3.wrapper import aoflagger_strategy_warning

REAL_DP3 = str(BIN / "DP3.py")
WHEEL_STRATEGY = wheel_aoflagger_strategy(REAL_DP3)


def make_wrapper(directory: Path) -> tuple[Path, Path]:
    """A wrapper that logs each call and execs the real DP3 (exec: signals reach DP3)."""
    calls = directory / "wrapper-calls.log"
    wrapper = directory / "site-dp3.sh"
    wrapper.write_text(f'#!/bin/bash\necho "$$ $*" >> "{calls}"\nexec "{REAL_DP3}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, calls


def test_the_warning_is_only_for_wrappers_with_an_aoflagger_step_lacking_a_strategy():
    flagging = chain_parameters(parse_steps([{"AOFlagger": None}]))
    assert aoflagger_strategy_warning("/site/dp3-in-apptainer.sh", flagging)
    assert aoflagger_strategy_warning(None, flagging) is None
    assert aoflagger_strategy_warning("/opt/dp3/bin/DP3", flagging) is None
    assert aoflagger_strategy_warning("/venv/bin/DP3.py", flagging) is None
    with_strategy = chain_parameters(parse_steps([{"AOFlagger": {"strategy": "/s.lua"}}]))
    assert aoflagger_strategy_warning("/site/dp3.sh", with_strategy) is None
    averaging = chain_parameters(parse_steps([{"Averager": None}]))
    assert aoflagger_strategy_warning("/site/dp3.sh", averaging) is None
    two = chain_parameters(
        parse_steps([{"AOFlagger": {"strategy": "/s.lua"}}, {"AOFlagger": None}])
    )
    assert "aoflagger2 name" in aoflagger_strategy_warning("/site/dp3.sh", two)
