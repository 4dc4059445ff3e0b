"""Unit tests of the reliability rules: what may be deleted, which paths are refused, how
failures are named, the summary's format, and the order of dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dp3batch.inputs.tables import write_lock_holder


def fake_ms(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "table.dat").write_bytes(b"main")
    return path


# --- what the workflow deletes -------------------------------------------------------------


# --- paths -----------------------------------------------------------------------------------


# --- failures named, summary format, dispatch order --------------------------------------


# --- locks ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_write_lock_held_by_another_process_is_seen_without_waiting(tmp_path):
    from dp3batch.testing.synthetic_ms import SyntheticMSSpec, generate_measurement_set

    ms = generate_measurement_set(tmp_path / "a.ms", SyntheticMSSpec(n_times=10, n_channels=8))
    assert write_lock_holder(ms) is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom casacore import tables\n"
            "t = tables.table(sys.argv[1], readonly=False, lockoptions='permanent', ack=False)\n"
            "print('locked', flush=True)\ntime.sleep(60)\n",
            str(ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert write_lock_holder(ms) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert write_lock_holder(ms) is None


# --- the batch guard ------------------------------------------------------------------------
