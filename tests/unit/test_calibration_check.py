"""Calibration inputs checked against the data: H5Parm stations and Demixer sources."""

from __future__ import annotations

import pytest
from calibration_data import antenna_names, write_sky_model
from conftest import make_ms
from dp3batch.config.errors import ConfigError
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.translation import chain_parameters
from dp3batch.inputs.calibration import check_calibration_inputs, sky_model_sources
from h5parm_writer import identity_soltabs, write_h5parm


@pytest.fixture
def ms(tmp_path):
    return make_ms(tmp_path / "obs.ms")


def _applycal(tmp_path, stations, **params):
    path = write_h5parm(tmp_path / "sol.h5", identity_soltabs("diagonal", stations), stations)
    chain = parse_steps([{"ApplyCal": {"parmdb": str(path), **params}}])
    return chain_parameters(chain, str(tmp_path)), path


def test_stations_without_solutions_are_named_with_the_file(tmp_path, ms):
    stations = antenna_names(ms)
    parameters, path = _applycal(tmp_path, stations[:-2])
    with pytest.raises(ConfigError) as caught:
        check_calibration_inputs(parameters, [("obs", ms)])
    message = str(caught.value)
    assert f"{stations[-2]}, {stations[-1]} of obs" in message
    assert str(path) in message and "missingantennabehavior" in message


def test_solutions_for_every_station_pass(tmp_path, ms):
    parameters, _ = _applycal(tmp_path, antenna_names(ms))
    check_calibration_inputs(parameters, [("obs", ms)])


def test_missingantennabehavior_leaves_it_to_dp3(tmp_path, ms):
    parameters, _ = _applycal(tmp_path, antenna_names(ms)[:-1], missingantennabehavior="flag")
    check_calibration_inputs(parameters, [("obs", ms)])


def _demixer(tmp_path, **params):
    sky = write_sky_model(tmp_path / "sky.skymodel")
    chain = parse_steps([{"Demixer": {"skymodel": str(sky), **params}}])
    return chain_parameters(chain, str(tmp_path))


def test_the_sky_models_patches_are_its_sources(tmp_path):
    sky = write_sky_model(tmp_path / "sky.skymodel")
    assert {"bright_a", "bright_b"} <= sky_model_sources(str(sky))


def test_a_demixer_source_missing_from_the_sky_model_is_named(tmp_path, ms):
    parameters = _demixer(tmp_path, subtractsources=["bright_a", "CasA"])
    with pytest.raises(ConfigError, match=r"the source\(s\) CasA .* not in the sky model"):
        check_calibration_inputs(parameters, [("obs", ms)])


def test_demixer_sources_in_the_sky_model_pass(tmp_path, ms):
    parameters = _demixer(tmp_path, subtractsources=["bright_a"], targetsource="bright_b")
    check_calibration_inputs(parameters, [("obs", ms)])
