"""Which containers' gates wait for their systemd cgroup: read from /proc/PID/mountinfo (a copied tree here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.adapters.cgroupns import open_systemd_cgroup, waiting_mount

OWN = "/docker/6a4c343e080f"


def proc_with(tmp_path: Path, line: str) -> Path:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "mountinfo").write_text(
        "122 121 0:59 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755\n"
        f"123 122 0:29 {OWN} /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu\n" + line
    )
    return tmp_path


@pytest.mark.parametrize(
    ("line", "waits"),
    [
        # A private namespace's (or the engine's bind of its own group), read-only: the gate waits.
        (
            f"131 122 0:37 {OWN} /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime - cgroup systemd rw,name=systemd\n",
            True,
        ),
        # Opened already.
        (
            f"131 122 0:37 {OWN} /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup systemd rw,name=systemd\n",
            False,
        ),
        # The host's whole hierarchy (root "/"): never made writable by docker-xms.
        (
            "131 122 0:37 / /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime - cgroup systemd rw,name=systemd\n",
            False,
        ),
        # Something else at that path (a tmpfs a container made): not a cgroup, left alone.
        ("131 122 0:37 / /sys/fs/cgroup/systemd ro,nosuid - tmpfs tmpfs ro\n", False),
        # cgroup v2 (no such mount).
        ("", False),
    ],
)
def test_a_gate_waits_only_on_a_read_only_cgroup_mount_of_the_containers_own_group(
    tmp_path: Path, line: str, waits: bool
) -> None:
    proc = proc_with(tmp_path, line)
    assert waiting_mount(4242, proc) is waits


def test_nothing_is_done_for_a_process_that_is_gone_or_does_not_wait(tmp_path: Path) -> None:
    assert open_systemd_cgroup(999999, tmp_path) is None
    proc = proc_with(tmp_path, "")
    assert open_systemd_cgroup(4242, proc) is None


def test_a_pid_given_to_another_process_meanwhile_is_not_entered(tmp_path: Path) -> None:
    """The namespace handle is taken first, then the process must still show the waiting mount: a pid reused
    by a host process between the look and the remount is refused, never entered."""
    from docker_xms.adapters.cgroupns import _remount

    proc = proc_with(tmp_path, "")  # now a process without the waiting mount holds pid 4242
    (proc / "4242" / "ns").mkdir()
    (proc / "4242" / "ns" / "mnt").write_text("")
    assert _remount(4242, proc) == "the process left before its namespace was entered"
