"""Choosing and keeping the port plans of adopted containers (see domain/adoption.py for the design).

`adopt_locked` runs inside every reconciliation, under the host lock: it drops the plans of containers
that no longer run, and chooses one for each running managed container whose labels carry none, from
the ranges every other container holds (their labels, and the plans kept here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from docker_xms.adapters import adoption_store, hostnet, hostproc
from docker_xms.adapters.engine_list import ContainerSummary
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.adoption import effective_labels, needs_plan, origin, plan_labels
from docker_xms.domain.labels import MANAGED_LABEL, PROFILE_LABEL, host_ranges_from_labels, unreadable
from docker_xms.domain.ports import ephemeral_outside
from docker_xms.domain.profiles import Profile
from docker_xms.errors import BadInput
from docker_xms.settings import Settings
from docker_xms.usecases.boundaries import EngineApi


def host_pool() -> tuple[int, int]:
    """Where container-address media ranges are found on this host (for `run` and adoption alike).

    Below the ports the engine picks for -c publishing (the kernel's ephemeral range), so that a DNAT
    range never takes packets meant for a port the engine published.
    """
    low, _ = hostnet.ephemeral_ports()
    return (10000, low - 1)


def plans_path(settings: Settings) -> Path:
    return adoption_store.path_for(settings.lock_path)


def held_plans(settings: Settings) -> adoption_store.Plans:
    """The plans chosen for adopted containers, for readers that do not change them (no lock needed)."""
    return adoption_store.load(plans_path(settings))


def held_ranges(plans: Mapping[str, Mapping[str, str]]) -> list[tuple[int, int]]:
    return [r for labels in plans.values() if unreadable(labels) is None for r in host_ranges_from_labels(labels)]


def with_plans(summaries: Iterable[ContainerSummary], plans: Mapping[str, Mapping[str, str]]) -> list[ContainerSummary]:
    """The containers with the plans chosen for them in their labels, as `run` would have put them."""
    return [replace(s, labels=effective_labels(s.labels, plans.get(s.id))) if s.id in plans else s for s in summaries]


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
    """Keep the plans of adopted containers right; the caller holds the host lock."""
    path = plans_path(settings)
    plans = adoption_store.load(path)
    managed = engine.list_containers(all=True, label=f"{MANAGED_LABEL}=true")
    running = [c for c in managed if c.running]
    running_ids = {c.id for c in running}
    kept = {cid: labels for cid, labels in plans.items() if cid in running_ids}
    released = tuple(cid for cid in plans if cid not in kept)
    # Stopped containers of `run` keep their host range (they get the same rules back when they start).
    used = [
        r
        for c in managed
        if not needs_plan(c.labels) and unreadable(c.labels) is None
        for r in host_ranges_from_labels(c.labels)
    ]
    used += held_ranges(kept)
    adopted: list[Adopted] = []
    refused: list[Refused] = []
    profiles: dict[str, Profile] = {}
    for c in running:
        # One whose labels cannot be read keeps what it holds (reconcile reports it).
        if c.id in kept or not needs_plan(c.labels) or not c.labels.get(PROFILE_LABEL) or unreadable(c.labels):
            continue
        name = c.labels[PROFILE_LABEL]
        try:
            profile = profiles.get(name) or load_profile(name, settings.profile_dirs)
            profiles[name] = profile
            chosen = plan_labels(profile, c.labels, c.network_mode, used, pool or host_pool())
        except BadInput as exc:
            refused.append(Refused(c.id, c.name or c.id[:12], exc.message))
            continue
        kept[c.id] = chosen
        used += host_ranges_from_labels(chosen)
        ephemeral = None
        if c.network_mode != "host":
            ephemeral = ephemeral_outside([(p.start, p.end) for p in (*profile.ports, *profile.media_ranges)])
        adopted.append(Adopted(c.id, c.name or c.id[:12], origin(c.labels), chosen, ephemeral))
    if kept != plans:
        adoption_store.save(path, kept)
    return Adoption(kept, tuple(adopted), released, tuple(refused))
