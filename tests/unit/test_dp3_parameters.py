"""DP3's parameters as typed data: the formatted pairs are exactly those of the translation
before the structure existed (the parameters fingerprint of every completion record is made
from them, so an output must not turn pending by a refactoring), and the structure survives
the trip through the batch specification (JSON) and to a worker (pickle) unchanged."""

from __future__ import annotations

import datetime
import json
import pickle
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.parameters import DP3Parameters, parameters_fingerprint
from dp3batch.dp3.telescope import PerMSParameters
from dp3batch.dp3.translation import chain_parameters, run_parameters
from h5parm_writer import identity_soltabs, write_h5parm

ANTENNAS = ["CS001HBA0", "CS002HBA0", "CS003HBA0"]
WHEEL_DP3 = str(Path(sys.executable).parent / "DP3.py")
# The workflow's choice for an AOFlagger step without a strategy (see ms_parameters).
CHOSEN_STRATEGY = "/opt/strategies/lofar-default.lua"
# Stands for the extra inputs directory (a temporary one) in the pinned values.
EXTRA = "EXTRA"


def chains(extra: Path) -> dict[str, list]:
    """Representative chains: flagging and averaging with msin/msout parameters and a
    strategy the workflow chooses; ApplyCal on three H5Parm layouts; Demixer twice; repeated
    step types (also in the reference format); a band of the steps' own; no steps."""
    return {
        "flagging": [
            {"MsIn": {"datacolumn": "CORRECTED_DATA", "autoweight": False, "baseline": "[CS*&]"}},
            {"MsOut": {"overwrite": True, "storagemanager": "dysco"}},
            {"PreFlagger": {"freqrange": ["100..110 MHz", "120..121 MHz"], "amplmax": 1e-05}},
            {"AOFlagger": {"strategy": "lofar.lua", "memoryperc": 40.5, "keepstatistics": True}},
            {"AOFlagger": None},
            {"Averager": {"timestep": 2, "freqstep": 4, "minperc": 0.5}},
        ],
        "applycal": [
            {"ApplyCal": {"parmdb": "diagonal.h5", "updateweights": True}},
            {"ApplyCal": {"parmdb": str(extra / "full.h5")}},
            {"ApplyCal": {"parmdb": "phase.h5", "correction": "phase000", "invert": False}},
        ],
        "demixer": [
            {
                "Demixer": {
                    "skymodel": "sky.txt",
                    "subtractsources": ["CasA", "CygA"],
                    "demixtimestep": 5,
                    "demixfreqstep": 8,
                    "timestep": 2,
                }
            },
            {"Averager": {"freqresolution": "1MHz"}},
            {"Demixer": {"skymodel": "sky.txt", "subtractsources": ["CasA"]}},
        ],
        "repeated": [
            {"PreFlagger": None},
            {"Averager": {"timestep": 2}},
            {"PreFlagger": {"baseline": "CS001*"}},
            {"Averager": {"freqstep": 2}},
            {"step": "preflagger", "frequency_ranges_mhz": [{"start": 100, "stop": 101.5}]},
            {"Predict": {"sourcedb": "models/model.sourcedb"}},
            {"Averager": {"timeresolution": 10}},
        ],
        "band": [{"MsIn": {"band": 1}}, {"Averager": {"timestep": 2}}],
        "empty": [],
    }


class Pinned(NamedTuple):
    pairs: list[tuple[str, str]]
    fingerprint: str
    file_keys: list[str]
    # What run_parameters puts before the pairs (msin /in/a.ms, msout /out/a.ms, 3 threads;
    # a 2.5 GB memory bound for the flagging chain).
    run_prefix: list[tuple[str, str]]


# Computed by the translation as it was before DP3Parameters (main at 2fda4b4).
PINNED = {
    "flagging": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("msin.datacolumn", "CORRECTED_DATA"),
            ("msin.autoweight", "false"),
            ("msin.baseline", "[CS*&]"),
            ("msout.overwrite", "true"),
            ("msout.storagemanager", "dysco"),
            ("steps", "[preflagger,aoflagger,aoflagger2,averager]"),
            ("preflagger.type", "preflagger"),
            ("preflagger.freqrange", "[100..110 MHz,120..121 MHz]"),
            ("preflagger.amplmax", "1e-05"),
            ("aoflagger.type", "aoflagger"),
            ("aoflagger.strategy", "EXTRA/lofar.lua"),
            ("aoflagger.memoryperc", "40.5"),
            ("aoflagger.keepstatistics", "true"),
            ("aoflagger2.type", "aoflagger"),
            ("aoflagger2.strategy", "/opt/strategies/lofar-default.lua"),
            ("averager.type", "averager"),
            ("averager.timestep", "2"),
            ("averager.freqstep", "4"),
            ("averager.minperc", "0.5"),
        ],
        fingerprint="52939b6e12af49c958504d6c9faa2397d3aabc4d11509229da7d5e091e115894",
        file_keys=["aoflagger.strategy", "aoflagger2.strategy"],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
            ("aoflagger2.memorymax", "2.50"),
        ],
    ),
    "applycal": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("steps", "[applycal,applycal2,applycal3]"),
            ("applycal.type", "applycal"),
            ("applycal.parmdb", "EXTRA/diagonal.h5"),
            ("applycal.updateweights", "true"),
            ("applycal.steps", "[amplitude,phase]"),
            ("applycal.amplitude.correction", "amplitude000"),
            ("applycal.phase.correction", "phase000"),
            ("applycal2.type", "applycal"),
            ("applycal2.parmdb", "EXTRA/full.h5"),
            ("applycal2.correction", "fulljones"),
            ("applycal2.soltab", "[amplitude000,phase000]"),
            ("applycal3.type", "applycal"),
            ("applycal3.parmdb", "EXTRA/phase.h5"),
            ("applycal3.correction", "phase000"),
            ("applycal3.invert", "false"),
        ],
        fingerprint="acbc3e2efc3d80604bc5225092bc3197be8bda896b88314e2b2f8cf8684df3d5",
        file_keys=["applycal.parmdb", "applycal2.parmdb", "applycal3.parmdb"],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
        ],
    ),
    "demixer": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("steps", "[demixer,averager,demixer2]"),
            ("demixer.type", "demixer"),
            ("demixer.skymodel", "EXTRA/sky.txt"),
            ("demixer.subtractsources", "[CasA,CygA]"),
            ("demixer.demixtimestep", "5"),
            ("demixer.demixfreqstep", "8"),
            ("demixer.timestep", "2"),
            ("averager.type", "averager"),
            ("averager.freqresolution", "1MHz"),
            ("demixer2.type", "demixer"),
            ("demixer2.skymodel", "EXTRA/sky.txt"),
            ("demixer2.subtractsources", "[CasA]"),
        ],
        fingerprint="47cfb14be1bdc9e2d1322f7380ef797dc2da164c55b826f87f7257f67bcf5e32",
        file_keys=["demixer.skymodel", "demixer2.skymodel"],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
            ("demixer.instrumentmodel", "/out/a.ms/instrument"),
            ("demixer2.instrumentmodel", "/out/a.ms/instrument_demixer2"),
        ],
    ),
    "repeated": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("steps", "[preflagger,averager,preflagger2,averager2,preflagger3,predict,averager3]"),
            ("preflagger.type", "preflagger"),
            ("averager.type", "averager"),
            ("averager.timestep", "2"),
            ("preflagger2.type", "preflagger"),
            ("preflagger2.baseline", "CS001*"),
            ("averager2.type", "averager"),
            ("averager2.freqstep", "2"),
            ("preflagger3.type", "preflagger"),
            ("preflagger3.freqrange", "[100..101.5 MHz]"),
            ("predict.type", "predict"),
            ("predict.sourcedb", "EXTRA/models/model.sourcedb"),
            ("averager3.type", "averager"),
            ("averager3.timeresolution", "10"),
        ],
        fingerprint="d1f73c006b6329916f32b4aa7475471a21869b9689e2f323b55c76a0f0699f22",
        file_keys=["predict.sourcedb"],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
        ],
    ),
    "band": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("msin.band", "1"),
            ("steps", "[averager]"),
            ("averager.type", "averager"),
            ("averager.timestep", "2"),
        ],
        fingerprint="c999821c2dfb9b20c4a416d9e5566748c2f0b6925c4ea27ee540719af9fcad50",
        file_keys=[],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
        ],
    ),
    "empty": Pinned(
        pairs=[
            ("checkparset", "1"),
            ("steps", "[]"),
        ],
        fingerprint="5a986ac93de28f7fa383a1e3f0f18ee0abd0585ec70126d16420c33376cb6c8e",
        file_keys=[],
        run_prefix=[
            ("msin", "/in/a.ms"),
            ("msout", "/out/a.ms"),
            ("numthreads", "3"),
        ],
    ),
}


@pytest.fixture
def extra(tmp_path) -> Path:
    for name, kind in (("diagonal", "diagonal"), ("full", "fulljones"), ("phase", "scalarphase")):
        write_h5parm(tmp_path / f"{name}.h5", identity_soltabs(kind, ANTENNAS), ANTENNAS)
    return tmp_path


def parameters_of(name: str, extra: Path) -> DP3Parameters:
    strategy = CHOSEN_STRATEGY if name == "flagging" else None
    return chain_parameters(parse_steps(chains(extra)[name]), str(extra), strategy)


def pinned_view(pairs: list[tuple[str, str]], extra: Path) -> list[tuple[str, str]]:
    return [(key, value.replace(str(extra), EXTRA)) for key, value in pairs]


@pytest.mark.parametrize("name", PINNED)
def test_pairs_are_those_of_the_translation_before_the_structure(name, extra):
    parameters, pinned = parameters_of(name, extra), PINNED[name]
    assert pinned_view(parameters.pairs(), extra) == pinned.pairs
    file_keys = {key for key, _ in parameters.file_parameters()}
    assert sorted(file_keys) == pinned.file_keys
    assert parameters_fingerprint(parameters.pairs(), file_keys) == pinned.fingerprint
    memory_gb = 2.5 if name == "flagging" else None
    run = run_parameters(parameters, "/in/a.ms", "/out/a.ms", 3, memory_gb)
    assert pinned_view(run, extra) == pinned.run_prefix + pinned.pairs


def test_a_band_of_its_own_is_given_last_in_place_of_the_steps_band(extra):
    parameters = parameters_of("band", extra).with_band(2)
    assert run_parameters(parameters, "/in/a.ms", "/out/a_spw2.ms", 1) == [
        ("msin", "/in/a.ms"),
        ("msout", "/out/a_spw2.ms"),
        ("numthreads", "1"),
        ("checkparset", "1"),
        ("steps", "[averager]"),
        ("averager.type", "averager"),
        ("averager.timestep", "2"),
        ("msin.band", "2"),
    ]


def test_per_telescope_fingerprint_is_that_of_the_translation_before_the_structure(extra):
    chain = parse_steps(chains(extra)["flagging"])
    shared = chain_parameters(chain, str(extra))
    file_keys = {key for key, _ in shared.file_parameters()}
    assert parameters_fingerprint(shared.pairs(), file_keys) == (
        "6d2edba31725b34fb6788dcb76f9f5eb70b6a53ac16f2a50f946fe169b6a2aa2"
    )
    lofar = PerMSParameters(chain, str(extra), WHEEL_DP3, shared, file_keys).for_telescope("LOFAR")
    assert {step: Path(path).name for step, path in lofar.aoflagger_strategies.items()} == {
        "aoflagger2": "lofar-default.lua"
    }
    assert lofar.fingerprint == "003bac834bd15ff458db86d32d8847adb1c29b8e844cbae40ffe8779632eb767"


@pytest.mark.parametrize("name", PINNED)
def test_json_and_pickle_round_trips_keep_the_parameters(name, extra):
    parameters = parameters_of(name, extra).with_band(1 if name == "band" else None)
    through_json = DP3Parameters.from_json(json.loads(json.dumps(parameters.to_json())))
    assert through_json == parameters
    assert through_json.pairs() == parameters.pairs()
    assert pickle.loads(pickle.dumps(through_json)) == parameters


def test_a_value_json_cannot_hold_travels_as_the_text_dp3_gets():
    chain = parse_steps([{"PreFlagger": {"timerange": [datetime.date(2024, 1, 2)]}}])
    parameters = chain_parameters(chain)
    assert ("preflagger.timerange", "[2024-01-02]") in parameters.pairs()
    through_json = DP3Parameters.from_json(json.loads(json.dumps(parameters.to_json())))
    assert through_json.pairs() == parameters.pairs()


def test_questions_are_answered_from_the_structure(extra):
    flagging = parameters_of("flagging", extra)
    assert [step.name for step in flagging.steps_of_type("aoflagger")] == [
        "aoflagger",
        "aoflagger2",
    ]
    assert flagging.aoflagger_strategies() == {
        "aoflagger": str(extra / "lofar.lua"),
        "aoflagger2": CHOSEN_STRATEGY,
    }
    assert flagging.chosen_strategies() == {"aoflagger2": CHOSEN_STRATEGY}
    assert flagging.selected_band() is None
    demixer = parameters_of("demixer", extra)
    assert demixer.instrument_models() == [
        ("demixer.instrumentmodel", "instrument"),
        ("demixer2.instrumentmodel", "instrument_demixer2"),
    ]
    assert demixer.required_output_files() == ["instrument", "instrument_demixer2"]
    assert demixer.steps[0].value("subtractsources") == "[CasA,CygA]"
    applycal = parameters_of("applycal", extra)
    # The H5Parm's reading is the workflow's addition, after the user's parameters.
    assert applycal.steps[1].added == {
        "correction": "fulljones",
        "soltab": ["amplitude000", "phase000"],
    }
    assert applycal.steps[2].added == {}
    assert parameters_of("band", extra).selected_band() == 1
