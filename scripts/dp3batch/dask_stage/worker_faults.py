"""Faults of a worker rather than of an MS: it runs other code than the batch, or its DP3
cannot start. The task raises `WorkerCannotRun` instead of returning a failed result, so
that the central job gives the MS to another worker and, if the worker keeps failing that
way, gives it no more work (see watchdog).

Also the identity of the package a process runs (`package_identity_function`), computed
the same way in the central job and on a worker.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# The shell's "cannot execute" and "command not found"; the dynamic loader's exit code too.
START_EXIT_CODES = (126, 127)
# What the dynamic loader says when a program (or a library it loads) cannot start; the
# wheel's Python says it inside an ImportError.
_LOADER_TEXT = re.compile(
    r"error while loading shared libraries|cannot open shared object file|"
    r"symbol lookup error|version `[^']*' not found",
    re.IGNORECASE,
)


class WorkerCannotRun(RuntimeError):
    """This worker cannot run the task (not the MS's fault): `worker` says where, `problem`
    what. Its arguments are its state, so it pickles back to the central job as it is."""

    def __init__(self, worker: str, problem: str):
        super().__init__(worker, problem)
        self.worker = worker
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.worker}: {self.problem}"


def dp3_start_problem(exit_code: int, output: str) -> str | None:
    """Why DP3 did not start, or None when it started (and any failure is the MS's).

    Exit 126 or 127 (a wrapper's shell: not executable, not found; the dynamic loader), or
    a non-zero exit with the loader's words in DP3's output (a missing library). `output`:
    the end of what DP3 printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]  # the task's own header
    telling = next((line for line in reversed(lines) if _LOADER_TEXT.search(line)), None)
    if exit_code in START_EXIT_CODES:
        said = telling or (lines[-1] if lines else "it printed nothing")
        return f"DP3 could not start (exit {exit_code}): {said}"
    if exit_code != 0 and telling is not None:
        return f"DP3 could not start (exit {exit_code}): {telling}"
    return None


def package_identity_function():
    """A function that returns which `dp3batch` the process it runs in imports: its
    directory and a digest of its code (`digest`: the files as this process first saw them;
    `on_disk`: as they are now). Defined here so that dask pickles it by value: it must run
    on a worker that cannot import dp3batch at all, and say so."""

    def package_identity() -> dict[str, Any]:
        import hashlib
        import importlib
        import os

        try:
            package = importlib.import_module("dp3batch")
            root = os.path.dirname(os.path.abspath(package.__file__))
        except Exception as error:  # not installed, or broken
            return {"error": f"cannot import dp3batch ({type(error).__name__}: {error})"}
        digest = hashlib.sha256()
        for directory, subdirectories, files in os.walk(root):
            subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".yaml")):
                    path = os.path.join(directory, name)
                    with open(path, "rb") as source:
                        content = source.read()
                    digest.update(os.path.relpath(path, root).encode() + b"\0" + content + b"\0")
        on_disk = digest.hexdigest()[:16]
        # What this process runs is what it first saw: modules imported before the files
        # changed (a `git pull` under a running worker) stay as they were.
        loaded = package.__dict__.setdefault("_dp3batch_first_digest", on_disk)
        return {"path": root, "digest": loaded, "on_disk": on_disk}

    return package_identity


@functools.cache
def own_package_identity() -> dict[str, Any]:
    """This process's `dp3batch` (computed once per process)."""
    return package_identity_function()()


def describe_identity(identity: dict[str, Any]) -> str:
    """`dp3batch <digest> from <directory>`, or why it cannot be imported."""
    if "error" in identity:
        return str(identity["error"])
    text = f"dp3batch {identity['digest']}"
    if identity.get("path"):
        text += f" from {identity['path']}"
    if identity.get("on_disk") not in (None, identity["digest"]):
        text += f" (its files changed after it loaded them: now {identity['on_disk']})"
    return text


def package_problem(identity: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Why a process does not run the batch's code (`expected`: the batch's identity, at
    least its `digest`), or None when it does."""
    if "error" in identity:
        return str(identity["error"])
    stale = identity.get("on_disk") not in (None, identity["digest"])
    if identity["digest"] != expected["digest"] or stale:
        return f"runs {describe_identity(identity)}, not {describe_identity(expected)}"
    return None
