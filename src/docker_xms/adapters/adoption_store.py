"""The port plans the reconciler chose for adopted containers (see domain/adoption.py), in one JSON file.

It sits beside the host lock and is written only by a holder of that lock, so that `run` and every
reconciler read and write it in turn. Written whole to a temporary file and renamed over the old one:
a reader never sees half a file, and a process killed in the middle leaves the previous one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from docker_xms.errors import XmsError

FILE_NAME = "adopted.json"

Plans = dict[str, dict[str, str]]


def path_for(lock_path: Path) -> Path:
    return lock_path.with_name(FILE_NAME)


def load(path: Path) -> Plans:
    """Container id -> the labels chosen for it; empty when there is no file or it cannot be read.

    An unreadable file is treated as empty: its plans are chosen again (the rules follow), which is
    safer than refusing to reconcile a host.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(cid): {str(k): str(v) for k, v in labels.items()}
        for cid, labels in data.items()
        if isinstance(labels, dict)
    }


def save(path: Path, plans: Mapping[str, Mapping[str, str]]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(plans, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise XmsError(f"Could not write {path}: {exc.strerror or exc}; run as root.") from None
