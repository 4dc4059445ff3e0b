"""The pure parts of the edge cases of issue 24: memory limits read from cgroups, DP3's
averaging of short MSs and its refusal of channel counts, rows out of time order, the
output directory's writability, write errors for people, FLAG_ROW, `--touch`, a killed
worker, an input gone or changed."""

from __future__ import annotations

import logging
import os
import resource
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from dp3batch.books.layout import output_dir_problem
from dp3batch.books.write_errors import QuietFileHandler, write_problem
from dp3batch.dask_stage import memory
from dp3batch.dask_stage.dispatch import killed_worker_reason
from dp3batch.dask_stage.execution import input_changed_since, input_gone, run_dp3
from dp3batch.dask_stage.join import sum_cpu_seconds
from dp3batch.dask_stage.memory import (
    MemoryLimit,
    aoflagger_memory_gb,
    cgroup_directories,
    possibly_out_of_memory,
    task_memory_share,
    worker_share,
)
from dp3batch.dask_stage.output_check import (
    InputGrid,
    derive_expected_shape,
    time_order_problem,
)
from dp3batch.dp3.averaging import (
    averaged_channels,
    averaged_times,
    channel_problem,
    effective_step,
    msin_channels,
)
from dp3batch.dp3.parameters import DP3Parameters, DP3Step
from dp3batch.report.batch_report import ReportFiles, write_report_files
from dp3batch.report.summary import SummaryFiles, write_summary
from dp3batch.rule_layer.flags import command_line_flags

# --- memory limits -------------------------------------------------------------------------

MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
26 30 0:23 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
27 30 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
28 30 0:25 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""
MEMBERSHIP = """\
4:memory:/slurm/uid_1000/job_42
1:cpu:/
0::/system.slice/slurmstepd.scope/job_42
"""


def test_this_process_s_cgroups_are_found_in_both_hierarchies():
    found = list(cgroup_directories(MEMBERSHIP, MOUNTINFO))
    assert found == [
        (Path("/sys/fs/cgroup/memory/slurm/uid_1000/job_42"), Path("/sys/fs/cgroup/memory"), 1),
        (
            Path("/sys/fs/cgroup/unified/system.slice/slurmstepd.scope/job_42"),
            Path("/sys/fs/cgroup/unified"),
            2,
        ),
    ]


def test_a_mount_root_inside_the_hierarchy_is_taken_off_the_path():
    """A container's mount shows the hierarchy from its own cgroup on."""
    mounts = "40 30 0:24 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    found = list(cgroup_directories("0::/docker/abc/worker\n", mounts))
    assert found == [(Path("/sys/fs/cgroup/worker"), Path("/sys/fs/cgroup"), 2)]


def _cgroup(directory: Path, limit: str, current: int, inactive: int, version: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if version == 2:
        (directory / "memory.max").write_text(limit + "\n")
        (directory / "memory.current").write_text(f"{current}\n")
        (directory / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\n")
    else:
        (directory / "memory.limit_in_bytes").write_text(limit + "\n")
        (directory / "memory.usage_in_bytes").write_text(f"{current}\n")
        (directory / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive}\n")


def _proc(tmp_path: Path, membership: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(membership)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable: 60 kB\n")
    return proc


def test_the_smallest_limit_along_the_path_binds_with_its_working_set(tmp_path):
    root = tmp_path / "cg"
    _cgroup(root, "max", 0, 0, 2)
    _cgroup(root / "job", str(2 * 2**30), 500 * 2**20, 100 * 2**20, 2)  # the job: 2 GiB
    _cgroup(root / "job" / "step", "max", 0, 0, 2)
    mounts = f"1 1 0:1 / {root} rw - cgroup2 cgroup2 rw\n"
    proc = _proc(tmp_path, "0::/job/step\n", mounts)
    (limit,) = memory.cgroup_limits(proc)
    assert limit.limit_bytes == 2 * 2**30
    assert limit.source == f"cgroup memory.max of {root / 'job'}"
    assert limit.in_use_bytes == 400 * 2**20  # usage less the inactive file cache
    assert limit.available_bytes == 2 * 2**30 - 400 * 2**20


def test_cgroup_v1_s_no_limit_is_no_limit(tmp_path):
    root = tmp_path / "memory"
    _cgroup(root, "9223372036854771712", 0, 0, 1)
    _cgroup(root / "a", "9223372036854771712", 0, 0, 1)
    proc = _proc(tmp_path, "4:memory:/a\n", f"1 1 0:1 / {root} rw - cgroup cgroup rw,memory\n")
    assert memory.cgroup_limits(proc) == []


def test_the_limit_is_the_smallest_of_memory_cgroup_and_address_space(tmp_path, monkeypatch):
    root = tmp_path / "memory"
    _cgroup(root / "job", str(2**30), 0, 0, 1)
    proc = _proc(tmp_path, "4:memory:/job\n", f"1 1 0:1 / {root} rw - cgroup cgroup rw,memory\n")
    assert memory.memory_limit(proc).source.startswith("cgroup memory.limit_in_bytes of ")
    monkeypatch.setattr(resource, "getrlimit", lambda _: (2**29, resource.RLIM_INFINITY))
    assert memory.memory_limit(proc).source == "RLIMIT_AS (ulimit -v) of this process"


def test_a_recent_limit_is_read_again_only_when_older_than_its_age(monkeypatch):
    reads = []

    def counted() -> MemoryLimit:
        reads.append(1)
        return MemoryLimit(len(reads) * 2**30, f"read {len(reads)}")

    monkeypatch.setattr(memory, "memory_limit", counted)
    monkeypatch.setattr(memory, "_recent", None)
    first = memory.recent_memory_limit(max_age_seconds=60)
    assert memory.recent_memory_limit(max_age_seconds=60) is first and len(reads) == 1
    # Older than asked for (a negative age: always): read again, and remembered anew.
    assert memory.recent_memory_limit(max_age_seconds=-1).source == "read 2"
    assert memory.recent_memory_limit(max_age_seconds=60).source == "read 2"
    assert len(reads) == 2


def test_shares_and_aoflagger_s_bound():
    limit = MemoryLimit(4 * 2**30, "cgroup", in_use_bytes=2**30)
    assert worker_share(limit, 3) == 2**30
    assert task_memory_share(None, limit) == 4 * 2**30
    assert task_memory_share(8 * 2**30, limit) == 4 * 2**30  # dask's guess, capped
    assert task_memory_share(2**30, limit) == 2**30
    assert aoflagger_memory_gb(2_000_000_000) == 1.0


def test_a_run_s_exit_carries_its_cpu_time_and_its_peak_memory(tmp_path):
    """What `wait4` says of the process the run started: the CPU it spent (here a loop
    that spins 0.3 s of CPU time, then sleeps 0.3 s, which costs none) and its peak."""
    spin = (
        "import time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "time.sleep(0.3)\n"
    )
    log = tmp_path / "run.log"
    exited, read = run_dp3([sys.executable, "-c", spin], log, None, None, lambda: "read")
    assert (exited.code, read) == (0, "read")
    assert exited.cpu_seconds is not None and 0.3 <= exited.cpu_seconds < 0.55
    assert exited.peak_memory_bytes is not None and exited.peak_memory_bytes > 2**20


def test_a_run_s_process_is_the_kernel_s_first_oom_victim(tmp_path):
    """DP3 gets the largest OOM score adjustment at once (the child reads its own after a
    moment); a process that is gone keeps nothing and raises nothing."""
    show = "import time; time.sleep(0.3); print(open('/proc/self/oom_score_adj').read())"
    log = tmp_path / "run.log"
    exited, _ = run_dp3([sys.executable, "-c", show], log, None, None, lambda: None)
    assert exited.code == 0
    assert log.read_text().split() == [str(memory.OOM_SCORE_ADJ_FIRST)] == ["1000"]
    assert memory.make_first_oom_victim(2**22 + 1) is False  # above any pid_max: no such process
    assert memory.make_first_oom_victim(os.getpid(), proc=tmp_path) is False


def test_the_cpu_of_a_joined_ms_is_every_run_s_or_unknown():
    assert sum_cpu_seconds([1.25, 2.5, 0.125]) == 3.875
    assert sum_cpu_seconds([1.25, None]) is None  # a chunk recorded by an older version
    assert sum_cpu_seconds([]) == 0


def test_a_kill_by_sigkill_names_the_peak_the_share_and_the_limit():
    limit = MemoryLimit(2**30, "cgroup memory.max of /sys/fs/cgroup/job")
    text = possibly_out_of_memory(2**29, limit, 3 * 2**28)
    assert text.startswith("possibly out of memory (DP3's peak 0.75 GiB; this worker's memory")
    assert "share 0.50 GiB; memory limit 1.00 GiB (cgroup memory.max of /sys/fs/cgroup/job))" in (
        text
    )


def test_a_killed_worker_is_named_with_its_memory_limit():
    error = Exception()
    error.last_worker = SimpleNamespace(address="tcp://h:1", memory_limit=4_000_000_000)
    reason = killed_worker_reason(error)
    assert reason.startswith("its worker died during every attempt; the last was tcp://h:1, ")
    assert "with a memory limit of 3.73 GiB: killed, possibly out of memory" in reason
    assert killed_worker_reason(Exception()).startswith(
        "its worker died during every attempt: killed, possibly out of memory"
    )


# --- averaging -----------------------------------------------------------------------------


def _chain(*steps: DP3Step, msin=None) -> DP3Parameters:
    return DP3Parameters(msin=msin or {}, msout={}, steps=steps)


def test_dp3_caps_an_averaging_factor_at_what_there_is():
    assert effective_step(4, 2) == 2
    assert averaged_times(2, 4) == 1
    assert averaged_times(20, 3) == 7  # a partial last slot is kept
    assert averaged_channels(3, 4) == 1
    assert averaged_channels(16, 32) == 1


def test_a_short_ms_is_expected_as_dp3_makes_it():
    """2 slots of 2 s, timestep 4: one slot of 4 s (not 8 s); 16 channels, freqstep 32: 1."""
    grid = InputGrid(times=2, baselines=15, channels=16, interval=2.0)
    steps = _chain(DP3Step("averager", "averager", {"timestep": 4, "freqstep": 32}))
    shape = derive_expected_shape(grid, steps)
    assert (shape.times, shape.interval, shape.channels) == (1, 4.0, 1)


def test_channel_counts_dp3_refuses():
    three = _chain(DP3Step("averager", "averager", {"freqstep": 3}))
    assert channel_problem(three, 18) is None
    assert channel_problem(three, 2) is None  # capped: all channels into one
    assert "averager freqstep 3 does not divide its 16 channels" in channel_problem(three, 16)
    # The second Averager sees what the first left.
    two = _chain(
        DP3Step("averager", "averager", {"freqstep": 2}),
        DP3Step("averager2", "averager", {"freqstep": 3}),
    )
    assert "averager2 freqstep 3 does not divide its 8 channels" in channel_problem(two, 16)
    # What only DP3 can compute is never refused here.
    resolution = _chain(
        DP3Step("averager", "averager", {"freqresolution": "100kHz"}),
        DP3Step("averager2", "averager", {"freqstep": 3}),
    )
    assert channel_problem(resolution, 16) is None


def test_the_channels_msin_reads():
    assert msin_channels(_chain(), 64) == 64
    assert msin_channels(_chain(msin={"startchan": 8}), 64) == 56
    assert msin_channels(_chain(msin={"startchan": 8, "nchan": 16}), 64) == 16
    assert msin_channels(_chain(msin={"nchan": "nchan/2"}), 64) is None


def test_rows_out_of_time_order_are_named_by_row():
    times = np.array([1.0, 1.0, 2.0, 2.0, 1.5, 3.0])
    problem = time_order_problem("/d/a.ms", times, np.arange(6))
    assert problem.startswith("the rows of /d/a.ms are not in time order (row 4 is earlier")
    assert "orderby TIME" in problem
    assert time_order_problem("/d/a.ms", np.array([1.0, 1.0, 2.0]), np.arange(3)) is None
    # Row numbers of the window read, not of the selection.
    assert "(row 7 " in time_order_problem("/d/a.ms", np.array([2.0, 1.0]), np.array([3, 7]))


# --- the books -----------------------------------------------------------------------------


def test_an_output_dir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    assert output_dir_problem(tmp_path / "new" / "results") is None
    monkeypatch.setattr(os, "access", lambda *_: False)
    problem = output_dir_problem(tmp_path / "new" / "results")
    assert problem.startswith(f"output_dir: {tmp_path / 'new' / 'results'} (made in {tmp_path})")
    assert "is not writable by this user" in problem
    monkeypatch.setattr(os, "statvfs", lambda _: SimpleNamespace(f_flag=os.ST_RDONLY))
    assert "is on a read-only filesystem" in output_dir_problem(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is not a directory" in output_dir_problem(blocker / "results")


def test_a_failed_write_is_one_line_naming_its_file():
    full = OSError(28, "No space left on device")
    assert write_problem(full, "/o/x.json") == (
        "/o/x.json: No space left on device: the filesystem is full; free space, then run again"
    )
    assert write_problem(OSError(13, "Permission denied", "/o/y")) == "/o/y: Permission denied"


def _filesystem(files: int, free_files: int):
    return lambda _: SimpleNamespace(f_files=files, f_favail=free_files)


def test_a_write_that_finds_no_free_inode_says_so_and_not_that_the_disk_is_full(
    tmp_path, monkeypatch
):
    """ENOSPC is also what a filesystem with space but no inodes left answers."""
    from dp3batch.books.write_errors import inodes_left, out_of_inodes

    asked = []
    monkeypatch.setattr(os, "statvfs", lambda path: asked.append(path) or _filesystem(330, 2)(path))
    full = OSError(28, "No space left on device")
    assert write_problem(full, tmp_path / "new" / "x.json") == (
        f"{tmp_path / 'new' / 'x.json'}: No space left on device: the filesystem has no free "
        "inodes left (2): it can hold no more files, whatever space `df -h` shows (`df -i` "
        "shows them); remove files, then run again"
    )
    assert asked == [tmp_path]  # the nearest directory that exists
    monkeypatch.setattr(os, "statvfs", _filesystem(330, 200))
    assert out_of_inodes(tmp_path) is None
    assert "the filesystem is full; free space" in write_problem(full, tmp_path / "x")
    monkeypatch.setattr(os, "statvfs", _filesystem(0, 0))  # no inode limit (btrfs)
    assert inodes_left(tmp_path) is None and out_of_inodes(tmp_path) is None


def test_a_used_up_quota_is_named_with_what_to_do():
    from dp3batch.books.write_errors import QUOTA_ADVICE, quota_problem

    assert write_problem(OSError(122, "Disk quota exceeded", "/o/x.json")) == (
        f"/o/x.json: Disk quota exceeded: {QUOTA_ADVICE}"
    )
    assert "`quota -s`" in QUOTA_ADVICE and "lfs quota" in QUOTA_ADVICE
    tail = "std exception detected: FiledesIO: file /o/.a.ms.tmp-1/table.lock could not be "
    assert quota_problem(tail + "created: Disk quota exceeded\n", "/o") == (
        f"writing under /o: Disk quota exceeded: {QUOTA_ADVICE}"
    )
    assert quota_problem(tail + "created: Permission denied\n", "/o") is None


def test_the_report_s_files_are_reserved_empty_and_written_ones_kept(tmp_path):
    from dp3batch.report.batch_report import ReportFiles, reserve_report_files

    files = ReportFiles(tmp_path / "report" / "batch")
    files.directory.mkdir(parents=True)
    files.html.write_text("<html>kept</html>")
    reserve_report_files(files)
    assert files.html.read_text() == "<html>kept</html>"
    for name, path in files.as_dict().items():
        if name == "flagging":
            assert os.path.isdir(path)
        elif name != "html":
            assert os.path.getsize(path) == 0, name
    assert files.table_json.stat().st_size == 0


def test_a_log_file_that_cannot_be_written_prints_no_traceback(tmp_path, capsys):
    handler = QuietFileHandler(tmp_path / "batch.log")
    handler.stream.close()  # every write now fails, as on a full disk
    logger = logging.getLogger("test-quiet-file")
    logger.addHandler(handler)
    try:
        logger.error("a line")
    finally:
        logger.removeHandler(handler)
    assert "Traceback" not in capsys.readouterr().err


def test_report_files_exist_whatever_could_not_be_written(tmp_path):
    files = ReportFiles(tmp_path / "report" / "b1")
    files.directory.mkdir(parents=True)
    files.table.mkdir()  # the table cannot be written: a directory has its name
    summary = SummaryFiles(tmp_path / "summary.json", tmp_path / "summary.tsv")
    assert write_summary([], summary.json, summary.tsv, "b1")[1] is None
    problem = write_report_files([], files, "Batch b1", summary)
    assert problem
    assert all(os.path.exists(path) for path in files.as_dict().values())


def test_touch_is_read_from_the_command_line():
    flags = command_line_flags(["snakemake", "--cores", "1", "--touch"])
    assert flags.touch and flags.processes_nothing
    assert not command_line_flags(["snakemake", "--cores", "1"]).touch


# --- the input -----------------------------------------------------------------------------


def test_an_input_gone_or_changed_is_named(tmp_path):
    ms = tmp_path / "a.ms"
    assert "no longer exists (it was deleted after the run was planned)" in input_gone(str(ms))
    ms.mkdir()
    assert "is no longer a MeasurementSet (it has no table.dat)" in input_gone(str(ms))
    (ms / "table.dat").write_bytes(b"main")
    assert input_gone(str(ms)) is None
    from dp3batch.books.fingerprints import input_tree

    fingerprint = input_tree(ms).fingerprint
    assert input_changed_since(str(ms), fingerprint) is None
    (ms / "table.f0").write_bytes(b"data")
    assert input_changed_since(str(ms), fingerprint).startswith(
        "input changed while it was processed"
    )


@pytest.mark.parametrize("flag_rows", [0, 10, 300])
def test_flag_row_counts_a_row_as_flagged_whole(tmp_path, flag_rows):
    from casacore import tables
    from dp3batch.inputs.tables import read_shape
    from dp3batch.testing.synthetic_ms import SyntheticMSSpec, generate_measurement_set

    spec = SyntheticMSSpec(n_times=20, rfi_channels=(), rfi_times=())
    ms = generate_measurement_set(tmp_path / "a.ms", spec)
    with tables.table(str(ms), readonly=False, ack=False) as table:
        rows = table.nrows()
        flags = np.zeros(rows, dtype=bool)
        flags[:flag_rows] = True
        table.putcol("FLAG_ROW", flags)
        assert not table.getcol("FLAG").any()
    assert read_shape(str(ms), with_flags=True).flagged_fraction == pytest.approx(flag_rows / rows)


def test_an_output_dir_another_user_ran_in_is_refused_naming_what_is_theirs(tmp_path, monkeypatch):
    """Verified as another user with setpriv (the run said only `the batch could not go on:
    …/.dp3batch.lock: Permission denied`); here the OS's answers are given, for uid 1000."""
    import pwd

    output_dir = tmp_path / "shared"
    (output_dir / "logs").mkdir(parents=True)
    (output_dir / ".dp3batch.lock").write_text("pid 1 on host\n")
    (output_dir / "summary.tsv").write_text("")
    (output_dir / "obs.ms").mkdir()  # an output: not the run's shared books
    for path in output_dir.iterdir():
        os.chown(path, 0, 0)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    writable_by_group = {output_dir, output_dir / "summary.tsv"}
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) in writable_by_group)
    monkeypatch.setattr(
        pwd,
        "getpwuid",
        lambda uid: SimpleNamespace(pw_name={0: "root"}.get(uid, "alice")),
    )
    assert output_dir_problem(output_dir) == (
        f"output_dir: {output_dir} was written by another user, root (uid 0): .dp3batch.lock, "
        "logs there cannot be changed by this one, alice (uid 1000), and every run updates "
        "them. Use an output_dir of your own, or share one through a group: a setgid "
        "directory of that group, and umask 002 for every user of it"
    )
    writable_by_group.update({output_dir / ".dp3batch.lock", output_dir / "logs"})
    assert output_dir_problem(output_dir) is None
