"""The one check that comes before any work on the host: docker-xms runs as root, since it writes real-time
budgets into the host's cgroups (and netfilter rules, and its records under the host lock)."""

from __future__ import annotations

from docker_xms.adapters import hostproc
from docker_xms.errors import BadInput


def require_root() -> None:
    if not hostproc.is_root():
        raise BadInput("docker-xms must run as root: it writes real-time budgets into the host's cgroups.")
