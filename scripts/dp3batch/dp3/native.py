"""DP3 started without Python: the dp3 wheel's own library, entered by a small native program.

The wheel installs DP3 as `DP3.py`, which imports the `dp3` Python package (and numpy with
it) before DP3 starts: 0.1 s of wall time and 0.15 s of CPU on every run, measured here,
as much as DP3's whole work on a small MS. The launcher (`dp3_launcher.cc`, built into the
environment by `make setup`) calls the very function `DP3.py` ends in,
`dp3::base::ExecuteFromCommandLine` of the wheel's libDP3, with the same arguments: the same
DP3, the same output column for column (tests/e2e/test_native_dp3.py).

It stands in for `DP3.py` only where a run of the chain starts. Everything else still names
`DP3.py` (the completion record, the hand-rerun line, the version): that is the DP3 that
ran. A launcher that is missing, cannot be built, or answers another version than `DP3.py`
is not used: DP3 then starts through `DP3.py`, as before.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from dp3batch.dp3.install import DP3Error, ask_dp3_version
from dp3batch.native_build import NativeBuildError, build_atomically, setup_step

SOURCE = Path(__file__).with_name("dp3_launcher.cc")
BUILD_SECONDS = 300.0
# Set to the pid of the process starting the launcher: it then dies with the thread that
# started it (see dp3_launcher.cc), as a task's DP3 must.
DEATH_SIGNAL_VARIABLE = "DP3BATCH_PDEATHSIG_PARENT"


def launcher_path(prefix: str | Path | None = None) -> Path:
    """Where the launcher of this environment lives (inside it, so every worker that runs
    this environment finds it)."""
    return Path(prefix or sys.prefix) / "libexec" / "dp3batch" / "DP3"


def wheel_library() -> Path | None:
    """The dp3 wheel's libDP3 (`dp3.libs/libDP3-<hash>.so`), or None without the wheel."""
    spec = importlib.util.find_spec("dp3")
    if spec is None or not spec.origin:
        return None
    found = sorted((Path(spec.origin).parent.parent / "dp3.libs").glob("libDP3*.so*"))
    return found[0] if found else None


def python_library() -> Path | None:
    """The shared libpython this interpreter runs on: the wheel's libDP3 refers to Python's
    symbols (for DP3's Python steps) and does not load without it. None: a static Python."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    library = Path(str(sysconfig.get_config_var("LIBDIR"))) / str(
        sysconfig.get_config_var("LDLIBRARY")
    )
    return library if library.is_file() else None


def build_command(compiler: str, output: Path, dp3_library: Path, python: Path) -> list[str]:
    """The compiler's command line: the launcher linked to libDP3 and libpython, found again
    at run time where they are now (rpath)."""
    return [
        compiler,
        "-O2",
        "-o",
        str(output),
        str(SOURCE),
        str(dp3_library),
        str(python),
        f"-Wl,-rpath,{dp3_library.parent}:{python.parent}",
    ]


def build_launcher(prefix: str | Path | None = None) -> Path:
    """Build the launcher into this environment (atomically: a run starting meanwhile sees
    the old one or the new one). Raises NativeBuildError with the reason."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    dp3_library, python = wheel_library(), python_library()
    if compiler is None:
        raise NativeBuildError("no C++ compiler (c++ or g++) on PATH")
    if dp3_library is None:
        raise NativeBuildError("the dp3 wheel's libDP3 is not installed")
    if python is None:
        raise NativeBuildError(f"{sys.executable} has no shared libpython to link")
    return build_atomically(
        launcher_path(prefix),
        lambda output: build_command(compiler, output, dp3_library, python),
        compiler,
        BUILD_SECONDS,
    )


def is_wheel_script(executable: str) -> bool:
    """Whether DP3 is the dp3 wheel's `DP3.py` of this environment (not a wrapper, not a DP3
    built elsewhere: those start as they are)."""
    if Path(executable).name != "DP3.py":
        return False
    try:
        return os.path.samefile(Path(executable).parent, Path(sys.executable).parent)
    except OSError:
        return False


@functools.cache  # once per process (a worker) and launcher: a DP3 start
def usable_launcher(version: str, launcher: str) -> bool:
    """Whether `launcher` is there and answers `version` (the version of `DP3.py`): a
    launcher left from another wheel, or one that cannot load its libraries, is not used."""
    if not os.access(launcher, os.X_OK):
        return False
    try:
        return ask_dp3_version(launcher) == version
    except DP3Error:
        return False


def dp3_program(executable: str, version: str, launcher: str | None = None) -> str:
    """The program that starts a run of the chain: the launcher (by default this
    environment's) in place of the wheel's `DP3.py` where it is usable, else `executable`."""
    if not is_wheel_script(executable):
        return executable
    launcher = launcher or str(launcher_path())
    return launcher if usable_launcher(version, launcher) else executable


@functools.cache  # once per process and program; a rebuilt launcher keeps the ability
def sets_own_death_signal(program: str) -> bool:
    """Whether `program` is this environment's launcher and sets its own death signal when
    asked (DEATH_SIGNAL_VARIABLE): started through `setpriv --pdeathsig`, a task's DP3 took
    a second program's start, 1.4 ms of CPU. A launcher built before it could (a venv not
    set up again since) does not name the variable, and starts as before."""
    if program != str(launcher_path()):
        return False
    try:
        return DEATH_SIGNAL_VARIABLE.encode() in Path(program).read_bytes()
    except OSError:
        return False


def main() -> int:
    """`python -m dp3batch.dp3.native`: build the launcher (make setup). Never fails the
    setup: without it, DP3 starts through `DP3.py`."""
    return setup_step(build_launcher, "DP3 launcher", "DP3 starts through DP3.py")


if __name__ == "__main__":
    sys.exit(main())
