"""How much memory this process may use: the smallest of physical memory, the memory limit of
its cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`, of its own cgroup and every one
above it) and `RLIMIT_AS`.

A batch job (`sbatch --mem=1G`) runs in a cgroup whose limit `os.sysconf` does not see, and
dask's own guess reads only the cgroup files at the root of the hierarchy, which a job's
cgroup is not. The embedded cluster sizes its workers from this limit, AOFlagger's
`memorymax` follows from a worker's share, and a DP3 (or worker) killed by SIGKILL is
reported with it: the kernel's out-of-memory killer sends SIGKILL.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number; anything above
# this is no limit.
_UNLIMITED_V1 = 2**62


@dataclass(frozen=True)
class MemoryLimit:
    """A limit on this process's memory: its bytes, what sets it, and what its scope used
    when it was read (a cgroup's working set, the machine's used memory; 0 for RLIMIT_AS,
    which bounds each process on its own)."""

    limit_bytes: int
    source: str
    in_use_bytes: int = 0

    @property
    def available_bytes(self) -> int:
        return max(0, self.limit_bytes - self.in_use_bytes)

    def describe(self) -> str:
        return f"{gib(self.limit_bytes)} ({self.source})"


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def memory_limit(proc: Path = Path("/proc")) -> MemoryLimit:
    """The smallest limit on this process's memory (see the module's text)."""
    return min(
        [physical_memory(proc), *cgroup_limits(proc), *address_space_limit()],
        key=lambda limit: limit.limit_bytes,
    )


# The last limit `recent_memory_limit` read in this process, with its monotonic time.
_recent: tuple[float, MemoryLimit] | None = None

RECENT_LIMIT_SECONDS = 30.0


def recent_memory_limit(max_age_seconds: float = RECENT_LIMIT_SECONDS) -> MemoryLimit:
    """`memory_limit()` as this process read it at most `max_age_seconds` ago: a task reads
    it before every DP3, and reading /proc and its cgroup's files took 0.6 ms of a small MS's
    task (limits change by hand, not between two small MSs)."""
    global _recent
    known = _recent
    if known is not None and 0 <= time.monotonic() - known[0] <= max_age_seconds:
        return known[1]
    limit = memory_limit()
    _recent = (time.monotonic(), limit)
    return limit


def physical_memory(proc: Path = Path("/proc")) -> MemoryLimit:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = _meminfo(proc).get("MemAvailable")
    in_use = total - available if available is not None else 0
    return MemoryLimit(total, "physical memory", max(0, in_use))


def _meminfo(proc: Path) -> dict[str, int]:
    fields = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            number, *unit = value.split()
            fields[name] = int(number) * (1024 if unit == ["kB"] else 1)
    except (OSError, ValueError):
        pass
    return fields


def address_space_limit() -> list[MemoryLimit]:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return []
    return [MemoryLimit(soft, "RLIMIT_AS (ulimit -v) of this process")]


def cgroup_limits(proc: Path = Path("/proc")) -> list[MemoryLimit]:
    """The memory limits of this process's cgroups, v2 and v1, each the smallest along the
    path from its own cgroup to the hierarchy's root (a parent's limit binds its children)."""
    try:
        membership = (proc / "self" / "cgroup").read_text()
        mounts = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return []
    limits = []
    for directory, root, version in cgroup_directories(membership, mounts):
        limit = _smallest_along(directory, root, version)
        if limit is not None:
            limits.append(limit)
    return limits


def cgroup_directories(membership: str, mountinfo: str) -> Iterator[tuple[Path, Path, int]]:
    """(this process's cgroup directory, its hierarchy's mount point, cgroup version) for the
    v2 hierarchy and the v1 memory hierarchy, from /proc/self/cgroup and /proc/self/mountinfo."""
    mounts: dict[str, tuple[str, Path]] = {}  # "v2" / "v1-memory" -> (mount root, point)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[-1].split(",")
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            mounts.setdefault("v2", (root, point))
        elif fstype == "cgroup" and "memory" in options:
            mounts.setdefault("v1-memory", (root, point))
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and "v2" in mounts:
            key, version = "v2", 2
        elif "memory" in controllers.split(",") and "v1-memory" in mounts:
            key, version = "v1-memory", 1
        else:
            continue
        root, point = mounts[key]
        relative = path[len(root) :] if root != "/" and path.startswith(root) else path
        yield point / relative.lstrip("/"), point, version


def _unescape(text: str) -> str:
    """mountinfo writes a space as \\040 (and tab, newline, backslash likewise)."""
    for code, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, character)
    return text


def _smallest_along(directory: Path, root: Path, version: int) -> MemoryLimit | None:
    """The smallest limit from `directory` up to `root` (which may not be left), with the
    working set of the cgroup that sets it."""
    name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    best: MemoryLimit | None = None
    current = directory
    while True:
        limit = _read_limit(current / name, version)
        if limit is not None and (best is None or limit < best.limit_bytes):
            source = f"cgroup {name} of {current}"
            best = MemoryLimit(limit, source, _working_set(current, version))
        if current == root or current.parent == current or root not in current.parents:
            return best
        current = current.parent


def _read_limit(path: Path, version: int) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:  # no memory controller there, or not this cgroup's
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or (version == 1 and value >= _UNLIMITED_V1):
        return None
    return value


def _working_set(directory: Path, version: int) -> int:
    """What a cgroup uses that its limit counts and the kernel cannot simply drop: its usage
    without the inactive file cache (how container runtimes count it)."""
    usage_file = "memory.current" if version == 2 else "memory.usage_in_bytes"
    inactive_key = "inactive_file" if version == 2 else "total_inactive_file"
    try:
        usage = int((directory / usage_file).read_text())
        stat = dict(
            line.split()[:2] for line in (directory / "memory.stat").read_text().splitlines()
        )
        inactive = int(stat.get(inactive_key, 0))
    except (OSError, ValueError):
        return 0
    return max(0, usage - inactive)


def worker_share(limit: MemoryLimit, workers: int) -> int:
    """Each worker's share of the memory still available under the limit (the processes of
    this job, Snakemake's and the central job's, already use some)."""
    return limit.available_bytes // max(1, workers)


def task_memory_share(worker_limit: int | None, host: MemoryLimit) -> int:
    """The memory one DP3 may use: its worker's limit (the embedded cluster's share, or what
    an external worker was started with), but never more than its host's limit."""
    return min(worker_limit or host.limit_bytes, host.limit_bytes)


def aoflagger_memory_gb(share_bytes: int) -> float:
    """AOFlagger's `memorymax` for a worker's share: half of it. `memorymax` bounds only the
    flagger's buffers of time slots; DP3 needs about as much again for its own buffers, the
    flagger's work images and its libraries (measured on a 235 MB MS: `memorymax=0.1` peaked
    at 0.23 GB, `0.2` at 0.29 GB, DP3 alone at 0.085 GB)."""
    return share_bytes / 2 / 1e9


# The kernel's OOM killer takes the process of the highest score in the cgroup (or machine)
# that ran out of memory; a score is the resident memory plus oom_score_adj thousandths of
# the limit. At the largest adjustment every DP3 comes before every process of the workflow
# itself (Snakemake, the central job, a dask worker), the largest DP3 first: running out
# fails one MS, which a rerun redoes, and not the batch. The central job of a 10,000-MS
# batch holds 228 MiB, more than a small MS's DP3. On a shared machine DP3 also goes before
# other programs: its work is redone by the next run, theirs may be lost.
OOM_SCORE_ADJ_FIRST = 1000


def make_first_oom_victim(pid: int, proc: Path = Path("/proc")) -> bool:
    """Give process `pid` the largest OOM score adjustment; whether that took. Raising it
    needs no privilege (only lowering does); a process already gone, or not this user's,
    keeps its own."""
    try:
        with open(proc / str(pid) / "oom_score_adj", "w") as adjustment:
            adjustment.write(str(OOM_SCORE_ADJ_FIRST))
    except OSError:
        return False
    return True


def possibly_out_of_memory(
    share_bytes: int | None, limit: MemoryLimit | None, peak_bytes: int | None
) -> str:
    """What to say of a process the kernel killed with SIGKILL: its out-of-memory killer
    sends it, so memory is the first suspect; with the limit that applied."""
    facts = []
    if peak_bytes:
        facts.append(f"DP3's peak {gib(peak_bytes)}")
    if share_bytes:
        facts.append(f"this worker's memory share {gib(share_bytes)}")
    if limit is not None:
        facts.append(f"memory limit {limit.describe()}")
    known = f" ({'; '.join(facts)})" if facts else ""
    return (
        f"possibly out of memory{known}: give each DP3 more memory (fewer workers per host, "
        "a job with more memory) or bound AOFlagger's memorymax"
    )
