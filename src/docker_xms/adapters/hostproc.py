"""Programs run on the host itself: a C compiler, systemctl, a probe outside any container.

One place that starts host processes for the use cases, always with an argument list (never a shell), a
timeout, and the failure turned into one sentence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from docker_xms.errors import XmsError


@dataclass(frozen=True)
class Finished:
    code: int
    out: str
    err: str

    def last_line(self) -> str:
        """The last line of what the program said (stderr first), for an error sentence."""
        lines = (self.err or self.out).strip().splitlines()
        return lines[-1] if lines else f"exit {self.code}"


def is_root() -> bool:
    return os.geteuid() == 0


def which(program: str) -> str | None:
    return shutil.which(program)


def run(argv: Sequence[str], timeout: float | None = None) -> Finished:
    """Run a program to its end; a program that cannot be started or does not end in time is an XmsError."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise XmsError(f"Could not run {' '.join(argv)}: {exc}.") from None
    return Finished(done.returncode, done.stdout, done.stderr)


def spawn_detached(argv: Sequence[str], log: Path, extra_env: Mapping[str, str] | None = None) -> int:
    """Start a program that outlives this one: its own session, stdin from /dev/null, output appended to `log`."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, **extra_env} if extra_env else None,
            )
    except OSError as exc:
        raise XmsError(f"Could not start {' '.join(argv)}: {exc.strerror or exc}.") from None
    # Not waited for: it is meant to run on after this process ends.
    proc.returncode = 0
    return proc.pid


def _pids_where(matches: Callable[[Path], bool], proc_root: Path) -> list[int]:
    """The host processes whose /proc/PID directory `matches`; ones that end while we look are left out."""
    pids = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if matches(entry):
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def pids_named(comm: str, proc_root: Path = Path("/proc")) -> list[int]:
    """The host processes whose name (/proc/PID/comm) is `comm`."""
    return _pids_where(lambda entry: (entry / "comm").read_text().strip() == comm, proc_root)


def pids_in_pid_namespace_of(pid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """The host processes in the same PID namespace as `pid` (a container's first process): every process of
    that container, `exec`'s too. Empty when `pid` is gone or its namespace cannot be read."""
    try:
        namespace = os.readlink(proc_root / str(pid) / "ns" / "pid")
    except OSError:
        return []
    return _pids_where(lambda entry: os.readlink(entry / "ns" / "pid") == namespace, proc_root)


def start_ticks(pid: int, proc_root: Path = Path("/proc")) -> str:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat, after its name,
    which may hold spaces and parentheses); "" when it is gone."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else ""


def inotify_max_user_instances(proc_root: Path = Path("/proc")) -> int | None:
    """The host's per-user limit of inotify instances, or None if it cannot be read."""
    try:
        return int((proc_root / "sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        return None
