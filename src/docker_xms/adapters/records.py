"""What docker-xms decided for each container it created, in one JSON file under its state directory.

`run` writes a container's record (its profile, mode, weight, advertised address, port strategy, host
media ranges and DNAT forwards: the labels it gives the container) as soon as the engine has created it,
under the host lock; every reconciliation drops the records of containers that are gone. The labels are
only a copy: a container with the same labels and another id has no record, and gains nothing by them.
The file is under /var/lib/docker-xms by default, so that it outlives a reboot as the containers do.
Written whole to a temporary file and renamed over the old one (adoption_store.save).
"""

from __future__ import annotations

from pathlib import Path

from docker_xms.adapters.adoption_store import Plans, load, save

FILE_NAME = "containers.json"

__all__ = ["FILE_NAME", "Plans", "load", "path_for", "save"]


def path_for(state_dir: Path) -> Path:
    return state_dir / FILE_NAME
