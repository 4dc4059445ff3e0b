"""Calibration inputs checked against the data: H5Parm stations and Demixer sources."""

from __future__ import annotations

import time

import pytest
from calibration_data import antenna_names, write_sky_model
from conftest import make_inputs, make_ms
from dp3batch.config.steps import parse_steps
from dp3batch.dp3.translation import chain_parameters
from h5parm_writer import identity_soltabs, write_h5parm


@pytest.fixture
def ms(tmp_path):
    return make_ms(tmp_path / "obs.ms")


def _applycal(tmp_path, stations, **params):
    path = write_h5parm(tmp_path / "sol.h5", identity_soltabs("diagonal", stations), stations)
    chain = parse_steps([{"ApplyCal": {"parmdb": str(path), **params}}])
    return chain_parameters(chain, str(tmp_path)), path


def _demixer(tmp_path, **params):
    sky = write_sky_model(tmp_path / "sky.skymodel")
    chain = parse_steps([{"Demixer": {"skymodel": str(sky), **params}}])
    return chain_parameters(chain, str(tmp_path))


def test_a_station_missing_from_the_h5parm_stops_the_run_before_any_dp3(workflow):
    inputs = make_inputs(workflow.directory / "inputs", 2)
    stations = antenna_names(inputs[0])
    extra = workflow.directory / "calibration"
    extra.mkdir()
    write_h5parm(extra / "sol.h5", identity_soltabs("diagonal", stations[:-1]), stations[:-1])
    workflow.config.update(
        extra_inputs_dir="calibration", steps=[{"ApplyCal": {"parmdb": "sol.h5"}}]
    )
    started = time.monotonic()
    result = workflow.run(timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert f"{stations[-1]} of obs_0" in result.output and "sol.h5" in result.output
    assert "Traceback" not in result.output
    assert not workflow.output_dir.exists() or not list(workflow.output_dir.glob("*.ms"))
