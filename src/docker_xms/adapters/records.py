"""What docker-xms decided for each container it created, in one JSON file under its state directory.

`run` writes a container's record (its profile, mode, weight, advertised address, port strategy, host
media ranges and DNAT forwards: the labels it gives the container) as soon as the engine has created it,
under the host lock; every reconciliation drops the records of containers that are gone. The labels are
only a copy: a container with the same labels and another id has no record, and gains nothing by them.
The file is under /var/lib/docker-xms by default, so that it outlives a reboot as the containers do.
Written whole to a temporary file and renamed over the old one (adoption_store.save).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from docker_xms.adapters import adoption_store
from docker_xms.adapters.adoption_store import Plans, load, save
from docker_xms.settings import Settings

FILE_NAME = "containers.json"

__all__ = ["FILE_NAME", "Plans", "decided", "engine_key", "load", "plans_path", "records_path", "save"]


def engine_key(docker_host: str | None) -> str:
    """What tells this host's engine apart in file names: "" for the local one, else a digest of its address.

    Two engines on one host (another dockerd with its own socket) have containers of their own: each one's
    records and plans are its own, so that a reconciliation against one never drops the other's.
    """
    if docker_host in (None, "", "unix:///var/run/docker.sock", "unix:///run/docker.sock"):
        return ""
    return "-" + hashlib.sha256(docker_host.encode()).hexdigest()[:12]


def _keyed(path: Path, settings: Settings) -> Path:
    return path.with_name(f"{path.stem}{engine_key(settings.docker_host)}{path.suffix}")


def records_path(settings: Settings) -> Path:
    """The records of the containers `run` created on the settings' engine."""
    return _keyed(settings.state_dir / FILE_NAME, settings)


def plans_path(settings: Settings) -> Path:
    """The plans chosen for adopted containers of the settings' engine, beside the host lock."""
    return _keyed(adoption_store.path_for(settings.lock_path), settings)


def decided(settings: Settings) -> Plans:
    """What docker-xms decided for each managed container of the settings' engine, by id: its records of the
    containers `run` created over the plans chosen for adopted ones (for readers; no lock needed)."""
    return {**load(plans_path(settings)), **load(records_path(settings))}
