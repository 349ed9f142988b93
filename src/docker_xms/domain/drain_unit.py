"""The drain's generated files: the systemd unit whose stop drains a media server, and its script.

A profile's [drain] (domain/profiles.py) says how its server stops taking new sessions and how long those
under way may take; every image built from the profile carries these two files (domain/recipes.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Drain:
    """How the media server stops without dropping calls ([drain]): at shutdown, `command` runs inside the
    container before the server's units stop (the image's docker-xms-drain.service), for at most `grace_s`."""

    # Seconds the sessions under way may take to end before the server is stopped all the same.
    grace_s: int = 0
    # A shell command: stop taking new sessions, then return once none is left (empty: no drain).
    command: str = ""
    # Units the drain must run before (they stop after it); the readiness's required units by default.
    before: tuple[str, ...] = ()


DRAIN_UNIT = "docker-xms-drain.service"
DRAIN_SCRIPT = "/usr/local/sbin/docker-xms-drain"


def drain_unit(drain: Drain) -> str:
    """The unit whose stop drains: ordered after the server's units, so that at shutdown (whoever stops the
    container: docker stop, Compose, Swarm, docker-xms stop) systemd runs its ExecStop before stopping them."""
    after = " ".join(drain.before)
    return f"""[Unit]
Description=docker-xms drain: no new sessions, then wait for those under way before the media server stops
After={after}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
# Through bash: the image build does not keep a file's mode.
ExecStop=/bin/bash {DRAIN_SCRIPT}
# The profile's grace: then the server stops with whatever sessions are left.
TimeoutStopSec={drain.grace_s}

[Install]
WantedBy=multi-user.target
"""


def drain_script(drain: Drain) -> str:
    """The script the unit's ExecStop runs: the profile's [drain] command."""
    return f"#!/bin/bash\n# docker-xms drain, from the profile's [drain] command.\n{drain.command}\n"
