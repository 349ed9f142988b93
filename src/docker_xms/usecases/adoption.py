"""Choosing and keeping the port plans of adopted containers (see domain/adoption.py for the design), and
what docker-xms decided for every managed container: its record of a container it created, or that plan.

`adopt_locked` runs inside every reconciliation, under the host lock: it drops the plans of containers
that no longer run and the records of containers that are gone, and chooses a plan for each running
managed container it has no record of, from the media port pool less the ranges the records and the
plans hold (never from labels, which anyone can write).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from docker_xms.adapters import adoption_store, hostnet, hostproc, records
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.adoption import origin, outside_pool, plan_labels, source_of, trusted_labels
from docker_xms.domain.engine_types import ContainerSummary
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    LABEL_PREFIX,
    MANAGED_LABEL,
    PLAN_LABEL,
    PLAN_PENDING,
    host_ranges_from_labels,
    profile_of,
    unreadable,
)
from docker_xms.domain.pool import Span, allocation_block, holds, parse_adopt, parse_pool
from docker_xms.domain.ports import ephemeral_outside
from docker_xms.domain.profiles import Profile
from docker_xms.errors import BadInput
from docker_xms.settings import Settings
from docker_xms.usecases.boundaries import EngineApi
from docker_xms.usecases.plan import node_advertise, taking, waits


def media_pool(settings: Settings) -> tuple[Span, ...]:
    """The host ports media ranges may be forwarded from (the `media_port_pool` setting)."""
    return parse_pool(settings.media_port_pool)


def host_pool(settings: Settings) -> tuple[int, int]:
    """Where container-address media ranges are found on this host (for `run` and adoption alike).

    The widest stretch of the media port pool below the ports the engine picks for -c publishing (the
    kernel's ephemeral range), so that a DNAT range never takes packets meant for a port it published.
    """
    low, _ = hostnet.ephemeral_ports()
    return allocation_block(media_pool(settings), low)


def held_plans(settings: Settings) -> adoption_store.Plans:
    """What docker-xms decided for each managed container, by id (adapters/records.decided)."""
    return records.decided(settings)


def record(settings: Settings, container_id: str, labels: dict[str, str]) -> None:
    """Keep what `run` decided for a container it has just created; the caller holds the host lock."""
    path = records.records_path(settings)
    kept = records.load(path)
    # Only docker-xms's own decisions: not the managed mark, not the user's own labels.
    kept[container_id] = {k: v for k, v in labels.items() if k.startswith(LABEL_PREFIX + ".") and k != MANAGED_LABEL}
    records.save(path, kept)


def held_ranges(plans: Mapping[str, Mapping[str, str]]) -> list[tuple[int, int]]:
    return [r for labels in plans.values() if unreadable(labels) is None for r in host_ranges_from_labels(labels)]


def with_plans(
    summaries: Iterable[ContainerSummary],
    plans: Mapping[str, Mapping[str, str]],
    pool: Sequence[Span],
    sources: Collection[str] | None = None,
) -> list[ContainerSummary]:
    """The containers as docker-xms acts on them: managed ones with what it decided for them in their labels
    (domain/adoption.trusted_labels), the labels' own claims dropped; with `sources` (the adopt setting's),
    one from another source is marked refused."""
    return [
        replace(s, labels=trusted_labels(s.labels, plans.get(s.id), pool, sources)) if s.managed else s
        for s in summaries
    ]


def adopt_sources(settings: Settings) -> tuple[str, ...]:
    return parse_adopt(settings.adopt)


@dataclass(frozen=True)
class Adopted:
    id: str
    name: str
    origin: str
    labels: Mapping[str, str]
    # The ephemeral range its network namespace needs off the server's ports (as `run` sets it), or None.
    ephemeral: tuple[int, int] | None = None


@dataclass(frozen=True)
class Refused:
    id: str
    name: str
    reason: str

    def sentence(self) -> str:
        return f"Not forwarding the media ports of {self.name}: {self.reason.rstrip('.')}; it gets its budget only."


@dataclass(frozen=True)
class Adoption:
    # Every plan held after this pass, by container id.
    plans: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    adopted: tuple[Adopted, ...] = ()
    # Ids of containers whose plan was given back (they stopped or are gone).
    released: tuple[str, ...] = ()
    refused: tuple[Refused, ...] = ()


def set_ephemeral(engine: EngineApi, adopted: Adopted) -> str | None:
    """Move an adopted container's ephemeral range off its server's ports, as `run` does at create (a
    Compose file from `docker-xms compose` sets it itself); a log line, or None when none is needed.

    Written from the host into the container's network namespace: the container itself may not (that
    needs CAP_NET_ADMIN, which it is not given).
    """
    if adopted.ephemeral is None:
        return None
    info = engine.find_container(adopted.id)
    if info is None or not info.pid:
        return None
    low, high = adopted.ephemeral
    done = hostproc.run(
        ["nsenter", "-t", str(info.pid), "-n", "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={low} {high}"],
        timeout=10,
    )
    if done.code != 0:
        return f"could not set the ephemeral ports of {adopted.name}: {done.last_line()}"
    return f"ephemeral ports of {adopted.name} set to {low}-{high}, off its media ports"


def adopt_locked(engine: EngineApi, settings: Settings, pool: tuple[int, int] | None = None) -> Adoption:
    """Keep the plans of adopted containers and the records of created ones right; the caller holds the host
    lock. The plans returned are every decision in force: the records and the plans."""
    path, kept_path = records.plans_path(settings), records.records_path(settings)
    plans, created = adoption_store.load(path), records.load(kept_path)
    managed = engine.list_containers(all=True, label=f"{MANAGED_LABEL}=true")
    existing = {c.id for c in managed}
    running = [c for c in managed if c.running]
    running_ids = {c.id for c in running}
    # Records of containers that are gone go (the engine asked about each, not only its list: a record lost
    # by mistake would turn the container into an adopted one); a stopped one keeps its host range.
    recorded = {
        cid: labels for cid, labels in created.items() if cid in existing or engine.find_container(cid) is not None
    }
    kept = {cid: labels for cid, labels in plans.items() if cid in running_ids and cid not in recorded}
    # A plan not yet handed to a server whose wait is over is chosen again, as for a server never told.
    kept = {
        cid: labels
        for cid, labels in kept.items()
        if labels.get(PLAN_LABEL) != PLAN_PENDING or taking(engine.find_container(cid))
    }
    released = tuple(cid for cid in plans if cid not in kept)
    used = held_ranges(recorded) + held_ranges(kept)
    ports = media_pool(settings)
    sources = parse_adopt(settings.adopt)
    adopted: list[Adopted] = []
    refused: list[Refused] = []
    profiles: dict[str, Profile] = {}
    for c in running:
        if c.id in kept or c.id in recorded:
            continue
        if source_of(c.labels) not in sources:
            continue
        name = c.name or c.id[:12]
        try:
            problem = unreadable(c.labels) or outside_pool(c.labels, ports)
            profile_name = profile_of(c.labels)
        except BadInput as exc:
            problem, profile_name = exc.message, None
        if problem:
            # Reported where budgets are (rt.readable): it gets neither a budget nor a forward.
            continue
        if profile_name is None:
            continue
        try:
            profile = profiles.get(profile_name) or load_profile(
                profile_name, settings.profile_dirs, installed_only=True
            )
            profiles[profile_name] = profile
            told = waits(c.labels, profile) and taking(engine.find_container(c.id))
            chosen = plan_labels(profile, c.labels, c.network_mode, used, pool or host_pool(settings), told)
            if told:
                chosen.update({ADVERTISE_LABEL: node_advertise(settings), PLAN_LABEL: PLAN_PENDING})
            for low, high in host_ranges_from_labels(chosen):
                if not holds(ports, low, high):
                    raise BadInput(f"host ports {low}-{high} of its profile lie outside the media port pool")
        except BadInput as exc:
            refused.append(Refused(c.id, name, exc.message))
            continue
        kept[c.id] = chosen
        used += host_ranges_from_labels(chosen)
        ephemeral = None
        if c.network_mode != "host":
            ephemeral = ephemeral_outside([(p.start, p.end) for p in (*profile.ports, *profile.media_ranges)])
        adopted.append(Adopted(c.id, name, origin(c.labels), chosen, ephemeral))
    if kept != plans:
        adoption_store.save(path, kept)
    if recorded != created:
        records.save(kept_path, recorded)
    return Adoption({**kept, **recorded}, tuple(adopted), released, tuple(refused))
