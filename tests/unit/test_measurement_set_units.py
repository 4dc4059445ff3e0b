"""Unit tests of measurement_set's pure helpers."""

from __future__ import annotations

import numpy as np
import pytest
from dp3batch.inputs.tables import distinct_count

RNG = np.random.default_rng(7)
TIMES = np.repeat(np.arange(50) * 2.0, 21)  # time order, 21 baselines per slot


@pytest.mark.parametrize(
    "values",
    [
        TIMES,
        TIMES[::-1],  # descending
        RNG.permutation(TIMES),  # no order at all
        np.concatenate([TIMES, TIMES]),  # time order twice (two observations appended)
        np.array([5.0]),
        np.array([], dtype=float),
        np.array([1.0, np.nextafter(1.0, 2.0)]),  # values that differ in the last bit
    ],
    ids=["time order", "descending", "shuffled", "repeated", "one", "none", "last bit"],
)
def test_distinct_count_is_numpys_in_any_order(values):
    assert distinct_count(values) == len(np.unique(values))
