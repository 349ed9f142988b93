"""A shell in a container's namespaces: nsenter as root, else `docker exec`, as the tech note's nsenter.sh."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from docker_xms.errors import BadInput

NAMESPACES = ("-m", "-u", "-i", "-n", "-p")  # mount, uts, ipc, net, pid


def shell_argv(pid: int, container_id: str, command: Sequence[str]) -> list[str]:
    """The argument list that enters the container; `command` defaults to a login shell."""
    argv = list(command) or ["/bin/bash", "-l"]
    nsenter = shutil.which("nsenter")
    if nsenter and os.geteuid() == 0:
        return [nsenter, "-t", str(pid), *NAMESPACES, "--", *argv]
    docker = shutil.which("docker")
    if docker is None:
        raise BadInput("Neither nsenter (as root) nor the docker client is available for a shell.")
    return [docker, "exec", *(["-it"] if sys.stdin.isatty() else ["-i"]), container_id, *argv]


def enter(argv: Sequence[str]) -> None:
    """Replace this process with `argv`, handing the terminal over."""
    sys.stdout.flush()
    os.execv(argv[0], list(argv))  # noqa: S606 - argv is a list, no shell
