"""The output check: expected shape from the input grid, the steps and DP3's own plan."""

from __future__ import annotations

import pytest
from dp3batch.dask_stage.output_check import (
    CannotDerive,
    ExpectedShape,
    InputGrid,
    count_baselines,
    derive_expected_shape,
    dp3_planned_shape,
    expected_output_shape,
    output_problems,
)
from dp3batch.dp3.parameters import DP3Parameters, DP3Step
from dp3batch.inputs.tables import Shape

GRID = InputGrid(times=20, baselines=15, channels=16, interval=2.0)


def chain(*steps: DP3Step) -> DP3Parameters:
    return DP3Parameters(msin={}, msout={}, steps=steps)


def averager(name: str = "averager", kind: str = "averager", **params) -> DP3Step:
    return DP3Step(name, kind, params)


WRITER_LOG = """MsReader
  ntimes:             20
MSWriter msout.
  output MS:      /tmp/o.ms
  nchan:          8
  ncorrelations:  4
  nbaselines:     15
  ntimes:         7
  time interval:  6
  DATA column:    DATA
Processing 20 time slots ...
"""


def test_averaging_divides_the_grid_and_keeps_a_partial_last_slot():
    parameters = chain(averager(timestep=3, freqstep=2))
    assert derive_expected_shape(GRID, parameters) == ExpectedShape(7, 15, 8, 6.0)


def test_averaging_steps_multiply():
    parameters = chain(averager(timestep=2), averager("demixer", "demixer", timestep=5))
    assert derive_expected_shape(GRID, parameters) == ExpectedShape(2, 15, 16, 20.0)


def test_resolutions_are_left_to_dp3():
    parameters = chain(averager(timeresolution=5, freqresolution="1MHz"))
    assert derive_expected_shape(GRID, parameters) == ExpectedShape(None, 15, None, None)


def test_several_windows_without_a_band_cannot_be_derived():
    with pytest.raises(CannotDerive, match="2 spectral windows"):
        derive_expected_shape(InputGrid(20, 15, 16, 2.0, windows_in_rows=2), chain())


def test_dp3s_plan_is_read_from_the_mswriter_summary():
    assert dp3_planned_shape(WRITER_LOG) == ExpectedShape(7, 15, 8, 6.0)
    assert dp3_planned_shape("MsReader\n  ntimes: 20\n") is None


def test_dp3s_plan_fills_what_the_steps_leave_open():
    expected, problems = expected_output_shape(
        ExpectedShape(None, 15, None, None), ExpectedShape(7, 15, 8, 6.0)
    )
    assert (expected, problems) == (ExpectedShape(7, 15, 8, 6.0), [])


def test_a_disagreement_with_dp3s_plan_is_a_problem():
    _, problems = expected_output_shape(ExpectedShape(10, 15, 8, 4.0), ExpectedShape(7, 15, 8, 6.0))
    assert "DP3 planned 7 times but the input and steps give 10" in problems


def test_what_nobody_can_derive_fails_the_check():
    expected, problems = expected_output_shape(ExpectedShape(None, 15, 16, None), None)
    assert expected.times is None
    assert any(problem.startswith("cannot derive the expected times") for problem in problems)
    after = Shape(rows=300, times=20, channels=16, interval=2.0, channel_width=1.0)
    assert output_problems(after, expected)  # an unknown expectation never passes


def test_a_complete_output_passes():
    after = Shape(rows=7 * 15, times=7, channels=8, interval=6.0, channel_width=4e5)
    assert output_problems(after, ExpectedShape(7, 15, 8, 6.0)) == []


def test_a_truncated_output_fails():
    after = Shape(rows=7 * 15 - 4, times=7, channels=8, interval=6.0, channel_width=4e5)
    assert output_problems(after, ExpectedShape(7, 15, 8, 6.0)) == ["101 rows, expected 105"]


def test_an_output_short_of_time_slots_fails():
    after = Shape(rows=5 * 15, times=5, channels=8, interval=6.0, channel_width=4e5)
    problems = output_problems(after, ExpectedShape(7, 15, 8, 6.0))
    assert problems == ["5 time slots, expected 7", "75 rows, expected 105"]


def test_an_empty_output_fails():
    after = Shape(rows=0, times=0, channels=8, interval=0.0, channel_width=4e5)
    assert output_problems(after, ExpectedShape(7, 15, 8, 6.0)) == ["the output has no rows"]


def test_baselines_are_the_distinct_antenna_pairs_of_the_rows():
    import numpy as np

    generator = np.random.default_rng(7)
    antenna1 = generator.integers(-2, 40, 5000).astype(np.int32)
    antenna2 = generator.integers(0, 300, 5000).astype(np.int32)
    expected = len(set(zip(antenna1.tolist(), antenna2.tolist(), strict=True)))
    assert count_baselines(antenna1, antenna2) == expected
    assert count_baselines(antenna1[:0], antenna2[:0]) == 0
    # Each pair once per time slot, autocorrelations included.
    first, second = np.triu_indices(6)
    assert count_baselines(np.tile(first, 20), np.tile(second, 20)) == 21
