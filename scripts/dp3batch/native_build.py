"""Native pieces `make setup` compiles into the environment (the DP3 launcher, the rerun's
stat helper): built atomically, and never a failed setup, since each has a Python way."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


class NativeBuildError(RuntimeError):
    """A piece cannot be built here; the message says why."""


def build_atomically(
    target: Path, command: Callable[[Path], list[str]], compiler: str, seconds: float
) -> Path:
    """Run `command(temporary)` (a compiler writing `temporary`), then rename the result to
    `target`: a run starting meanwhile sees the old one or the new one. Raises
    NativeBuildError with the compiler's last line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        completed = subprocess.run(
            command(temporary), capture_output=True, text=True, timeout=seconds
        )
        if completed.returncode != 0:
            said = (completed.stderr or completed.stdout).strip().splitlines()
            raise NativeBuildError(f"{compiler} failed: {said[-1] if said else '(silent)'}")
        temporary.replace(target)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NativeBuildError(f"{compiler} did not run: {error}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return target


def setup_step(build: Callable[[], Path], what: str, otherwise: str) -> int:
    """A `python -m` step of `make setup`: build, and say what was built, or why not and
    what is used instead. Always 0."""
    try:
        path = build()
    except NativeBuildError as error:
        print(f"{what} not built ({error}); {otherwise}", file=sys.stderr)
        return 0
    print(f"{what} built: {path}")
    return 0
