"""Snakemake's process ends without the interpreter's final garbage collections.

When a Python process ends, the interpreter collects garbage over every object it still
holds, several times while it unloads the modules. Over what Snakemake imports (its own
modules, SQLAlchemy's, numpy's) that took 0.17 s after the last line of every run: a tenth of
a one-MS rerun's fixed cost, spent on memory the operating system takes back anyway.
Frozen objects are left out of those collections; everything else about the ending (the
exit handlers, temporary directories, log files) is as usual.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def end_snakemake_quickly() -> None:
    """From the workflow's parse: when the process ends, freeze what is left before the
    interpreter's teardown collects it (the exit handlers registered before this one, such
    as the removal of temporary directories, still run after it)."""
    global _registered
    if not _registered:  # the workflow may be read more than once in one process
        atexit.register(gc.freeze)
        _registered = True
