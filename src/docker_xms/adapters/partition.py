"""The isolated CPU partition for media containers on cgroup v2 (domain/cpusets.MEDIA_SLICE).

systemd owns the slice: it is started, and given the media CPUs (`AllowedCPUs`, which also enables the cpuset
controller down to it), through systemctl; the one file systemd has no property for, `cpuset.cpus.partition`,
is written here. The kernel says in that file whether the partition holds ("isolated") or why not
("isolated invalid (...)"). The slice stays until the host reboots; after a reboot the engine puts restarted
containers back in it and the next reconcile makes the partition again.
"""

from __future__ import annotations

from pathlib import Path

from docker_xms.adapters import hostproc
from docker_xms.domain.cpusets import ISOLATED, MEDIA_SLICE
from docker_xms.errors import XmsError

SYSTEMCTL_TIMEOUT_S = 30.0


def _slice_dir(sys_root: Path) -> Path:
    return sys_root / "fs/cgroup" / MEDIA_SLICE


def _read(path: Path) -> str:
    try:
        return path.read_text()[:256].strip()
    except OSError:
        return ""


def partition_state(sys_root: Path = Path("/sys")) -> str:
    """What the kernel says of the media slice's partition ("isolated", "member", "isolated invalid (...)");
    "" where there is no such slice."""
    return _read(_slice_dir(sys_root) / "cpuset.cpus.partition")


def make_partition(cpus: str, sys_root: Path = Path("/sys")) -> str:
    """The media slice on `cpus` (a CPU list) and its CPUs an isolated partition; what the kernel says of it
    after. Nothing is changed where both hold already."""
    base = _slice_dir(sys_root)
    if _read(base / "cpuset.cpus") == cpus and _read(base / "cpuset.cpus.partition") == ISOLATED:
        return ISOLATED
    for argv in (
        ["systemctl", "start", MEDIA_SLICE],
        ["systemctl", "set-property", "--runtime", MEDIA_SLICE, f"AllowedCPUs={cpus}"],
    ):
        done = hostproc.run(argv, timeout=SYSTEMCTL_TIMEOUT_S)
        if done.code != 0:
            raise XmsError(f"`{' '.join(argv)}` failed: {done.last_line()}.")
    try:
        (base / "cpuset.cpus.partition").write_text(ISOLATED)
    except OSError as exc:
        raise XmsError(
            f"The kernel refused {MEDIA_SLICE}'s CPUs {cpus} as an isolated partition: {exc.strerror}."
        ) from None
    return partition_state(sys_root)
