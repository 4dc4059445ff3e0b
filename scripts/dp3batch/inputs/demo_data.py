"""The demo data set: generated on first use, so that a fresh clone runs end to end with no
data of its own (`make run`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DEMO_INPUTS = ["demo_data/*.ms"]
DEMO_DIR = "demo_data"
DEMO_COUNT = 4


def ensure_demo_data(config: dict[str, Any], base_dir: str | Path = ".") -> list[Path]:
    """Generate the demo data set when the configured inputs are the demo ones and it is
    missing, so that a fresh clone runs end to end with no data of its own."""
    if config.get("inputs") != DEMO_INPUTS:
        return []
    directory = Path(base_dir) / DEMO_DIR
    if list(directory.glob("*.ms")):
        return []
    from dp3batch.testing.synthetic_ms import SyntheticMSSpec, generate_measurement_set

    print(f"Generating the demo data set: {DEMO_COUNT} small MSs in {directory}/", file=sys.stderr)
    paths = []
    for index in range(DEMO_COUNT):
        path = directory / f"demo_{index}.ms"
        generate_measurement_set(path, SyntheticMSSpec(n_times=40, n_channels=32, seed=index))
        paths.append(path)
    return paths
