"""A real one-node Slurm cluster on this machine, for the tests of ``plcl cohort``.

Starts its own munged (a key and socket of its own), slurmctld and slurmd on localhost from a
generated slurm.conf (no cgroups: proctrack/linuxproc, task/none; select/cons_tres over this
machine's CPUs and memory), with every state, spool, log and pid file under one temporary folder,
and stops them afterwards. Commands reach it through the ``SLURM_CONF`` of ``Cluster.env``.
Debian's packages are ``slurm-wlm`` and ``munge``; the daemons run as the user who starts them,
so root (CI runs as root) or a user allowed to run slurmd.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class SlurmUnavailable(Exception):
    """Why Slurm cannot start here (the tests skip with this reason): not Linux, not installed, not root."""


class SlurmStartFailed(RuntimeError):
    """Slurm is installed and may run here but did not start: a fault of the generated configuration or
    of the daemons, so the tests fail with the daemons' logs instead of skipping."""


def _find(program: str) -> str | None:
    return shutil.which(program) or next((str(p) for p in (Path("/usr/sbin") / program,) if p.is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def jobs(self, job: str) -> list[tuple[str, str]]:
        """(job id, state) of the array's tasks still known to squeue (pending or running)."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%i %T", check=False).stdout
        return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]

    def wait(self, job: str, timeout: float = 300) -> None:
        """Until no task of ``job`` is pending or running."""
        deadline = time.monotonic() + timeout
        while self.jobs(job):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} still running after {timeout} s: {self.jobs(job)}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for process in reversed(self.processes):  # slurmd, slurmctld, munged
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def start_cluster(root: Path) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; SlurmUnavailable says why Slurm cannot run here,
    SlurmStartFailed that it could and did not start."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        raise SlurmUnavailable("Slurm runs on Linux only")
    missing = [p for p in DAEMONS + CLIENTS if _find(p) is None]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root here (it starts jobs as their users)")
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    for name in ("state", "spool", "munge"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=plcltest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}", "CredType=cred/munge", f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}", f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}", f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "ReturnToService=2", "MinJobAge=600", "KillWait=5", "InactiveLimit=0", "MailProg=/bin/true",
        f"PlugStackConfig={root / 'plugstack.conf'}", "SchedulerParameters=sched_interval=2",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n")
    (root / "plugstack.conf").write_text("")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env)
    try:
        for argv in ([_find("munged"), "-F", "-f", f"--key-file={key}", f"--socket={munge_socket}",
                      f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                      f"--seed-file={root / 'munge' / 'munged.seed'}"],
                     [_find("slurmctld"), "-D", "-i", "-f", str(conf)],
                     [_find("slurmd"), "-D", "-f", str(conf), "-N", host]):
            with open(root / f"{Path(argv[0]).name}.stderr.log", "w") as stderr:  # the child keeps its own copy
                cluster.processes.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr))
            time.sleep(0.5)
        _wait_for_idle_node(cluster, host)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_idle_node(cluster: Cluster, host: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead:
            raise SlurmStartFailed(f"{', '.join(dead)} stopped at start:\n{cluster.logs()}")
        result = cluster.run("sinfo", "-h", "-n", host, "-o", "%T", check=False, timeout=20)
        state = result.stdout.strip()
        if state.startswith("idle"):
            return
        time.sleep(0.5)
    raise SlurmStartFailed(f"the node did not become idle in {timeout:.0f} s (state {state!r}):\n{cluster.logs()}")


def main(argv: list[str]) -> int:
    """``python Testing/slurm_support.py DIR``: start a cluster under DIR for a benchmark, print its
    SLURM_CONF, and keep it until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    if len(argv) != 1:
        print("usage: python Testing/slurm_support.py DIR", file=sys.stderr)
        return 2
    try:
        cluster = start_cluster(Path(argv[0]).resolve())
    except (SlurmUnavailable, SlurmStartFailed) as reason:
        print(f"slurm_support: Slurm cannot start here: {reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}", flush=True)
    try:
        while all(p.poll() is None for p in cluster.processes):
            time.sleep(1)
        print(f"slurm_support: a daemon stopped:\n{cluster.logs()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
