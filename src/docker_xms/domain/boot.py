"""What a container needs so that systemd boots as its PID 1, and the engines where it cannot.

No cgroup file of the host's is ever given to a container: the engine mounts the container's own subtree
in a private cgroup namespace, and on cgroup v1 the gate (domain/recipes.GATE_ENTRYPOINT) holds systemd
back until docker-xms has made that subtree's `name=systemd` hierarchy writable.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from docker_xms.domain.engine_types import DOCKER, PODMAN
from docker_xms.domain.recipes import GATE_ENTRYPOINT
from docker_xms.errors import BadInput

if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineKind

# Where an image keeps systemd: one of them must exist for the container to boot.
SYSTEMD_PATHS = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")


@dataclass(frozen=True)
class SystemdBoot:
    """The create arguments systemd needs in the container (None: the engine's default)."""

    tmpfs: Mapping[str, str]
    cgroupns: str
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    # The RLIMIT_RTPRIO soft and hard limit (see systemd_boot for when it is needed).
    rtprio: int | None = None
    security_opt: tuple[str, ...] = ()


# Engine 28 and later (API 1.48): the cgroup mount of the container's own private namespace writable.
# Older engines refuse it at create, with the option's text in their sentence; so does Podman's Docker API.
WRITABLE_CGROUPS = "writable-cgroups=true"


# Podman's Docker API runs a container in its systemd mode (the cgroup mount writable, /run on tmpfs) when
# the container's command is one of these or a file named systemd, and never on request.
PODMAN_SYSTEMD_COMMANDS = ("/sbin/init", "/usr/sbin/init", "/usr/local/sbin/init")


def podman_systemd_mode(command: tuple[str, ...]) -> bool:
    """Whether Podman runs a container with this command (entrypoint and arguments) in its systemd mode."""
    return bool(command) and (command[0] in PODMAN_SYSTEMD_COMMANDS or posixpath.basename(command[0]) == "systemd")


def systemd_boot(
    cgroup_version: int,
    tmpfs: tuple[str, ...],
    image_command: tuple[str, ...],
    userns: bool = False,
    engine: EngineKind = DOCKER,
) -> SystemdBoot:
    """The mounts and entrypoint for systemd on this host; `tmpfs` are the profile's own, beside /run.

    `userns`: the engine remaps user namespaces (its security options name userns); `engine`: which engine
    answers the Docker API.
    """
    mounts = {"/run": "", "/run/lock": "", **dict.fromkeys(tmpfs, "")}
    if engine == PODMAN:
        return _podman_boot(cgroup_version, mounts, image_command)
    if cgroup_version == 2:
        # A private cgroup namespace, and no mount of ours: the engine mounts a cgroup2 file system at
        # /sys/fs/cgroup that shows the container's own subtree only, writable as systemd >= 248 needs:
        # by remapped users (the container's root is then no root on the host, and CAP_SYS_NICE no longer
        # grants SCHED_FIFO: the rtprio limit does), or else by the engine's writable-cgroups option,
        # which an engine before 28 refuses (v2_systemd_refusal). Never the host's namespace with it: that
        # would be the host's whole tree.
        return SystemdBoot(mounts, "private", rtprio=99, security_opt=() if userns else (WRITABLE_CGROUPS,))
    if not image_command:
        raise BadInput("The image names no command to run; it needs systemd (/sbin/init) as its command.")
    # v1: a private cgroup namespace, whose controllers the engine mounts read-only at the container's own
    # group. The gate waits until docker-xms has made the `name=systemd` one writable (adapters/cgroupns.py),
    # then runs the image's command; cpu stays read-only, so systemd makes no cpu sub-cgroups (they would
    # start with a 0 budget).
    return SystemdBoot(mounts, "private", entrypoint=GATE_ENTRYPOINT, command=image_command)


def _podman_boot(cgroup_version: int, mounts: Mapping[str, str], image_command: tuple[str, ...]) -> SystemdBoot:
    """Podman (its Docker-compatible service): systemd boots by Podman's own systemd mode, which mounts the
    container's private cgroup2 writable; it has no writable-cgroups option and refuses the one it does not know.
    """
    if cgroup_version != 2:
        raise BadInput(
            "docker-xms runs systemd containers on Podman only on cgroup v2 (Podman's systemd mode): boot the host "
            "on cgroup v2, or use Docker Engine."
        )
    if not podman_systemd_mode(image_command):
        shown = " ".join(image_command[:4])[:200] or "none"
        raise BadInput(
            f"Podman runs systemd in a container only when the image's command is systemd or /sbin/init, and this "
            f'image\'s is {shown!r}: rebuild it with CMD ["/sbin/init"].'
        )
    return SystemdBoot(mounts, "private", rtprio=99)


def userns_remapped(security_options: tuple[str, ...]) -> bool:
    """Whether the engine remaps user namespaces, from the security options its /info lists."""
    return any(option.startswith("name=userns") for option in security_options)


def v2_systemd_refusal() -> str:
    """Why systemd cannot boot in a container of an engine that refused WRITABLE_CGROUPS on cgroup v2.

    Such an engine mounts a private cgroup namespace's /sys/fs/cgroup read-only unless the container is
    privileged or users are remapped, and systemd >= 248 stops on a read-only cgroup2; the only other ways
    (the host's tree read-write, the host's cgroup namespace) let the container's root write the host's
    cgroups. The ways out, the least change to the host first.
    """
    return (
        "On cgroup v2 this engine cannot give a container a writable cgroup of its own, which systemd 248 and "
        "later need (it refused writable-cgroups=true: Docker Engine 28 or later has it): upgrade the engine to "
        "28 or later, or run dockerd with --userns-remap=default, or boot the host on cgroup v1 "
        "(systemd.unified_cgroup_hierarchy=0)."
    )
