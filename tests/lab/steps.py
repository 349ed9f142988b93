"""What every lab test module does on its guest: the project handed in and set up by the README's first command,
shell lines run there, and the engine's own account of itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab.vm import Guest

HERE = Path(__file__).resolve().parents[2]
PROJECT = "/root/docker-xms"
CLI = f"{PROJECT}/.venv/bin/docker-xms"


def sh(guest: Guest, script: str, timeout: float = 600, check: bool = True) -> str:
    """A shell line as root in the guest; its output."""
    return guest.run("bash", "-c", script, timeout=timeout, check=check).stdout


def set_up(guest: Guest) -> None:
    """The project (this checkout's HEAD, as a root clone has it) and `quickstart.sh setup` run from it."""
    guest.put_git(HERE, PROJECT)
    done = guest.run("bash", f"{PROJECT}/scripts/quickstart.sh", "setup", timeout=2400, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def engine_info(guest: Guest) -> dict[str, Any]:
    """`docker info` of the guest's engine."""
    info: dict[str, Any] = json.loads(guest.run("docker", "info", "--format", "{{json .}}").stdout)
    return info
