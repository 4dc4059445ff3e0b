"""A real single-node Slurm (Debian's slurm-wlm and munge) for the tests, in a directory of
its own: its own slurm.conf (named by SLURM_CONF), ports, state, spool and munge socket,
so that it never touches, nor is touched by, a Slurm that already runs on the host.

The daemons run in the foreground as children of the test process, so stopping them means
stopping exactly those PIDs. `python tests/slurm_cluster.py` starts one by hand, prints its
SLURM_CONF and waits for Ctrl-C."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")

# Debian installs the daemons in /usr/sbin, which a non-login PATH may lack.
for _directory in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
    if _directory not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + _directory
PARTITION = "debug"
# A partition whose time limit is shorter than what the tests ask for: jobs sent there pend
# forever with reason PartitionTimeLimit.
SHORT_PARTITION = "short"
SHORT_PARTITION_MINUTES = 5
START_SECONDS = 60


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a daemon's child process: SIGTERM when the test process dies, even by SIGKILL, so
    that no daemon outlives an aborted test session."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not installed, or not root)."""


def missing_requirements() -> str | None:
    """Why a Slurm cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root"
    missing = [name for name in (*DAEMONS, "sbatch", "sinfo") if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install slurm-wlm munge"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user 'munge': apt-get install munge"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    # slurmd drains a node whose RealMemory exceeds what it measures: leave a margin.
    return total_kb * 8 // 10 // 1024


def slurm_conf(directory: Path, node: str, cpus: int, memory_mb: int, munge_socket: Path) -> str:
    ports = (_free_port(), _free_port())
    return f"""\
ClusterName=dp3batchtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
PlugStackConfig={directory}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# Short kill grace and no slack past the walltime: a job over its limit ends promptly.
KillWait=2
OverTimeLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={SHORT_PARTITION} Nodes={node} MaxTime={SHORT_PARTITION_MINUTES} State=UP
"""


class SlurmCluster:
    """munged, slurmctld and slurmd for one node, all state under `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.conf = directory / "slurm.conf"
        self.munge_dir = directory / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.daemons: dict[str, subprocess.Popen] = {}

    @property
    def environment(self) -> dict[str, str]:
        """What a Slurm client command (sbatch, squeue, ...) needs to talk to this Slurm."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *arguments: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            arguments,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.environment},
        )

    def _write_files(self) -> None:
        # munged refuses directories that others may write to, and runs as user munge: the
        # base directory must be traversable and the munge directory its own.
        self.directory.chmod(0o755)
        for name in ("state", "spool"):
            (self.directory / name).mkdir()
        (self.directory / "plugstack.conf").write_text("")
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir()
        self.munge_dir.chmod(0o755)  # clients must reach the socket
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        cpus = len(os.sched_getaffinity(0))
        self.conf.write_text(
            slurm_conf(self.directory, self.node, cpus, _memory_mb(), self.munge_socket)
        )

    def _start(self, name: str, arguments: list[str], **options) -> None:
        log = open(self.directory / f"{name}.out", "w")
        self.daemons[name] = subprocess.Popen(
            arguments,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.environment},
            preexec_fn=_die_with_parent,
            **options,
        )

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start the three daemons and wait until the node is idle (or raise)."""
        self._write_files()
        munge = self.munge_dir
        self._start(
            "munged",
            ["munged", "--foreground", f"--socket={self.munge_socket}"]
            + [f"--key-file={munge}/munge.key", f"--log-file={munge}/munged.log"]
            + [f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed"],
            user="munge",
            group="munge",
            extra_groups=[],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged to open its socket")
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(self.node_idle, timeout, f"node {self.node} to be idle in sinfo")

    def node_idle(self) -> bool:
        result = self.command("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", timeout=10)
        return result.returncode == 0 and result.stdout.split()[:1] == ["idle"]

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = {n: d.returncode for n, d in self.daemons.items() if d.poll() is not None}
            if exited:
                raise SlurmUnavailable(f"{exited} exited while waiting for {what}: {self.logs()}")
            if condition():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {timeout} s waiting for {what}: {self.logs()}")

    def logs(self) -> str:
        texts = []
        for path in sorted(self.directory.glob("*.log")) + sorted(self.directory.glob("*.out")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            texts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(texts)

    def stop(self) -> None:
        """Cancel every job, then stop exactly the daemons this object started."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.command("scancel", "--full", "--user=root", timeout=10)
            # Let the jobs' slurmstepd processes finish while slurmd is still there.
            deadline = time.monotonic() + 15
            while self.command("squeue", "-h", timeout=10).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for name in reversed(DAEMONS):
            daemon = self.daemons.get(name)
            if daemon is None or daemon.poll() is not None:
                continue
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)


def make_cluster() -> SlurmCluster:
    return SlurmCluster(Path(tempfile.mkdtemp(prefix="dp3batch-slurm-")))


if __name__ == "__main__":
    problem = missing_requirements()
    if problem:
        raise SystemExit(problem)
    cluster = make_cluster()
    try:
        cluster.start()
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        print(f"export SLURM_CONF={cluster.conf}  # Ctrl-C stops the daemons", flush=True)
        signal.sigwait(signals)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
