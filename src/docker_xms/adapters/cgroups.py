"""The host's real-time scheduling setup and the cpu controller's cgroup files.

Every filesystem root is a parameter, so that layouts this machine cannot show (cgroup v2, the systemd
driver, other kernel configs) can be read from directory trees laid out like the real ones.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from docker_xms.domain.cgroup_types import GroupRuntime
from docker_xms.domain.cpusets import parse_cpu_list
from docker_xms.domain.engine_types import DOCKER, PODMAN
from docker_xms.domain.rt_mode import GLOBAL, NONE, PER_GROUP, V2_RT_GROUP
from docker_xms.errors import BadInput, NotFound, XmsError

# The mode's type exists only for the type checker (see domain/rt_mode.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineKind
    from docker_xms.domain.rt_mode import RtMode

RUNTIME_FILE = "cpu.rt_runtime_us"
PERIOD_FILE = "cpu.rt_period_us"

_POLICIES = {
    0: "SCHED_OTHER",
    1: "SCHED_FIFO",
    2: "SCHED_RR",
    3: "SCHED_BATCH",
    5: "SCHED_IDLE",
    6: "SCHED_DEADLINE",
}


class CgroupWriteError(XmsError):
    """The kernel refused a value written to a cgroup file."""

    def __init__(self, path: Path, value: int, err: OSError) -> None:
        reason = _REASONS.get(err.errno or 0, err.strerror or str(err))
        super().__init__(f"The kernel refused {value} for {path}: {reason}.")
        self.path = path
        self.value = value
        self.errno = err.errno


_REASONS = {
    errno.EINVAL: "invalid argument (the parent cgroup holds too little real-time runtime for its "
    "children, or the value is outside 0 to the period)",
    errno.EBUSY: "device or resource busy (the group runs real-time threads, so it cannot be set to 0)",
    errno.EPERM: "operation not permitted (run as root)",
    errno.EACCES: "permission denied (run as root)",
    errno.ENOENT: "no such file (the cgroup is gone or the kernel has no real-time group scheduling)",
}


@dataclass(frozen=True)
class HostRt:
    """What the host offers for real-time scheduling."""

    cgroup_version: int
    rt_group_sched: bool | None
    rt_runtime_us: int
    rt_period_us: int
    mode: RtMode
    cpu_root: Path


@dataclass(frozen=True)
class ThreadSched:
    tid: int
    comm: str
    policy: str
    rt_priority: int
    cgroup: str


def detect_host(
    sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc"), boot_root: Path = Path("/boot")
) -> HostRt:
    runtime = _read_int(proc_root / "sys/kernel/sched_rt_runtime_us")
    period = _read_int(proc_root / "sys/kernel/sched_rt_period_us")
    v1_cpu = _v1_cpu_mount(sys_root, proc_root)
    if v1_cpu is not None:
        version, cpu_root = 1, v1_cpu
        # On v1 the files exist exactly when the kernel does per-group budgets (since 6.16 they are
        # also absent when rt_group_sched=0 is on the kernel command line).
        group_sched: bool | None = (cpu_root / RUNTIME_FILE).is_file()
    elif (sys_root / "fs/cgroup/cgroup.controllers").is_file():
        version, cpu_root = 2, sys_root / "fs/cgroup"
        group_sched = _rt_group_sched_config(proc_root, boot_root)
    else:
        raise XmsError(f"Cannot find the cpu cgroup controller under {sys_root}/fs/cgroup; is cgroupfs mounted?")
    return HostRt(version, group_sched, runtime, period, _mode(version, group_sched, runtime), cpu_root)


def online_cpus(sys_root: Path = Path("/sys")) -> tuple[int, ...]:
    """The CPUs the kernel has online (/sys/devices/system/cpu/online); on this host, where that cannot be
    read, every CPU this process may use; in a copied tree without the file, none."""
    try:
        return parse_cpu_list((sys_root / "devices/system/cpu/online").read_text())
    except (OSError, BadInput):
        return tuple(sorted(os.sched_getaffinity(0))) if sys_root == Path("/sys") else ()


def fair_server_reserve(sys_root: Path = Path("/sys")) -> dict[int, int]:
    """The fair server's runtime per CPU, ns per its period (kernels from 6.12: the time each CPU keeps for
    normal tasks however busy its real-time ones are), from debugfs where it is mounted; {} elsewhere."""
    out: dict[int, int] = {}
    base = sys_root / "kernel/debug/sched/fair_server"
    try:
        cpus = [p for p in base.iterdir() if p.name.startswith("cpu") and p.name[3:].isdigit()]
    except OSError:
        return out
    for cpu in cpus:
        with contextlib.suppress(OSError, ValueError):
            out[int(cpu.name[3:])] = int((cpu / "runtime").read_text().strip())
    return dict(sorted(out.items()))


def _mode(version: int, group_sched: bool | None, runtime: int) -> RtMode:
    if runtime == 0:
        return NONE
    if group_sched and version == 1:
        return PER_GROUP
    if group_sched and version == 2:
        return V2_RT_GROUP
    return GLOBAL


def _v1_cpu_mount(sys_root: Path, proc_root: Path) -> Path | None:
    for mounts in (proc_root / "self/mounts", proc_root / "mounts"):
        try:
            lines = mounts.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
                return _under(sys_root, _unescape(fields[1]))
        return None
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        candidate = sys_root / "fs/cgroup" / name
        if (candidate / "cpu.shares").is_file() or (candidate / RUNTIME_FILE).is_file():
            return candidate
    return None


def _under(sys_root: Path, mount_point: str) -> Path:
    """A mount point of the real /sys, placed under sys_root."""
    relative = os.path.relpath(mount_point, "/sys")
    return Path(mount_point) if relative.startswith("..") else sys_root / relative


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _rt_group_sched_config(proc_root: Path, boot_root: Path) -> bool | None:
    config = kernel_config(proc_root, boot_root)
    if config is None:
        return None
    if "CONFIG_RT_GROUP_SCHED=y" not in config.splitlines():
        return False
    # Linux 6.16 added a boot switch and a build option that turns group scheduling off by default.
    try:
        cmdline = (proc_root / "cmdline").read_text().split()
    except OSError:
        cmdline = []
    if "rt_group_sched=0" in cmdline:
        return False
    if "rt_group_sched=1" in cmdline:
        return True
    return "CONFIG_RT_GROUP_SCHED_DEFAULT_DISABLED=y" not in config.splitlines()


def kernel_config(proc_root: Path, boot_root: Path) -> str | None:
    """The running kernel's build configuration (/proc/config.gz, else /boot/config-RELEASE), or None."""
    import gzip  # noqa: PLC0415 - only where a kernel configuration is read: `ps --json` never does

    try:
        return gzip.decompress((proc_root / "config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    try:
        release = (proc_root / "sys/kernel/osrelease").read_text().strip()
        return (boot_root / f"config-{release}").read_text(errors="replace")
    except OSError:
        return None


def engine_parent(host: HostRt, cgroup_driver: str, cgroup_parent: str = "", engine: EngineKind = DOCKER) -> str:
    """The engine's parent cgroup for containers, relative to the cpu controller's root.

    Both cgroup versions use the same names, so `host` only matters for callers that pass it on. Podman's
    defaults are its own (machine.slice, libpod_parent).
    """
    del host
    podman = engine == PODMAN
    if cgroup_driver == "cgroupfs":
        return "/" + (cgroup_parent or ("libpod_parent" if podman else "docker")).strip("/")
    if cgroup_driver == "systemd":
        return slice_path(cgroup_parent or ("machine.slice" if podman else "system.slice"))
    raise BadInput(f"Unknown cgroup driver {cgroup_driver!r}: the engine uses cgroupfs or systemd.")


def slice_path(name: str) -> str:
    """Where systemd puts a slice: each dash opens a nested slice ("a-b.slice" is in "a.slice")."""
    if name == "-.slice":
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise BadInput(
            f"With the systemd cgroup driver the cgroup parent must be a slice name like my.slice, not {name!r}."
        )
    parts = name.removesuffix(".slice").split("-")
    if not all(parts):
        raise BadInput(f"{name!r} is not a valid slice name: dashes must separate non-empty parts.")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def container_cgroup(parent: str, driver: str, container_id: str, engine: EngineKind = DOCKER) -> str:
    podman = engine == PODMAN
    if driver == "systemd":
        name = f"{'libpod' if podman else 'docker'}-{container_id}.scope"
    else:
        name = f"libpod-{container_id}" if podman else container_id
    return parent.rstrip("/") + "/" + name


class CgroupFs:
    """The cpu controller's files under one root (the v1 cpu mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise BadInput(f"{rel!r} is not a cgroup path: it must not contain '.' or '..'.")
        return self.root.joinpath(*parts)

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_dir()

    def procs_under(self, rel: str) -> set[int]:
        """Every process in the group and its sub-groups (systemd's inside a container); none if it is gone."""
        base = self.path(rel)
        if not base.is_dir():
            return set()
        return {int(p) for procs in base.rglob("cgroup.procs") for p in procs.read_text().split()}

    def ensure(self, rel: str) -> None:
        """Create a missing group (a v1 engine creates /docker only with its first container)."""
        try:
            self.path(rel).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise XmsError(f"Cannot create the cgroup {self.path(rel)}: {err.strerror}.") from err

    def read_runtime(self, rel: str) -> int:
        return _read_int(self.path(rel) / RUNTIME_FILE)

    def read_period(self, rel: str) -> int:
        return _read_int(self.path(rel) / PERIOD_FILE)

    def write_runtime(self, rel: str, us: int) -> None:
        path = self.path(rel) / RUNTIME_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, f"{us}\n".encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise CgroupWriteError(path, us, err) from err

    def children(self, rel: str) -> list[GroupRuntime]:
        base = self.path(rel)
        found = []
        for entry in sorted(base.iterdir()):
            if (entry / RUNTIME_FILE).is_file():
                child = f"{rel.rstrip('/')}/{entry.name}"
                try:
                    found.append(GroupRuntime(entry.name, self.read_runtime(child), self.read_period(child)))
                except XmsError:
                    # A container removed while we looked takes its group along: it holds nothing now.
                    if entry.is_dir():
                        raise
        return found

    def sibling_runtime(self, rel: str) -> int:
        """Runtime held by the other children of rel's parent, per PERIOD_US: it limits what rel can hold."""
        # Here, not at the top: `ps --json` reads budgets through this module and needs no budget planning.
        from docker_xms.domain.budget import PERIOD_US, to_period  # noqa: PLC0415

        parts = [p for p in rel.split("/") if p]
        if not parts:
            return 0
        parent = "/" + "/".join(parts[:-1])
        return sum(
            to_period(c.runtime_us, c.period_us, PERIOD_US) for c in self.children(parent) if c.name != parts[-1]
        )


def thread_policies(pid: int, proc_root: Path = Path("/proc")) -> list[ThreadSched]:
    """Every thread of a process with its scheduling policy, real-time priority and cpu cgroup."""
    task_dir = proc_root / str(pid) / "task"
    try:
        tids = sorted(int(name) for name in os.listdir(task_dir) if name.isdigit())
    except OSError as err:
        raise NotFound(f"No process {pid} is running (nothing in {task_dir}).") from err
    threads = []
    for tid in tids:
        try:
            stat = (task_dir / str(tid) / "stat").read_text()
            cgroup = (task_dir / str(tid) / "cgroup").read_text()
        except OSError:
            continue  # the thread ended while we looked
        threads.append(parse_stat(stat, cgroup))
    return threads


def rttime_soft_us(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """The soft RLIMIT_RTTIME a process runs under, us (0: unlimited), from /proc/PID/limits; None when the
    process is gone or the line cannot be read."""
    try:
        text = (proc_root / str(pid) / "limits").read_text()
    except OSError:
        return None
    return parse_rttime(text)


def parse_rttime(limits: str) -> int | None:
    """The soft value of the "Max realtime timeout" line of a /proc/PID/limits text (0: unlimited)."""
    for line in limits.splitlines():
        if line.startswith("Max realtime timeout"):
            soft = line[len("Max realtime timeout") :].split()[:1]
            if soft == ["unlimited"]:
                return 0
            return int(soft[0]) if soft and soft[0].isdigit() else None
    return None


def parse_stat(stat: str, cgroup: str) -> ThreadSched:
    # comm may hold spaces and ')', so the fields after it start after the last ')'.
    close = stat.rindex(")")
    tid = int(stat[: stat.index("(")])
    comm = stat[stat.index("(") + 1 : close]
    rest = stat[close + 1 :].split()
    # rest[0] is field 3 (state): field n of the full line is rest[n - 3].
    rt_priority, policy = int(rest[40 - 3]), int(rest[41 - 3])
    return ThreadSched(tid, comm, _POLICIES.get(policy, f"policy {policy}"), rt_priority, cpu_cgroup(cgroup))


def cpu_cgroup(text: str) -> str:
    """The cpu controller's path from a /proc/<pid>/cgroup file: the v1 cpu line, else the v2 line."""
    unified = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "cpu" in controllers.split(","):
            return path
        if hierarchy == "0" and controllers == "":
            unified = path
    return unified


def parse_steal_ms(stat: str, ticks_per_s: int) -> float:
    """CPU time a hypervisor has taken from this machine's vCPUs since boot: the steal column of /proc/stat, in ms."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # cpu user nice system idle iowait irq softirq steal ...: kernels before 2.6.11 have no steal.
            return int(fields[8]) * 1000 / ticks_per_s if len(fields) > 8 else 0.0
    return 0.0


def cpu_steal_ms(proc_root: Path = Path("/proc")) -> float | None:
    """The host's steal time so far in ms, or None if /proc/stat cannot be read."""
    try:
        return parse_steal_ms((proc_root / "stat").read_text(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise XmsError(f"Cannot read a number from {path}: {err}.") from err
