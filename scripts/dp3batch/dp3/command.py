"""The `DP3` command of the environment: the dp3 wheel's `DP3.py` with what it needs.

The wheel installs only `DP3.py`, which refuses to start without `OPENBLAS_NUM_THREADS=1`
and cannot find casacore's measures data on its own. This command (installed by
`pip install -e .` as a console script, see pyproject.toml) sets the same environment the
workflow gives DP3 (`install.dp3_environment`) and replaces itself with `DP3.py`, so that
`DP3 results/NAME.ms/dp3.parset` reruns an output by hand (docs/outputs-and-resume.md),
and a signal sent to `DP3` reaches DP3 itself.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from dp3batch.dp3.install import dp3_environment
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.dp3.parset import literal


def wheel_dp3_script() -> Path | None:
    """The wheel's `DP3.py`, installed beside this Python interpreter."""
    script = Path(sys.executable).parent / "DP3.py"
    return script if os.access(script, os.X_OK) else None


def hand_rerun_command(executable: str, output: str, parset: str, parameters: DP3Parameters) -> str:
    """The shell line that reruns one output by hand into `<name>-rerun.ms` beside it.

    Not into the output itself: DP3 would replace it, completion record included, and the
    next run would process the MS again. Demixer instrument models go along with the new MS
    for the same reason. The wheel's `DP3.py` is named as this package's `DP3` command, which
    gives it the environment it needs."""
    program = "DP3" if Path(executable).name == "DP3.py" else executable
    target = Path(output)
    rerun = target.with_name(f"{target.name.removesuffix('.ms')}-rerun.ms")
    overrides = [f"msout={literal(rerun)}"]
    overrides += [
        f"{key}={literal(f'{rerun}/{name}')}" for key, name in parameters.instrument_models()
    ]
    return shlex.join([program, parset, *overrides])


def main() -> None:
    script = wheel_dp3_script()
    if script is None:
        sys.exit(
            f"DP3: the dp3 wheel's DP3.py is not installed in {Path(sys.executable).parent}; "
            "install it with `pip install -r requirements.txt`"
        )
    os.execve(script, [str(script), *sys.argv[1:]], dp3_environment())


if __name__ == "__main__":
    main()
