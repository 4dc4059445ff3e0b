"""DP3 checks the chain's parameters once, before anything is submitted.

The workflow knows DP3's step types but not every key of every step; DP3 does
(`checkparset=1`), but only when it runs, so a misspelled key would fail every MS of a batch.
So DP3 is run once on the first pending MS, limited to one time slot, into a scratch
output that is removed afterwards; keys it did not use are a configuration error, named.
Any other failure of that run is left to the MS's own run (it may be the MS, not the chain).

Parameters the installed dp3 wheel has accepted once are not checked again: the check costs
a DP3 start (0.2 s) on the first run of every batch, and a chain is usually run on many.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
from pathlib import Path

from dp3batch.config.errors import ConfigError
from dp3batch.dp3.install import (
    casarc_directories,
    dp3_environment,
    wheel_version_key,
    writable_directory,
)
from dp3batch.dp3.parameters import DP3Parameters
from dp3batch.dp3.parset import write_parset
from dp3batch.dp3.translation import run_parameters
from dp3batch.remembered import RememberedKeys

CHECK_TIMEOUT_SECONDS = 30
KILL_WAIT_SECONDS = 5
# Beside the casarc: the parameters the installed wheel accepted (newest last, this many).
ACCEPTED_FILE = "dp3-accepted-parameters.json"
ACCEPTED_KEPT = 200
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


def _accepted_key(executable: str, parameters: DP3Parameters) -> str | None:
    """What identifies these parameters given to this dp3 wheel; None for any other DP3 (a
    wrapper may run another DP3 tomorrow: it is always asked)."""
    wheel = wheel_version_key(executable)
    if wheel is None:
        return None
    text = "\n".join([wheel, *(f"{key}={value}" for key, value in parameters.pairs())])
    return hashlib.sha256(text.encode()).hexdigest()


def _accepted() -> RememberedKeys:
    return RememberedKeys(writable_directory(casarc_directories()) / ACCEPTED_FILE, ACCEPTED_KEPT)


class ParameterCheck:
    """DP3's check of the parameters, running in the background while planning goes on (it
    takes as long as starting DP3, about 0.3 s). `result()` waits for it."""

    def __init__(self, executable: str, parameters: DP3Parameters, sample_input: Path):
        self.sample_input = sample_input
        self.scratch: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self._key = _accepted_key(executable, parameters)
        if self._key is not None and self._key in _accepted():
            return  # this wheel has run these very parameters without a complaint
        self.scratch = tempfile.TemporaryDirectory(prefix="dp3batch-parset-check-")
        run = run_parameters(parameters, str(sample_input), f"{self.scratch.name}/check.ms", 1)
        run = [(key, value) for key, value in run if key != "msin.ntimes"] + [("msin.ntimes", "1")]
        parset = Path(self.scratch.name) / "check.parset"
        write_parset(parset, run)
        try:
            self._process = subprocess.Popen(
                [executable, str(parset)],
                env=dp3_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self._process = None  # not the chain's fault that we know of: each MS's run will tell

    @property
    def ran(self) -> bool:
        """Whether DP3 was started (not when it accepted these parameters before)."""
        return self.scratch is not None

    def result(self) -> None:
        """Raise ConfigError naming the keys DP3 does not use."""
        try:
            if self._process is None:
                return
            try:
                output, _ = self._process.communicate(timeout=CHECK_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                return  # each MS's own run will tell
            keys = unused_keys(output)
            if self._process.returncode != 0 and keys:
                raise ConfigError(
                    f"steps: DP3 does not know the parameter(s) {', '.join(keys)} (misspelled? "
                    "see the DP3 documentation of that step); checked by DP3 on "
                    f"{self.sample_input.name}, nothing was processed"
                )
            if self._process.returncode == 0 and not keys and self._key is not None:
                _accepted().add(self._key)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the check if it still runs (planning failed meanwhile), remove its scratch."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed: it cannot linger
                self._process.communicate(timeout=KILL_WAIT_SECONDS)
        if self.scratch is not None:
            self.scratch.cleanup()
