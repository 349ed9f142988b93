"""Adoption: containers that carry docker-xms's labels but were not started by `docker-xms run`.

A container started by `docker run --label ...`, by Compose or as a Swarm task is managed like one of
`run`'s when it carries at least

    io.docker-xms.managed=true            # the agent and the commands manage it
    io.docker-xms.profile=NAME            # its media ranges, from the profile (without it: a budget only)

and, optionally, `io.docker-xms.port-strategy` (dnat or host; by default host for a host-network
container, dnat otherwise; publish: the engine's own ports, nothing to forward), `io.docker-xms.mode`
(container-address for dnat, one-to-one for host by default) and `io.docker-xms.rt-weight` (1).
`docker-xms compose` writes exactly these.

What `run` computes before it creates a container and keeps in its labels (the host media range of a
container-address container, the DNAT forwards) cannot be put on a container that already exists, and
cannot be derived from anything stable either (replicas of one service have the same labels, and the
ranges other containers hold change the choice). So the agent (or any command reconciling) chooses it
when the container starts, from the node's free ranges with the same function `run` uses
(`ports.plan_ports`), and keeps it, as the labels `run` would have written, in a small file of its own
beside the host lock (adapters/adoption_store.py), written only under that lock, so that `run` and the
reconciler never hand out the same range twice. A plan lives while its container runs: a stopped
container is told nothing about its host range (its server keeps the profile's ports inside), so it gets
a fresh one when it starts again, and Swarm's exited task containers hold none. The file lives under
/run, which a reboot empties with the rules it describes.

The server inside keeps the profile's own media ports (its image was built with them), so a forward
maps the chosen host range onto them: host ports A-B to container ports 30000-30999, say. Peers that
reach the container's address see the right ports in its SDP; peers that reach only the host need the
host range's numbers, which `ps` shows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    COMPOSE_PROJECT,
    CONTAINER_ADDRESS,
    LABEL_DNAT,
    LABEL_HOST_MEDIA,
    LABEL_STRATEGY,
    MODE_LABEL,
    ONE_TO_ONE,
    PLAN_HANDED,
    PLAN_LABEL,
    PLAN_PENDING,
    REFUSED_LABEL,
    STRATEGIES,
    SWARM_SERVICE,
    SWARM_TASK,
    forwards_from_labels,
    host_ranges_from_labels,
    mode_of,
    unreadable,
)
from docker_xms.domain.pool import Span, holds
from docker_xms.errors import BadInput

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from docker_xms.domain.profiles import Profile


ADOPTED_PLANS = (PLAN_HANDED, PLAN_PENDING)


def origin(labels: Mapping[str, str]) -> str:
    """How a managed container was started, from the engine's own labels.

    swarm:SERVICE.SLOT (a replicated task; a global task shows its node id for the slot),
    compose:PROJECT, run (docker-xms run: its plan and advertised address are in its labels), or docker.
    """
    task = labels.get(SWARM_TASK, "")
    service = labels.get(SWARM_SERVICE, "")
    if task or service:
        # A task's name is SERVICE.SLOT.TASKID (SERVICE.NODEID.TASKID for a global service).
        rest = task[len(service) + 1 :] if service and task.startswith(service + ".") else ""
        slot = rest.split(".", 1)[0]
        return f"swarm:{service or task}" + (f".{slot}" if slot else "")
    project = labels.get(COMPOSE_PROJECT, "")
    if project:
        return f"compose:{project}"
    # An adopted container handed its plan has an advertised address too.
    if ADVERTISE_LABEL in labels and LABEL_STRATEGY in labels and labels.get(PLAN_LABEL) not in ADOPTED_PLANS:
        return "run"
    return "docker"


def source_of(labels: Mapping[str, str]) -> str:
    """Where a container docker-xms did not create comes from, as the `adopt` setting names it."""
    kind = origin(labels).split(":", 1)[0]
    # "run" from labels alone is a claim anyone can make: without docker-xms's record it is a plain docker run.
    return "docker" if kind == "run" else kind


def strategy_of(labels: Mapping[str, str], network_mode: str) -> str:
    strategy = labels.get(LABEL_STRATEGY) or ("host" if network_mode == "host" else "dnat")
    if strategy not in STRATEGIES:
        raise BadInput(f"Label {LABEL_STRATEGY}={strategy!r} is not one of {', '.join(STRATEGIES)}.")
    if strategy == "host" and network_mode != "host":
        raise BadInput(f"Label {LABEL_STRATEGY}=host is on a container without host networking.")
    if strategy == "dnat" and network_mode == "host":
        raise BadInput(f"Label {LABEL_STRATEGY}=dnat is on a container with host networking.")
    return strategy


def plan_labels(
    profile: Profile,
    labels: Mapping[str, str],
    network_mode: str,
    used_host_ranges: Iterable[tuple[int, int]],
    host_pool: tuple[int, int],
    told: bool = False,
) -> dict[str, str]:
    """The labels `run` would have given this container: strategy, mode, host media range and forwards.

    dnat: a free block of the pool for the profile's media ports, forwarded onto the ports the server
    uses inside (`told`: a server that will be told its ports uses the block's own numbers, as `run -c`'s).
    host: the profile's own ports on the host, refused when another container holds them.
    """
    strategy = strategy_of(labels, network_mode)
    mode = labels.get(MODE_LABEL) or (CONTAINER_ADDRESS if strategy == "dnat" else ONE_TO_ONE)
    if strategy == "publish":
        return {LABEL_STRATEGY: strategy, MODE_LABEL: mode}
    # Imported here: `ps` reads origins and plans from this module on every call, and needs no planner.
    from docker_xms.domain import ports as port_plans  # noqa: PLC0415

    # With host networking the server listens on its profile's ports whatever the mode says.
    plan = port_plans.plan_ports(
        profile.ports,
        profile.media_ranges,
        ONE_TO_ONE if strategy == "host" else mode_of(mode),
        strategy,
        used_host_ranges=used_host_ranges,
        host_pool=host_pool,
        # Told its ports, the server uses the host's numbers; else they are in its image, and in its SDP.
        same_ports=told,
        own_numbers_first=not told,
    )
    return {MODE_LABEL: mode, **plan.labels()}


# Labels only docker-xms's own decision sets: taken from its record or the plan it chose, never from the
# container, whose owner (or whose image's author) can write any label.
DECIDED_KEYS = (LABEL_DNAT, LABEL_HOST_MEDIA, ADVERTISE_LABEL, PLAN_LABEL)


def outside_pool(labels: Mapping[str, str], pool: Sequence[Span]) -> str | None:
    """Why the host ports a container's labels ask for lie outside the media port pool, or None."""
    asked = [*host_ranges_from_labels(labels), *((f.host_start, f.host_end) for f in forwards_from_labels(labels))]
    for low, high in asked:
        if not holds(pool, low, high):
            return f"its labels ask for host ports {low}-{high}, outside the media port pool"
    return None


def trusted_labels(
    labels: Mapping[str, str],
    decided: Mapping[str, str] | None,
    pool: Sequence[Span],
    sources: Collection[str] | None = None,
) -> dict[str, str]:
    """A managed container's labels as docker-xms acts on them.

    With `decided` (docker-xms's record of a container it created, or the plan it chose for an adopted
    one), its forwards, host ranges and advertised address are those, whatever the labels say. Without,
    the labels keep only their requests (managed, profile, strategy, mode, weight): a container that
    copied another's labels, or an image that carries them, gains no rule and no range by them. A
    container whose labels cannot be read or ask for ports outside the pool is marked (REFUSED_LABEL),
    so that every reader skips it and says why; so is one from a source the `adopt` setting leaves out
    (`sources`: the sources adopted from; None, all).
    """
    claimed = {k: v for k, v in labels.items() if k != REFUSED_LABEL}
    own = {k: v for k, v in claimed.items() if k not in DECIDED_KEYS}
    if decided is not None:
        return {**own, **decided}
    try:
        problem = unreadable(claimed) or outside_pool(claimed, pool)
    except BadInput as exc:
        problem = exc.message
    if not problem and sources is not None and source_of(claimed) not in sources:
        problem = f"containers started by {source_of(claimed)} are not adopted here (setting adopt)"
    return {**own, REFUSED_LABEL: problem} if problem else own
