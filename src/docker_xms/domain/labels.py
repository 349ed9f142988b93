"""The vocabulary of docker-xms's state in the engine: every container label, its values and its parser.

Labels are the only state docker-xms keeps: a container's profile, port mode, weight and port plan are
read back from them by every command and by the agent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from docker_xms.domain.forwards import DnatForward
from docker_xms.errors import BadInput

LABEL_PREFIX = "io.docker-xms"
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
PROFILE_LABEL = f"{LABEL_PREFIX}.profile"
MODE_LABEL = f"{LABEL_PREFIX}.mode"
WEIGHT_LABEL = f"{LABEL_PREFIX}.rt-weight"
# A container's port plan, so that other containers' plans and `reconcile` come from the engine alone.
LABEL_STRATEGY = f"{LABEL_PREFIX}.port-strategy"
LABEL_HOST_MEDIA = f"{LABEL_PREFIX}.host-media-ports"
LABEL_DNAT = f"{LABEL_PREFIX}.dnat"
# The address the media server puts in its SDP (and a SIP proxy in its headers), or "container": its own.
ADVERTISE_LABEL = f"{LABEL_PREFIX}.advertise"

# The orchestrators' own labels on the containers they start: where a managed container came from.
COMPOSE_PROJECT = "com.docker.compose.project"
SWARM_SERVICE = "com.docker.swarm.service.name"
SWARM_TASK = "com.docker.swarm.task.name"

# How media ports reach a container (see domain/ports.py); `run --ports` also takes "auto".
# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Strategy = Literal["publish", "dnat", "host"]
STRATEGIES: tuple[Strategy, ...] = ("publish", "dnat", "host")
PORT_CHOICES = ("auto", *STRATEGIES)

_SPAN = re.compile(r"^(\d+)-(\d+)$")
_FORWARD = re.compile(r"^([A-Za-z0-9_.-]+)/(tcp|udp):(\d+)-(\d+)>(\d+)-(\d+)$")


def weight_of(labels: Mapping[str, str]) -> int:
    """The container's weight in the real-time pool (1 when it has no weight label)."""
    text = labels.get(WEIGHT_LABEL, "1")
    try:
        weight = int(text)
    except ValueError:
        weight = 0
    if weight < 1:
        raise BadInput(f"Label {WEIGHT_LABEL}={text!r} is not a whole number of 1 or more.")
    return weight


# The generic resource a fleet's nodes advertise and its tasks reserve (`docker-xms node setup`, `compose`):
# milliseconds of real-time CPU per second. Swarm gives a task what it reserved in its environment.
RT_RESOURCE = "RT_MS"
RESERVED_ENV = f"DOCKER_RESOURCE_{RT_RESOURCE}"


def reserved_weight(env: Iterable[str]) -> int | None:
    """A Swarm task's weight from the RT_MS it reserved (DOCKER_RESOURCE_RT_MS=30 weighs 30), or None
    when it reserved none: a task that asked for twice the milliseconds gets twice the share."""
    for entry in env:
        name, _, value = entry.partition("=")
        if name == RESERVED_ENV:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def host_ranges_from_labels(labels: Mapping[str, str]) -> list[tuple[int, int]]:
    """The host media ranges a container holds, from its labels (none if it holds none)."""
    value = labels.get(LABEL_HOST_MEDIA, "")
    out: list[tuple[int, int]] = []
    for part in filter(None, value.split(",")):
        match = _SPAN.match(part)
        if match is None or int(match.group(1)) > int(match.group(2)):
            raise BadInput(f"Label {LABEL_HOST_MEDIA}={value!r} is malformed; expected ranges such as 20000-24497.")
        out.append((int(match.group(1)), int(match.group(2))))
    return out


def forwards_from_labels(labels: Mapping[str, str]) -> tuple[DnatForward, ...]:
    """The DNAT forwards a container's plan asked for, from its labels."""
    value = labels.get(LABEL_DNAT, "")
    out: list[DnatForward] = []
    for part in filter(None, value.split(",")):
        match = _FORWARD.match(part)
        if match is None:
            raise BadInput(f"Label {LABEL_DNAT}={value!r} is malformed; expected rtp/udp:20000-24000>49152-53152.")
        name, protocol = match.group(1), match.group(2)
        hs, he, cs, ce = (int(match.group(i)) for i in range(3, 7))
        if hs > he or cs > ce or he - hs != ce - cs:
            raise BadInput(f"Label {LABEL_DNAT}={value!r} maps ranges of different sizes.")
        out.append(DnatForward(name, protocol, hs, he, cs, ce))
    return tuple(out)


def unreadable(labels: Mapping[str, str]) -> str | None:
    """Why docker-xms cannot read a managed container's labels, or None when it can.

    Labels cannot change once a container exists, so such a container (made by hand, or by an older
    version) stays unreadable: reconciliation leaves it as it is and says so, instead of failing for all.
    """
    try:
        weight_of(labels)
        host_ranges_from_labels(labels)
        forwards_from_labels(labels)
    except BadInput as exc:
        return exc.message[0].lower() + exc.message[1:].rstrip(".")
    return None
