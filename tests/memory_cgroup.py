"""A memory cgroup of its own for a test's processes: what `sbatch --mem=...` gives a batch
job. Made as a child of this process's own cgroup (so every limit above it still holds), in
the cgroup v1 memory hierarchy or in cgroup v2, whichever lets this process make one with a
limit; removed at the end. Needs root."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dp3batch.dask_stage.memory import cgroup_directories


def _own_cgroups() -> list[tuple[Path, int]]:
    membership = Path("/proc/self/cgroup").read_text()
    mounts = Path("/proc/self/mountinfo").read_text()
    found = cgroup_directories(membership, mounts)
    return [(directory, version) for directory, _, version in found]


def _try_make(parent: Path, version: int, name: str, limit_bytes: int) -> Path | None:
    child = parent / name
    try:
        if version == 2:
            # The child's memory controller is given by the parent (refused when the parent
            # itself holds processes and is not the root: then v2 cannot be used here).
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
        child.mkdir()
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        (child / limit_file).write_text(str(limit_bytes))
        return child
    except OSError:
        with contextlib.suppress(OSError):
            child.rmdir()
        return None


def why_not() -> str | None:
    """Why no memory cgroup can be made here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if not any(version in (1, 2) for _, version in _own_cgroups()):
        return "no cgroup hierarchy with a memory controller is mounted"
    return None


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A new cgroup with this memory limit; a process joins it by writing its pid into
    `<cgroup>/cgroup.procs` (see `joining`)."""
    name = f"dp3batch-test-{os.getpid()}-{time.monotonic_ns()}"
    made = None
    # v1's memory hierarchy first: a process's v2 cgroup usually holds processes itself.
    for directory, version in sorted(_own_cgroups(), key=lambda found: found[1]):
        made = _try_make(directory, version, name, limit_bytes)
        if made is not None:
            break
    if made is None:
        import pytest

        if os.environ.get("CI") == "true":
            pytest.fail("CI needs a memory cgroup (it runs as root)")
        pytest.skip(
            "cannot make a memory cgroup with a limit here (cgroup v2 without a "
            "delegated memory controller, and no v1 memory hierarchy)"
        )
    try:
        yield made
    finally:
        # Its processes have ended; the kernel needs a moment to let go of the last one.
        deadline = time.monotonic() + 30
        while True:
            try:
                made.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def joining(cgroup: Path):
    """A `preexec_fn` that moves the new process into `cgroup` before it runs anything."""
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    return join


def oom_kills(cgroup: Path) -> int:
    """How many processes the kernel's OOM killer killed in this cgroup."""
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError):
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0
