"""Unit tests of the dask task keys: a small batch shows each task's MS on the dashboard, a
large one shows one `dp3` bar; keys stay unique."""

from __future__ import annotations

import pytest
from distributed.utils import key_split, key_split_group
from dp3batch.dask_stage.task_keys import LABELLED_BATCH_LIMIT, TaskKeys

BATCH = "20261128T013815-4df9972f"


def keys_of(names: list[str], batch: str = BATCH) -> list[str]:
    keys = TaskKeys(names, batch)
    return [keys.of(name) for name in names]


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
    (key,) = keys_of([name])
    assert key_split(key) == shown


def test_a_hyphenated_name_looks_the_same_on_the_dashboard():
    (key,) = keys_of(["obs-SB-012"])
    assert key_split(key).replace("\u2011", "-") == "dp3 obs-SB-012"


def test_keys_are_unique_within_a_batch_even_for_names_that_look_alike():
    names = ["obs-1", "obs\u20111", "obs_1", "OBS_1", "obs 1"]
    assert len(set(keys_of(names))) == len(names)


def test_keys_differ_between_batches():
    (first,) = keys_of(["obs_1"])
    (second,) = keys_of(["obs_1"], "20261128T020000-0a1b2c3d")
    assert first != second
    assert key_split(first) == key_split(second) == "dp3 obs_1"


def test_a_batch_at_the_limit_is_labelled_by_ms():
    names = [f"obs-SB{index:04d}" for index in range(LABELLED_BATCH_LIMIT)]
    assert {key_split(key) for key in keys_of(names)} == {
        f"dp3 obs\u2011SB{index:04d}" for index in range(LABELLED_BATCH_LIMIT)
    }


@pytest.mark.parametrize(
    "name", ["obs_SB0001", "obs-SB-012", "deadbeef", "2024-01-01_scan-3", "x(1)", "a b", "in'q'"]
)
def test_a_larger_batch_shows_one_dp3_bar_and_the_key_still_names_the_ms(name):
    names = [name] + [f"other_{index}" for index in range(LABELLED_BATCH_LIMIT)]
    key = keys_of(names)[0]
    assert key_split(key) == key_split_group(key) == "dp3"
    assert key.endswith(f"-{BATCH}-{name}")


def test_a_thousand_ms_give_a_thousand_keys_and_one_label():
    names = [f"obs_SB{index:04d}" for index in range(1000)]
    keys = keys_of(names)
    assert len(set(keys)) == 1000
    assert {key_split(key) for key in keys} == {"dp3"}


def test_a_task_added_later_gets_a_key_of_its_own_in_the_same_style():
    small = TaskKeys(["obs_1", "obs_2"], BATCH)
    join = small.of("obs_3 join")
    assert key_split(join) == "dp3 obs_3 join"
    assert join not in {small.of("obs_1"), small.of("obs_2")}
    assert small.of("obs_3 join") == join
    large = TaskKeys([f"obs_{index}" for index in range(LABELLED_BATCH_LIMIT + 1)], BATCH)
    assert key_split(large.of("obs_x join")) == "dp3"
    assert large.of("obs_x join") not in {large.of(f"obs_{index}") for index in range(5)}
