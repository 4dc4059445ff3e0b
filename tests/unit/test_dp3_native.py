"""Unit tests of the choice of the program that starts DP3: the native launcher in place of
the wheel's `DP3.py`, only when it answers the same version (native.py). The launcher's
build and its output are tested end to end (tests/e2e/test_native_dp3.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from dp3batch.dp3.native import build_command, dp3_program, is_wheel_script, launcher_path

WHEEL_SCRIPT = str(Path(sys.executable).parent / "DP3.py")


def fake_launcher(path: Path, version: str) -> str:
    """A program that answers `--version` as DP3 does."""
    path.write_text(f"#!/bin/sh\necho 'DP3 {version}'\necho 'v{version}'\n")
    path.chmod(0o755)
    return str(path)


def test_the_launcher_answering_the_wheels_version_starts_the_wheels_dp3(tmp_path):
    launcher = fake_launcher(tmp_path / "DP3", "6.6.0")
    assert dp3_program(WHEEL_SCRIPT, "6.6.0", launcher) == launcher


def test_a_launcher_of_another_version_is_not_used(tmp_path):
    # Left from an earlier wheel: it would run another DP3 than the one the batch named.
    launcher = fake_launcher(tmp_path / "DP3", "6.5.0")
    assert dp3_program(WHEEL_SCRIPT, "6.6.0", launcher) == WHEEL_SCRIPT


def test_a_launcher_that_cannot_start_is_not_used(tmp_path):
    broken = tmp_path / "DP3"
    broken.write_text(
        "#!/bin/sh\necho 'error while loading shared libraries: libDP3' >&2\nexit 127\n"
    )
    broken.chmod(0o755)
    assert dp3_program(WHEEL_SCRIPT, "6.6.0", str(broken)) == WHEEL_SCRIPT
    assert dp3_program(WHEEL_SCRIPT, "6.6.0", str(tmp_path / "missing")) == WHEEL_SCRIPT


def test_a_wrapper_or_another_dp3_starts_as_it_is(tmp_path):
    launcher = fake_launcher(tmp_path / "DP3", "6.6.0")
    wrapper = str(tmp_path / "dp3-in-a-container.sh")
    elsewhere = str(tmp_path / "bin" / "DP3.py")  # a DP3.py, but not this environment's
    assert dp3_program(wrapper, "6.6.0", launcher) == wrapper
    assert dp3_program(elsewhere, "6.6.0", launcher) == elsewhere
    assert not is_wheel_script(elsewhere) and is_wheel_script(WHEEL_SCRIPT)


def test_the_launcher_lives_in_the_environment_and_finds_its_libraries_where_they_are():
    assert launcher_path() == Path(sys.prefix) / "libexec" / "dp3batch" / "DP3"
    command = build_command(
        "c++", Path("/o/DP3"), Path("/venv/dp3.libs/libDP3-1.so"), Path("/py/lib/libpython3.so")
    )
    assert command[:4] == ["c++", "-O2", "-o", "/o/DP3"]
    assert command[-3:-1] == ["/venv/dp3.libs/libDP3-1.so", "/py/lib/libpython3.so"]
    assert command[-1] == "-Wl,-rpath,/venv/dp3.libs:/py/lib"
