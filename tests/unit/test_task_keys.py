"""Unit tests of the dask task keys: the dashboard shows each task's MS, keys stay unique."""

from __future__ import annotations

import pytest
from distributed.utils import key_split
from dp3batch.dask_stage.task_keys import task_keys

BATCH = "20261128T013815-4df9972f"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("obs_SB012", "dp3 obs_SB012"),
        ("L123456_SAP000_SB000_uv", "dp3 L123456_SAP000_SB000_uv"),
        ("obs-SB-012", "dp3 obs\u2011SB\u2011012"),
        ("2024-01-01_scan-3", "dp3 2024\u201101\u201101_scan\u20113"),
        ("a", "dp3 a"),
        ("deadbeef", "dp3 deadbeef"),
        ("x(1)", "dp3 x(1)"),
    ],
)
def test_the_dashboard_groups_each_task_under_its_ms(name, shown):
    (key,) = task_keys([name], BATCH).values()
    assert key_split(key) == shown


def test_a_hyphenated_name_looks_the_same_on_the_dashboard():
    (key,) = task_keys(["obs-SB-012"], BATCH).values()
    assert key_split(key).replace("\u2011", "-") == "dp3 obs-SB-012"


def test_keys_are_unique_within_a_batch_even_for_names_that_look_alike():
    names = ["obs-1", "obs\u20111", "obs_1", "OBS_1", "obs 1"]
    keys = task_keys(names, BATCH)
    assert list(keys) == names
    assert len(set(keys.values())) == len(names)


def test_keys_differ_between_batches():
    first = task_keys(["obs_1"], BATCH)["obs_1"]
    second = task_keys(["obs_1"], "20261128T020000-0a1b2c3d")["obs_1"]
    assert first != second
    assert key_split(first) == key_split(second) == "dp3 obs_1"


def test_a_thousand_ms_give_a_thousand_keys():
    names = [f"obs_SB{index:04d}" for index in range(1000)]
    keys = task_keys(names, BATCH)
    assert len(set(keys.values())) == 1000
    assert {key_split(key) for key in keys.values()} == {f"dp3 {name}" for name in names}
