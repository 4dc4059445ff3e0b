"""AOFlagger's default strategy per MS: AOFlagger's name rule, and what is fingerprinted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.install import aoflagger_default_strategy_name
from dp3batch.dp3.telescope import PerMSParameters
from dp3batch.dp3.translation import chain_parameters

WHEEL_DP3 = str(Path(sys.executable).parent / "DP3.py")


@pytest.mark.parametrize(
    ("telescope", "strategy"),
    [
        ("LOFAR", "lofar-default.lua"),
        ("lofar", "lofar-default.lua"),
        ("EVLA", "jvla-default.lua"),
        ("Arecibo 305m", "arecibo-default.lua"),
        ("PKS", "parkes-default.lua"),
        ("ATPKSMB", "parkes-default.lua"),
        ("NenuFAR", "nenufar-default.lua"),
        ("LOFAR ", "generic-default.lua"),  # AOFlagger compares the whole name
        ("MeerKAT", "generic-default.lua"),
        ("", "generic-default.lua"),
    ],
)
def test_default_strategy_name_follows_aoflagger(telescope, strategy):
    assert aoflagger_default_strategy_name(telescope) == strategy


def _per_ms(steps, executable=WHEEL_DP3) -> PerMSParameters:
    chain = parse_steps(steps)
    shared = chain_parameters(chain)
    files = {key for key, _ in shared.file_parameters()}
    return PerMSParameters(chain, None, executable, shared, files)


def test_each_telescope_gets_its_strategy_and_a_fingerprint_of_its_own():
    per_ms = _per_ms([{"PreFlagger": None}, {"AOFlagger": None}])
    assert per_ms.varies
    lofar, wsrt = per_ms.for_telescope("LOFAR"), per_ms.for_telescope("WSRT")
    assert Path(lofar.aoflagger_strategies["aoflagger"]).name == "lofar-default.lua"
    assert Path(wsrt.aoflagger_strategies["aoflagger"]).name == "wsrt-default.lua"
    assert lofar.fingerprint != wsrt.fingerprint
    assert (
        dict(lofar.parameters.pairs())["aoflagger.strategy"]
        == lofar.aoflagger_strategies["aoflagger"]
    )
    # The same strategy is the same parameters, whatever the spelling of the name.
    assert per_ms.for_telescope("lofar").fingerprint == lofar.fingerprint
    assert per_ms.for_telescope("MeerKAT").fingerprint == per_ms.for_telescope("").fingerprint


def test_a_strategy_the_user_names_is_kept_for_every_telescope(tmp_path):
    mine = tmp_path / "mine.lua"
    mine.write_text("-- strategy\n")
    per_ms = _per_ms([{"AOFlagger": {"strategy": str(mine)}}])
    assert not per_ms.varies
    assert dict(per_ms.for_telescope("LOFAR").parameters.pairs())["aoflagger.strategy"] == str(mine)


def test_a_wrapper_leaves_the_choice_to_dp3(tmp_path):
    per_ms = _per_ms([{"AOFlagger": None}], executable=str(tmp_path / "dp3-in-container"))
    assert not per_ms.varies
    assert "aoflagger.strategy" not in dict(per_ms.for_telescope("LOFAR").parameters.pairs())
