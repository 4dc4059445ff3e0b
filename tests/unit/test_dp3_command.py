"""Unit tests of the environment's `DP3` command: the hand-rerun line written into each
output's parset, and that the workflow treats the command as the wheel's `DP3.py`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dp3batch.config.steps import parse_steps
from dp3batch.dp3.command import hand_rerun_command, wheel_dp3_script
from dp3batch.dp3.install import find_dp3_executable, unwrap_own_command, wheel_aoflagger_strategy
from dp3batch.dp3.translation import chain_parameters

CONSOLE_SCRIPT = """#!/usr/bin/python3
# -*- coding: utf-8 -*-
import re
import sys
from dp3batch.dp3.command import main
if __name__ == '__main__':
    sys.exit(main())
"""

NO_STEPS = chain_parameters(parse_steps([]))


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_rerun_line_names_the_dp3_command_and_writes_beside_the_output():
    line = hand_rerun_command(
        "/venv/bin/DP3.py", "/data/results/obs_1.ms", "/data/results/obs_1.ms/dp3.parset", NO_STEPS
    )
    assert line == "DP3 /data/results/obs_1.ms/dp3.parset msout=/data/results/obs_1-rerun.ms"


def test_rerun_line_keeps_a_wrapper_and_quotes_paths():
    line = hand_rerun_command(
        "/opt/my dp3.sh", "/data/my results/a.ms", "/data/my results/a.ms/dp3.parset", NO_STEPS
    )
    assert shlex.split(line) == [
        "/opt/my dp3.sh",
        "/data/my results/a.ms/dp3.parset",
        "msout=/data/my results/a-rerun.ms",
    ]


def test_rerun_line_moves_demixer_instrument_models_along():
    demixer = {"Demixer": {"skymodel": "/sky.txt"}}
    parameters = chain_parameters(parse_steps([demixer, demixer]))
    line = hand_rerun_command("DP3.py", "/r/a.ms", "/r/a.ms/dp3.parset", parameters)
    assert shlex.split(line)[2:] == [
        "msout=/r/a-rerun.ms",
        "demixer.instrumentmodel=/r/a-rerun.ms/instrument",
        "demixer2.instrumentmodel=/r/a-rerun.ms/instrument_demixer2",
    ]


def test_own_command_is_taken_for_the_wheels_dp3_py_beside_it(tmp_path):
    command = executable(tmp_path / "DP3", CONSOLE_SCRIPT)
    wheel = executable(tmp_path / "DP3.py", "#!/bin/sh\n")
    assert unwrap_own_command(str(command)) == str(wheel)
    # So the workflow pins the wheel's AOFlagger strategy exactly as for DP3.py.
    assert wheel_aoflagger_strategy(unwrap_own_command(str(command))) is not None


def test_own_command_without_the_wheel_beside_it_is_kept(tmp_path):
    command = executable(tmp_path / "DP3", CONSOLE_SCRIPT)
    assert unwrap_own_command(str(command)) == str(command)


def test_another_dp3_is_kept(tmp_path):
    other = executable(tmp_path / "DP3", '#!/bin/sh\nexec /usr/bin/DP3 "$@"\n')
    executable(tmp_path / "DP3.py", "#!/bin/sh\n")
    assert unwrap_own_command(str(other)) == str(other)


def test_find_dp3_executable_finds_the_wheel_behind_the_own_command(tmp_path, monkeypatch):
    executable(tmp_path / "DP3", CONSOLE_SCRIPT)
    wheel = executable(tmp_path / "DP3.py", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_dp3_executable(None) == str(wheel)
    assert find_dp3_executable("DP3") == str(wheel)


def test_wheel_dp3_script_is_the_one_beside_the_interpreter():
    assert wheel_dp3_script() == Path(sys.executable).parent / "DP3.py"
