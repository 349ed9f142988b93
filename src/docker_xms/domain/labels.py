"""The vocabulary of docker-xms's labels: every container label, its values and its parser.

Labels are requests and copies, never authority: anyone who can run a container (or build an image, whose
labels every container made from it inherits) can write any of them. What docker-xms decided for a
container it created (its forwards, host ranges, weight, advertised address) is its own record
(adapters/records.py), which the labels only copy; a container it did not create asks to be managed and
names an installed profile, and gets a plan docker-xms chooses (usecases/adoption.py). The parsers here
bound every value, so that one container's labels can never stop the reconciliation of the others.
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
ADVERTISE_OWN = "container"
# Whether docker-xms has told the container its plan (domain/plan_unit.py): "given" at create by `run`,
# "handed" to an adopted container whose server waited, "pending" while chosen and not yet written. Its own
# decision, never the container's. An image whose server waits for a plan says so (every container
# inherits it).
PLAN_LABEL = f"{LABEL_PREFIX}.plan"
PLAN_GIVEN = "given"
PLAN_HANDED = "handed"
PLAN_PENDING = "pending"
PLAN_WAIT_LABEL = f"{LABEL_PREFIX}.plan-wait"
# Set by docker-xms's own reading of a container (domain/adoption.trusted_labels) on one it will not act on,
# with the reason; never taken from the container (a container's own is dropped before that reading).
REFUSED_LABEL = f"{LABEL_PREFIX}.refused"

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
    Mode = Literal["one-to-one", "container-address"]
STRATEGIES: tuple[Strategy, ...] = ("publish", "dnat", "host")
PORT_CHOICES = ("auto", *STRATEGIES)

# Where a container's ports are reached (MODE_LABEL): its own port numbers on the host, one such container
# per host (`run` without -c), or host ports of the engine's or the pool's choosing (`run -c`).
ONE_TO_ONE: Mode = "one-to-one"
CONTAINER_ADDRESS: Mode = "container-address"
MODES: tuple[Mode, ...] = (ONE_TO_ONE, CONTAINER_ADDRESS)

_SPAN = re.compile(r"^(\d{1,5})-(\d{1,5})$")
_FORWARD = re.compile(r"^([A-Za-z0-9_.-]{1,32})/(tcp|udp):(\d{1,5})-(\d{1,5})>(\d{1,5})-(\d{1,5})$")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The most a container's weight label may ask: a hundred times the share of a container of weight 1.
MAX_WEIGHT = 100


# Labels a user asks `run` to put on a container as well (`--label`, the `labels` setting): never in
# docker-xms's own namespace, bounded like everything else a label carries.
_OWNER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
MAX_OWNER_LABELS = 32
MAX_OWNER_VALUE = 256


def owner_labels(pairs: Iterable[str]) -> dict[str, str]:
    """The user's own labels from KEY=VALUE texts, checked; the last of two with one key stands."""
    labels, problem = _owner_labels(pairs)
    if problem is not None:
        raise BadInput(problem)
    return labels


def owner_labels_problem(pairs: Iterable[str]) -> str | None:
    """Why these KEY=VALUE texts are no labels of the user's own, or None when they are."""
    return _owner_labels(pairs)[1]


def _owner_labels(pairs: Iterable[str]) -> tuple[dict[str, str], str | None]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _OWNER_KEY.match(key):
            return out, (
                f"Label {pair[:70]!r} is not KEY=VALUE with a key of letters, digits, '.', '_', '/' or '-' "
                "(up to 128 characters)."
            )
        if key == LABEL_PREFIX or key.startswith(LABEL_PREFIX + "."):
            return out, f"Label {key[:70]!r} is in docker-xms's own namespace ({LABEL_PREFIX}.); choose another key."
        if len(value) > MAX_OWNER_VALUE or not value.isprintable():
            return out, f"The value of label {key!r} must be printable and at most {MAX_OWNER_VALUE} characters."
        out[key] = value
    if len(out) > MAX_OWNER_LABELS:
        return out, f"At most {MAX_OWNER_LABELS} labels of your own, not {len(out)}."
    return out, None


def weight_of(labels: Mapping[str, str]) -> int:
    """The container's weight in the real-time pool (1 when it has no weight label)."""
    text = labels.get(WEIGHT_LABEL, "1")
    try:
        weight = int(text)
    except ValueError:
        weight = 0
    if not 1 <= weight <= MAX_WEIGHT:
        raise BadInput(f"Label {WEIGHT_LABEL}={text[:16]!r} is not a whole number from 1 to {MAX_WEIGHT}.")
    return weight


def mode_of(text: str) -> Mode:
    """The port mode a text names, refused in one sentence when it names none."""
    for mode in MODES:
        if text == mode:
            return mode
    raise BadInput(f"Unknown port mode {text!r}: use {' or '.join(MODES)}.")


def profile_of(labels: Mapping[str, str]) -> str | None:
    """The profile a container's label names: a plain name (never a path), or None for none."""
    name = labels.get(PROFILE_LABEL)
    if name is None:
        return None
    if not _PROFILE_NAME.match(name) or name in (".", ".."):
        raise BadInput(f"Label {PROFILE_LABEL}={name[:70]!r} is not a profile name (letters, digits, '.', '_', '-').")
    return name


def _ports(low: int, high: int, what: str) -> None:
    if not 1 <= low <= high <= 65535:
        raise BadInput(f"{what}: ports {low}-{high} must lie within 1-65535, low to high.")


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
        if match is None:
            raise BadInput(
                f"Label {LABEL_HOST_MEDIA}={value[:70]!r} is malformed; expected ranges such as 20000-24497."
            )
        _ports(int(match.group(1)), int(match.group(2)), f"Label {LABEL_HOST_MEDIA}")
        out.append((int(match.group(1)), int(match.group(2))))
    return out


def forwards_from_labels(labels: Mapping[str, str]) -> tuple[DnatForward, ...]:
    """The DNAT forwards a container's plan asked for, from its labels."""
    value = labels.get(LABEL_DNAT, "")
    out: list[DnatForward] = []
    for part in filter(None, value.split(",")):
        match = _FORWARD.match(part)
        if match is None:
            raise BadInput(
                f"Label {LABEL_DNAT}={value[:70]!r} is malformed; expected rtp/udp:20000-24000>49152-53152 "
                "(a name of up to 32 characters)."
            )
        name, protocol = match.group(1), match.group(2)
        hs, he, cs, ce = (int(match.group(i)) for i in range(3, 7))
        _ports(hs, he, f"Label {LABEL_DNAT} ({name})")
        _ports(cs, ce, f"Label {LABEL_DNAT} ({name})")
        if he - hs != ce - cs:
            raise BadInput(f"Label {LABEL_DNAT}={value[:70]!r} maps ranges of different sizes.")
        out.append(DnatForward(name, protocol, hs, he, cs, ce))
    return tuple(out)


def unreadable(labels: Mapping[str, str]) -> str | None:
    """Why docker-xms cannot read a managed container's labels, or None when it can.

    Labels cannot change once a container exists, so such a container (made by hand, from an image that
    carries them, or by an older version) stays unreadable: reconciliation skips it and says so, instead
    of failing for all.
    """
    refused = labels.get(REFUSED_LABEL)
    if refused:
        return refused[:200]
    try:
        weight_of(labels)
        profile_of(labels)
        host_ranges_from_labels(labels)
        forwards_from_labels(labels)
    except BadInput as exc:
        return exc.message[0].lower() + exc.message[1:].rstrip(".")
    return None
