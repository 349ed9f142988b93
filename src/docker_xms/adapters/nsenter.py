"""A shell in a container, as the tech note's nsenter.sh gave one, with the container's own privileges.

`docker exec` runs the shell as the container's own processes run: its capabilities, its cgroup (so its
real-time budget), its seccomp and AppArmor profiles. nsenter from the host (`--nsenter`) enters only the
namespaces and keeps the host's full capabilities and cgroup: a program of the container's image (its
/bin/bash) would then run as the host's root in all but name, which a hostile image could use. It is kept
for an engine without a docker client, as an explicit choice.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from docker_xms.errors import BadInput

NAMESPACES = ("-m", "-u", "-i", "-n", "-p")  # mount, uts, ipc, net, pid


def shell_argv(pid: int, container_id: str, command: Sequence[str], use_nsenter: bool = False) -> list[str]:
    """The argument list that enters the container; `command` defaults to a login shell."""
    argv = list(command) or ["/bin/bash", "-l"]
    if use_nsenter:
        nsenter = shutil.which("nsenter")
        if nsenter is None or os.geteuid() != 0:
            raise BadInput("--nsenter needs the nsenter command (util-linux) and root.")
        return [nsenter, "-t", str(pid), *NAMESPACES, "--", *argv]
    docker = shutil.which("docker")
    if docker is None:
        raise BadInput(
            "A shell needs the docker client (docker exec gives it the container's own privileges); install it, "
            "or use --nsenter to enter the namespaces with the host's."
        )
    return [docker, "exec", *(["-it"] if sys.stdin.isatty() else ["-i"]), container_id, *argv]


def enter(argv: Sequence[str]) -> None:
    """Replace this process with `argv`, handing the terminal over."""
    sys.stdout.flush()
    os.execv(argv[0], list(argv))  # noqa: S606 - argv is a list, no shell
