"""systemd's own cgroup subtree made writable inside a container, and nothing above it.

systemd in a container on cgroup v1 needs a writable `name=systemd` hierarchy of its own (it exits 255 on a
read-only one). Binding the host's /sys/fs/cgroup read-only does not give it that safely: engines before 25
apply `ro` to the top of the bind only, and every controller below stays writable, at the root of each host
hierarchy, so the container's root could rewrite other containers' budgets, freeze them or move host
processes. Instead docker-xms starts its containers in a private cgroup namespace, where the engine mounts
each controller read-only with the container's own group as its root, and a small gate as PID 1 waits
(domain/recipes.SYSTEMD_GATE) while the `name=systemd` mount is read-only. From the host, docker-xms then
makes that one mount writable in the container's mount namespace (a bind remount: the mount point's own
flag, not the hierarchy's) and the gate hands PID 1 over to systemd. The container can then write its own
subtree of that hierarchy, and no other cgroup file at all.

The remount is done by a short-lived process of docker-xms's own (this module, run with `-m`) that enters
only the container's mount namespace, checks that the path is a cgroup file system (statfs), and calls
mount(2): no program of the container's runs with the host's privileges.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

SYSTEMD_MOUNT = "/sys/fs/cgroup/systemd"

_CLONE_NEWNS = 0x00020000
_CGROUP_SUPER_MAGIC = 0x27E0EB
# Per-mount flags kept as the engine set them; MS_REMOUNT | MS_BIND changes the mount point's flags only.
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_RELATIME = 2, 4, 8, 32, 4096, 1 << 21


def waiting_mount(pid: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether the process's `name=systemd` cgroup mount is read-only with a root of the container's own (a
    private cgroup namespace's, or the engine's bind of the container's group): the gate waits for it."""
    try:
        lines = (proc_root / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[4] != SYSTEMD_MOUNT:
            continue
        separator = fields.index("-") if "-" in fields else -1
        if separator < 0 or fields[separator + 1] != "cgroup":
            return False
        return fields[3] != "/" and "ro" in fields[5].split(",")
    return False


def open_systemd_cgroup(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """Make the container's own `name=systemd` subtree writable where its gate waits for it.

    None when nothing was to be done or it was done; else why it could not be (one sentence's worth).
    """
    if not waiting_mount(pid, proc_root):
        return None
    try:
        # A process of its own: entering a mount namespace needs a single-threaded caller.
        done = subprocess.run(
            [sys.executable, "-I", "-m", "docker_xms.adapters.cgroupns", str(pid), str(proc_root)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not make its systemd cgroup writable: {exc}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        return f"could not make its systemd cgroup writable: {reason[:200]}"
    return None


def _remount(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """In this single-threaded process: enter the container's mount namespace and make its systemd mount
    writable; why not, or None when done."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(proc_root / str(pid) / "ns" / "mnt", os.O_RDONLY)
    # The pid may have ended and been given to another process since it was looked at: the namespace held
    # is the container's only if the process still shows the waiting mount now that the handle is held.
    if not waiting_mount(pid, proc_root):
        return "the process left before its namespace was entered"
    if libc.setns(fd, _CLONE_NEWNS) != 0:
        return f"setns: {os.strerror(ctypes.get_errno())}"
    target = SYSTEMD_MOUNT.encode()
    buf = ctypes.create_string_buffer(256)
    if libc.statfs(target, buf) != 0:
        return f"statfs: {os.strerror(ctypes.get_errno())}"
    if int.from_bytes(buf.raw[:8], sys.byteorder) != _CGROUP_SUPER_MAGIC:
        return "not a cgroup file system"
    flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RELATIME
    if libc.mount(None, target, None, flags, None) != 0:
        return f"mount: {os.strerror(ctypes.get_errno())}"
    return None


if __name__ == "__main__":
    problem = _remount(int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/proc"))
    sys.exit(problem)
