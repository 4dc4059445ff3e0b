"""Reading DP3's list of unused parset keys, and values DP3 could not be given."""

from __future__ import annotations

import pytest
from dp3batch.config import ConfigError, parse_steps
from dp3batch.parset_check import unused_keys

DP3_OUTPUT = """MSWriter msout.
  use thread:     true

*** WARNING: the following parset keywords were not used ***
             maybe they are misspelled
    - averager.timestpe
    - msin.foo

Traceback (most recent call last):
RuntimeError: Unused parset keywords found
"""


def test_unused_keys_are_read_from_dp3s_warning():
    assert unused_keys(DP3_OUTPUT) == ["averager.timestpe", "msin.foo"]


def test_no_warning_no_unused_keys():
    assert unused_keys("MSWriter msout.\n  use thread: true\n- not a key\n") == []


def test_a_nul_byte_in_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"steps\[0\] \(Averager\)\.minperc: .*NUL byte"):
        parse_steps([{"Averager": {"minperc": "1\x000"}}])
