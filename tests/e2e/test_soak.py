"""The soak test of issue 26: one `dask scheduler` kept up for batch after batch while its
workers are killed and restarted (between and during batches, also the seed's
`--nworkers 4` without --nthreads), one is frozen mid-DP3, one cannot start DP3, and the
scheduler itself is restarted once (dp3batch.testing.soak; benchmarks/soak.py runs a
longer one). Every batch ends within its bound with a true report, every output equals a
clean run's, the scheduler's plugins do not grow, no traceback, no DP3 left.

A worker job on a real Slurm that joins late is in test_slurm.py."""

from __future__ import annotations

import pytest
from conftest import BIN, make_inputs
from dp3batch.dp3.install import wheel_aoflagger_strategy
from dp3batch.testing.soak import (
    Soak,
    add_a_worker,
    freeze_its_worker,
    kill_a_worker_command_and_start_another,
    kill_its_worker,
    restart_the_scheduler,
)

# DP3 takes a few seconds on each (more on a loaded machine).
MS = {"n_antennas": 16, "n_times": 80, "n_channels": 64}
DP3 = str(BIN / "DP3.py")


# Eight batches of a few minutes in all, more on a loaded machine.
@pytest.mark.timeout(1500)
def test_one_scheduler_batch_after_batch_with_sick_workers(tmp_path):
    inputs = make_inputs(tmp_path / "inputs", 4, **MS)
    steps = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": wheel_aoflagger_strategy(DP3)}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]
    soak = Soak(tmp_path, inputs, steps, DP3)
    clean = soak.clean_run()
    assert not clean.problems, clean.problems
    try:
        soak.start(workers=1)
        # A worker joins mid-batch; then one is killed mid-DP3 (its nanny restarts it).
        soak.batch("joins-late", fault=add_a_worker)
        soak.batch("worker-killed", fault=kill_its_worker)
        # The seed's `--nworkers 4` without --nthreads: 4 x 2 threads on 2 cores.
        soak.restart_workers(count=4, threads=None)
        soak.batch(
            "nworkers-4",
            fault=kill_a_worker_command_and_start_another,
            expect=("--nthreads so that workers x threads = cores",),
        )
        soak.restart_workers(count=2)
        soak.batch("frozen", fault=freeze_its_worker, expect=("run again elsewhere",))
        soak.restart_workers(count=1)
        soak.cluster.start_workers(count=1, DP3BATCH_TEST_BROKEN_DP3="1")
        soak.cluster.wait_for_workers(2)
        soak.batch("broken-dp3", expect=("cannot open shared object file",))
        soak.restart_workers(count=2)
        soak.batch(
            "scheduler-restarted",
            fault=restart_the_scheduler,
            succeeds=False,
            bound=120,
            expect=("restarted",),
        )
        soak.restart_workers(count=2)
        soak.batch("after-restart", same_directory_as="scheduler-restarted")
    finally:
        soak.cluster.stop()
    report = "\n".join(
        f"{batch.name}: exit {batch.exit_code} in {batch.seconds:.0f} s, {batch.done}/"
        f"{batch.total} done, {batch.plugins} plugin(s); {batch.problems}"
        for batch in soak.batches
    )
    print(report)
    assert all(not batch.problems for batch in soak.batches), report
    # The rerun after the restart finished what the interrupted batch had not.
    assert soak.batches[-1].done == len(inputs), report
    assert len({batch.plugins for batch in soak.batches}) == 1, report
