"""The long soak of issue 26: one `dask scheduler` for many batches (20 by default) while
its workers are killed and restarted between and during batches (also the seed's
`--nworkers 4` without --nthreads), workers join late, one is SIGSTOPped mid-DP3, one
cannot start DP3, and the scheduler is restarted once. The short version is the soak test
(tests/e2e/test_soak.py); both use dp3batch.testing.soak.

    python benchmarks/soak.py                  # 20 batches of 6 MSs (about 20 minutes here)
    python benchmarks/soak.py --batches 40 --count 8

For every batch it prints (and writes to benchmarks/results/soak.json) its exit code, its
time, how many MSs it completed, the scheduler's worker plugins, and what was wrong with it:
a bound overrun, a report that does not match the records, an output that differs from the
clean run's, a traceback, a DP3 left running, plugins that grew. It exits 1 if any batch had
a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This checkout's package, whichever is installed.
sys.path.insert(0, str(REPO / "scripts"))

from dp3batch.dp3.install import find_dp3_executable, wheel_aoflagger_strategy  # noqa: E402
from dp3batch.testing.harness import make_inputs  # noqa: E402
from dp3batch.testing.soak import (  # noqa: E402
    Soak,
    add_a_worker,
    freeze_its_worker,
    kill_a_worker_command_and_start_another,
    kill_its_worker,
    restart_the_scheduler,
)

RESULTS = REPO / "benchmarks" / "results"
MS = {"n_antennas": 16, "n_times": 200, "n_channels": 64}


def plan(batches: int) -> list[str]:
    """Which situation each batch meets: a cycle through them, the scheduler's restart
    once, in the middle."""
    cycle = [
        "plain",
        "worker-killed",
        "nworkers-4",
        "joins-late",
        "frozen",
        "broken-dp3",
        "command-killed",
        "between-restart",
    ]
    situations = [cycle[index % len(cycle)] for index in range(batches)]
    middle = batches // 2
    situations[middle : middle + 2] = ["scheduler-restarted", "after-restart"]
    return situations[:batches]


def run_batch(soak: Soak, index: int, situation: str, previous: str | None) -> None:
    name = f"{index:02d}-{situation}"
    if situation == "nworkers-4":
        soak.restart_workers(count=4, threads=None)
        soak.batch(name, fault=kill_its_worker)
    elif situation == "broken-dp3":
        soak.restart_workers(count=1)
        soak.cluster.start_workers(count=1, DP3BATCH_TEST_BROKEN_DP3="1")
        soak.cluster.wait_for_workers(2)
        soak.batch(name, expect=("cannot open shared object file",))
    elif situation == "scheduler-restarted":
        soak.restart_workers(count=2)
        soak.batch(name, fault=restart_the_scheduler, succeeds=False, bound=180)
    elif situation == "after-restart":
        soak.restart_workers(count=2)
        soak.batch(name, same_directory_as=previous)
    else:
        if situation in ("plain", "frozen", "worker-killed", "between-restart"):
            soak.restart_workers(count=2)
        if situation == "joins-late":
            soak.restart_workers(count=1)
        fault = {
            "worker-killed": kill_its_worker,
            "joins-late": add_a_worker,
            "frozen": freeze_its_worker,
            "command-killed": kill_a_worker_command_and_start_another,
        }.get(situation)
        soak.batch(name, fault=fault)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--count", type=int, default=6, help="MSs per batch")
    parser.add_argument("--silence", type=float, default=10, help="worker_silence_seconds")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    arguments = parser.parse_args()
    dp3 = find_dp3_executable()
    steps = [
        {"PreFlagger": None},
        {"AOFlagger": {"strategy": wheel_aoflagger_strategy(dp3)}},
        {"Averager": {"timestep": 2, "freqstep": 2}},
    ]
    directory = Path(tempfile.mkdtemp(prefix="dp3batch-soak-"))
    started = time.monotonic()
    inputs = make_inputs(directory / "inputs", arguments.count, **MS)
    soak = Soak(directory, inputs, steps, dp3)
    soak.silence_seconds = arguments.silence
    clean = soak.clean_run()
    if clean.problems:
        print(clean.problems)
        return 1
    situations = plan(arguments.batches)
    try:
        soak.start(workers=2)
        previous = None
        for index, situation in enumerate(situations):
            run_batch(soak, index, situation, previous)
            figures = soak.batches[-1]
            print(
                f"{figures.name:28s} exit {figures.exit_code} in {figures.seconds:6.1f} s, "
                f"{figures.done}/{figures.total} done, {figures.plugins} plugin(s)"
                + (f"; PROBLEMS: {figures.problems}" if figures.problems else ""),
                flush=True,
            )
            previous = figures.name
    finally:
        soak.cluster.stop()
    failed = [figures for figures in soak.batches if figures.problems]
    summary = {
        "batches": len(soak.batches),
        "ms_per_batch": arguments.count,
        "worker_silence_seconds": arguments.silence,
        "clean_run_seconds": round(clean.seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "plugins": sorted({figures.plugins for figures in soak.batches}),
        "batches_with_problems": len(failed),
        "each": [asdict(figures) for figures in soak.batches],
        "directory": str(directory),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(soak.batches)} batches in {summary['total_seconds']:.0f} s; plugins per batch "
        f"{summary['plugins']}; {len(failed)} batch(es) with problems"
    )
    if not arguments.keep and not failed:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
