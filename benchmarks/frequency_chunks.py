"""Benchmark of issue 28: frequency chunks against whole MSs, side by side in one run (the
machines are shared and noisy: compare the ratios, not the absolute times).

    python benchmarks/frequency_chunks.py                 # both cases, one round each
    python benchmarks/frequency_chunks.py --size-gb 0.8 --rounds 2

- one: 1 MS on an embedded 2 x 1 cluster, unchunked (one task: one slot idles) against 2
  chunks (both slots busy, then the join). Chunking should nearly halve the wall time.
- two: 2 MSs on an embedded 2 x 1 cluster, unchunked against 4 chunks each (both slots are
  busy either way: what chunking costs, its joins mostly).

The chain is issue 14's: PreFlagger, AOFlagger, Averager (timestep 2, freqstep 4); 64
channels, so each chunk holds whole averaged channels. Prints the wall times and their
ratios, and writes benchmarks/results/frequency_chunks.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmark import copies_of, machine, ms_bytes, run_workflow  # noqa: E402
from dp3batch.testing.harness import Workflow  # noqa: E402
from dp3batch.testing.synthetic_ms import measurement_set_size_spec  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
STEPS = [{"PreFlagger": {}}, {"AOFlagger": {}}, {"Averager": {"timestep": 2, "freqstep": 4}}]
CHANNELS = 64
CHANNEL_WIDTH = 195312.5  # the synthetic MSs' (Hz)
CLUSTER = {"n_workers": 2, "threads_per_worker": 1}


def width_for(chunks: int) -> float:
    """The `frequency_chunk_hz` that cuts the 64 channels into `chunks` equal chunks."""
    return CHANNELS // chunks * CHANNEL_WIDTH


def timed(scratch: Path, inputs: Path, label: str, round_: int, chunks: int | None) -> float:
    workflow = Workflow(scratch / f"{label}-{round_}")
    workflow.config = {
        "inputs": [str(inputs / "*.ms")],
        "output_dir": "results",
        "steps": STEPS,
        "local_cluster": CLUSTER,
        "frequency_chunk_hz": None if chunks is None else width_for(chunks),
    }
    seconds, _ = run_workflow(workflow)
    return seconds


def case(scratch: Path, name: str, count: int, chunks: int, size: float, rounds: int) -> dict:
    """`count` MSs of `size` bytes: unchunked against `chunks` chunks each, in turn."""
    spec = measurement_set_size_spec(int(size), n_channels=CHANNELS)
    inputs = copies_of(scratch / f"{name}-inputs", spec, count)
    times: dict[str, list[float]] = {"unchunked": [], f"{chunks} chunks": []}
    for round_ in range(rounds):
        # Each contender in a directory of its own (no output of another case to replace).
        times["unchunked"].append(
            timed(scratch, inputs[0].parent, f"{name}-unchunked", round_, None)
        )
        times[f"{chunks} chunks"].append(
            timed(scratch, inputs[0].parent, f"{name}-chunks{chunks}", round_, chunks)
        )
    medians = {label: statistics.median(values) for label, values in times.items()}
    return {
        "case": name,
        "measurement_sets": count,
        "ms_bytes": ms_bytes(inputs[0]),
        "chunks_per_ms": chunks,
        "seconds": times,
        "median_seconds": medians,
        "ratio_chunked_to_unchunked": round(medians[f"{chunks} chunks"] / medians["unchunked"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.4, help="bytes of each MS, in GB")
    parser.add_argument("--rounds", type=int, default=1)
    arguments = parser.parse_args(argv)
    size = arguments.size_gb * 1e9
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dp3batch-chunks-") as directory:
        scratch = Path(directory)
        results = [
            case(scratch, "one", 1, 2, size, arguments.rounds),
            case(scratch, "two", 2, 4, size, arguments.rounds),
        ]
    print(f"{'case':<6} {'MSs':>4} {'GB each':>8} {'unchunked s':>12} {'chunked s':>10} ratio")
    for result in results:
        medians = list(result["median_seconds"].values())
        print(
            f"{result['case']:<6} {result['measurement_sets']:>4} "
            f"{result['ms_bytes'] / 1e9:>8.2f} {medians[0]:>12.1f} {medians[1]:>10.1f} "
            f"{result['ratio_chunked_to_unchunked']:.2f} ({result['chunks_per_ms']} chunks/MS)"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine(),
        "rounds": arguments.rounds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "cases": results,
    }
    (RESULTS / "frequency_chunks.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
