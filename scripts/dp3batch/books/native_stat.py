"""The fingerprint lines of listed files made in C (`stat_lines.c`), for the rerun's pass.

A no-op rerun over 10,000 MSs stats the 110-120 files each record lists, 1.2 million in
all. From Python each costs the kernel's lookup plus a whole `os.stat` result built and
formatted: 3.8-4.0 us a file measured here, 2.2-2.5 us from the C helper `make setup`
builds into the environment (with the C compiler `cc`). Where it is missing, cannot load or
is of another version, the lines are made in Python, as before: the same text, byte for
byte (tests/unit/test_native_stat.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dp3batch.native_build import NativeBuildError, build_atomically, setup_step

SOURCE = Path(__file__).with_name("stat_lines.c")
VERSION = 1  # dp3batch_stat_lines_version() of stat_lines.c
BUILD_SECONDS = 120.0
# The longest line's numbers: ':' and a size, ':' and a time in ns, '\n' (20 digits each
# and a sign at most).
_NUMBERS = 2 * 22 + 1

# An open directory, the names in it each ended by a NUL, how many: their lines, or None.
StatLines = Callable[[int, bytes, int], bytes | None]


def library_path(prefix: str | Path | None = None) -> Path:
    """Where this environment's helper lives."""
    return Path(prefix or sys.prefix) / "lib" / "dp3batch" / "libdp3batch_stat_lines.so"


def build_helper(prefix: str | Path | None = None) -> Path:
    """Build the helper into this environment (atomically: a run loading it meanwhile sees
    the old one or the new one). Raises NativeBuildError with the reason."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise NativeBuildError("no C compiler (cc or gcc) on PATH")
    return build_atomically(
        library_path(prefix),
        lambda output: [compiler, "-O2", "-shared", "-fPIC", "-o", str(output), str(SOURCE)],
        compiler,
        BUILD_SECONDS,
    )


@functools.cache  # once per process (planning's forked children inherit it)
def native_stat_lines(library: str | None = None) -> StatLines | None:
    """The helper of this environment (or `library`) as a function of an open directory and
    the names in it (UTF-8, each ended by a NUL): their lines as bytes, or None when one
    cannot be stat-ed. None when there is no usable helper, or where file names are not
    UTF-8 (the lines are hashed as UTF-8 text)."""
    if sys.getfilesystemencoding() != "utf-8":
        return None
    try:
        loaded = ctypes.CDLL(library or str(library_path()))
        if loaded.dp3batch_stat_lines_version() != VERSION:
            return None
        function = loaded.dp3batch_stat_lines
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_long]
    function.restype = ctypes.c_long

    def stat_lines(descriptor: int, packed: bytes, count: int) -> bytes | None:
        size = len(packed) + _NUMBERS * count + 1
        out = ctypes.create_string_buffer(size)
        used = function(descriptor, packed, count, out, size)
        if used == -1:
            return None
        if used < 0:  # cannot happen: the buffer holds the longest lines
            raise RuntimeError(f"{library_path()}: its lines did not fit {size} bytes")
        return out.raw[:used]

    return stat_lines


def main() -> int:
    """`python -m dp3batch.books.native_stat`: build the helper (make setup). Never fails
    the setup: without it, Python makes the lines."""
    return setup_step(build_helper, "stat helper", "Python stats the listed files")


if __name__ == "__main__":
    sys.exit(main())
