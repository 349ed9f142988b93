"""Directory trees laid out like real hosts' /sys, /proc and /boot, for layouts this machine cannot show."""

from __future__ import annotations

import gzip
from pathlib import Path

RELEASE = "6.1.0-18-amd64"

HYBRID_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""

UNIFIED_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def v1_group(path: Path, runtime: int, period: int = 1_000_000, tasks: str = "") -> None:
    put(path / "cpu.rt_runtime_us", f"{runtime}\n")
    put(path / "cpu.rt_period_us", f"{period}\n")
    put(path / "cpu.shares", "1024\n")
    put(path / "tasks", tasks)


def kernel(proc: Path, runtime: int = 950_000, period: int = 1_000_000) -> None:
    put(proc / "sys/kernel/sched_rt_runtime_us", f"{runtime}\n")
    put(proc / "sys/kernel/sched_rt_period_us", f"{period}\n")
    put(proc / "sys/kernel/osrelease", f"{RELEASE}\n")


def hybrid_host(root: Path, runtime: int = 950_000, cpu_dir: str = "cpu") -> tuple[Path, Path, Path]:
    """This machine: cpu controller on v1 with RT group scheduling, cgroup2 beside it without cpu."""
    sys, proc, boot = root / "sys", root / "proc", root / "boot"
    kernel(proc, runtime)
    put(proc / "self/mounts", HYBRID_MOUNTS.replace("/sys/fs/cgroup/cpu ", f"/sys/fs/cgroup/{cpu_dir} "))
    (proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_CGROUP_SCHED=y\nCONFIG_RT_GROUP_SCHED=y\n"))
    v1_group(sys / "fs/cgroup" / cpu_dir, runtime)
    put(sys / "fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    boot.mkdir()
    return sys, proc, boot


def unified_host(
    root: Path, config: str | None, cmdline: str = "BOOT_IMAGE=/vmlinuz ro quiet"
) -> tuple[Path, Path, Path]:
    sys, proc, boot = root / "sys", root / "proc", root / "boot"
    kernel(proc)
    put(proc / "self/mounts", UNIFIED_MOUNTS)
    put(proc / "cmdline", cmdline + "\n")
    put(sys / "fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    put(sys / "fs/cgroup/cpu.stat", "usage_usec 1\n")
    boot.mkdir()
    if config is not None:
        put(boot / f"config-{RELEASE}", f"CONFIG_CGROUP_SCHED=y\nCONFIG_FAIR_GROUP_SCHED=y\n{config}\n")
    return sys, proc, boot
