"""DP3 run through a wrapper script (a container, an environment module): what to warn about.

The dp3 pip wheel's AOFlagger has no default strategy ("cannot open" at the end of every
run), so the workflow names the wheel's `generic-default.lua` when DP3 is the wheel's own
`DP3.py`. Behind a wrapper it cannot know which DP3 runs: a DP3 built from source or in a
container finds its own default, the wheel does not. So it leaves the strategy alone and
says how to set it.
"""

from __future__ import annotations

from pathlib import Path

from dp3batch.dp3.install import wheel_aoflagger_strategy
from dp3batch.dp3.parameters import DP3Parameters

REAL_DP3_NAMES = ("DP3", "DP3.py")


def aoflagger_strategy_warning(
    configured_executable: str | None, parameters: DP3Parameters
) -> str | None:
    """A warning when a configured DP3 wrapper runs AOFlagger steps without a strategy."""
    if not configured_executable or Path(configured_executable).name in REAL_DP3_NAMES:
        return None
    missing = [
        step.name
        for step in parameters.steps_of_type("aoflagger")
        if step.value("strategy") is None
    ]
    if not missing:
        return None
    example = wheel_aoflagger_strategy("DP3.py") or "/path/to/strategy.lua"
    return (
        f"AOFlagger step(s) {', '.join(missing)} name no `strategy` and DP3 runs through "
        f"{configured_executable}, so DP3 uses its own default strategy. If that is the dp3 pip "
        'wheel, it has none and every MS fails at the end with "cannot open": set one, e.g.\n'
        f"    - AOFlagger:\n        strategy: {example}"
    )
