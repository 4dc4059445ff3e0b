"""DP3 checks the chain's parameters once, before anything is submitted.

The workflow knows DP3's step types but not every key of every step; DP3 does
(`checkparset=1`), but only when it runs, so a misspelled key would fail every MS of a batch.
So DP3 is run once on the first pending MS, limited to one time slot, into a scratch
output that is removed afterwards; keys it did not use are a configuration error, named.
Any other failure of that run is left to the MS's own run (it may be the MS, not the chain).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from dp3batch.dp3 import as_parset, run_parameters
from dp3batch.dp3_install import dp3_environment
from dp3batch.dp3_parameters import DP3Parameters
from dp3batch.errors import ConfigError

CHECK_TIMEOUT_SECONDS = 30
# DP3's warning, then one "    - key" line per unused key.
_UNUSED_HEADER = "the following parset keywords were not used"


def unused_keys(dp3_output: str) -> list[str]:
    """The keys DP3 listed as not used (misspelled or unknown), in its order."""
    keys: list[str] = []
    listing = False
    for line in dp3_output.splitlines():
        if _UNUSED_HEADER in line:
            listing = True
            continue
        if listing:
            stripped = line.strip()
            if stripped.startswith("- "):
                keys.append(stripped[2:].strip())
            elif stripped and "misspelled" not in stripped:
                listing = False
    return keys


def check_parameters_with_dp3(
    executable: str, parameters: DP3Parameters, sample_input: Path
) -> None:
    """Raise ConfigError naming the keys DP3 does not use (checkparset is in `parameters`)."""
    with tempfile.TemporaryDirectory(prefix="dp3batch-parset-check-") as scratch:
        run = run_parameters(parameters, str(sample_input), f"{scratch}/check.ms", 1)
        run = [(key, value) for key, value in run if key != "msin.ntimes"] + [("msin.ntimes", "1")]
        parset = Path(scratch) / "check.parset"
        parset.write_text(as_parset(run))
        try:
            completed = subprocess.run(
                [executable, str(parset)],
                env=dp3_environment(),
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return  # not the chain's fault that we know of: each MS's run will tell
    keys = unused_keys(completed.stdout + completed.stderr)
    if completed.returncode != 0 and keys:
        raise ConfigError(
            f"steps: DP3 does not know the parameter(s) {', '.join(keys)} (misspelled? see "
            "the DP3 documentation of that step); checked by DP3 on "
            f"{sample_input.name}, nothing was processed"
        )
