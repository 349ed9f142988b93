"""The container labels that hold docker-xms's state in the engine."""

from __future__ import annotations

from collections.abc import Mapping

from docker_xms.domain import ports
from docker_xms.errors import BadInput

LABEL_PREFIX = "io.docker-xms"
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
PROFILE_LABEL = f"{LABEL_PREFIX}.profile"
MODE_LABEL = f"{LABEL_PREFIX}.mode"
WEIGHT_LABEL = f"{LABEL_PREFIX}.rt-weight"


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


def unreadable(labels: Mapping[str, str]) -> str | None:
    """Why docker-xms cannot read a managed container's labels, or None when it can.

    Labels cannot change once a container exists, so such a container (made by hand, or by an older
    version) stays unreadable: reconciliation leaves it as it is and says so, instead of failing for all.
    """
    try:
        weight_of(labels)
        ports.host_ranges_from_labels(labels)
        ports.forwards_from_labels(labels)
    except BadInput as exc:
        return exc.message[0].lower() + exc.message[1:].rstrip(".")
    return None
