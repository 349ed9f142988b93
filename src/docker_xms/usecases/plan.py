"""Handing an adopted container its plan: the address its server advertises, its media ports (the host
range's own numbers) and, by then, its real-time share in force (see domain/plan_unit.py for the image's
side).

Adoption (usecases/adoption.adopt_locked) chooses the plan of a container whose image waits and whose wait
is not over with the host range's numbers inside and this node's address, and marks it pending; every
reconciliation then, after the budgets and the container's cgroup, writes the server's instance files
into the container and last the marker that names this start of it, and marks the plan given. Nothing is
read from the container but what the engine and the kernel say of it (its environment as created, its
start, its first process).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from docker_xms.adapters import adoption_store, hostnet, hostproc, records
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.engine_types import ContainerInfo
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    PLAN_HANDED,
    PLAN_LABEL,
    PLAN_PENDING,
    PLAN_WAIT_LABEL,
    host_ranges_from_labels,
    profile_of,
)
from docker_xms.domain.plan_unit import PLAN_MARKER, still_taking, wait_s_of
from docker_xms.domain.profiles import MEDIA_INSTANCE_FILE, Profile, port_placeholder
from docker_xms.domain.recipes import profile_files
from docker_xms.domain.watchdog import engine_time
from docker_xms.errors import XmsError
from docker_xms.settings import Settings
from docker_xms.usecases.boundaries import EngineApi


def node_advertise(settings: Settings) -> str:
    """The address this node's adopted servers advertise (the `advertise` setting; "host": the default
    route's)."""
    return hostnet.host_address() if settings.advertise == "host" else settings.advertise


def waits(labels: Mapping[str, str], profile: Profile) -> bool:
    """Whether a container's server waits for a plan this host can give: its image says it waits, and its
    profile tells the server its ports and address in instance files."""
    return labels.get(PLAN_WAIT_LABEL) == "true" and profile.media_config == MEDIA_INSTANCE_FILE


def elapsed_s(info: ContainerInfo) -> float:
    """Seconds since the engine last started it; -1 when the engine's time cannot be read."""
    started = engine_time(info.started_at)
    return -1.0 if started is None else time.time() - started


def taking(info: ContainerInfo | None) -> bool:
    """Whether a running container still waits for its plan and can be handed it in time."""
    if info is None or not info.running:
        return False
    wait_s = wait_s_of(info.env)
    return wait_s is not None and still_taking(elapsed_s(info), wait_s)


def instance_values(
    profile: Profile, advertised: str, host_ports: Mapping[str, int | None] | None = None
) -> dict[str, object]:
    """What the server's instance files are told beyond its media range: where peers reach it, and the port
    of each single port (its host port where one is published, else its own)."""
    values: dict[str, object] = {"advertise_address": advertised, "advertised": profile.advertised(advertised)}
    for spec in profile.ports:
        if not spec.is_range:
            values[port_placeholder(spec)] = (host_ports or {}).get(f"{spec.start}/{spec.protocol}") or spec.start
    return values


def instance_files(
    profile: Profile, media: tuple[int, int], values: Mapping[str, object]
) -> list[tuple[str, bytes, int]]:
    """The server's instance files, rendered with its media range and `values`: (path, content, mode)."""
    instance = {f.path for f in profile.instance_files}
    rendered = profile_files(profile, media[0], media[1], values)
    return [(f.path, f.content.encode(), f.mode) for f in rendered if f.path in instance]


def published_ports(info: ContainerInfo) -> dict[str, int | None]:
    """The host port the engine publishes each of a container's ports on ("5060/udp" -> 32771), from its
    inspect view: where peers reach its signalling at the node's address."""
    out: dict[str, int | None] = {}
    for key, bindings in info.ports.items():
        ports = [b.get("HostPort", "") for b in bindings or () if isinstance(b, dict)]
        found = next((int(p) for p in ports if isinstance(p, str) and p.isdigit() and 0 < int(p) < 65536), None)
        if found is not None:
            out[key] = found
    return out


@dataclass(frozen=True)
class Handed:
    name: str
    advertise: str
    media: str
    # Why it could not be handed (the container's first process gone, the engine refused the write, its
    # profile no longer installed); "" when it was. It stays pending, and is tried again at the next pass.
    problem: str = ""

    def line(self) -> str:
        if self.problem:
            return f"could not hand {self.name} its plan: {self.problem}"
        return f"plan given to {self.name}: advertises {self.advertise}" + (
            f", media ports {self.media}" if self.media else ""
        )


def hand_plans_locked(engine: EngineApi, settings: Settings, plans: Mapping[str, Mapping[str, str]]) -> list[Handed]:
    """Hand every pending plan to its container while it still waits; the caller holds the host lock and
    has written the budgets. A container that no longer waits keeps its plan pending until the next
    adoption pass chooses it again (usecases/adoption.py)."""
    pending = [cid for cid, labels in plans.items() if labels.get(PLAN_LABEL) == PLAN_PENDING]
    if not pending:
        return []
    path = records.plans_path(settings)
    stored = adoption_store.load(path)
    handed = []
    for cid in pending:
        info = engine.find_container(cid)
        labels = stored.get(cid)
        if labels is None or info is None or not taking(info):
            continue
        try:
            handed.append(_hand(engine, settings, info, labels))
        except XmsError as exc:
            handed.append(Handed(info.name, "", "", exc.message.rstrip(".")))
            continue
        stored[cid] = {**labels, PLAN_LABEL: PLAN_HANDED}
    if any(not h.problem for h in handed):
        adoption_store.save(path, stored)
    return handed


def _hand(engine: EngineApi, settings: Settings, info: ContainerInfo, labels: Mapping[str, str]) -> Handed:
    profile = load_profile(profile_of(info.labels) or "", settings.profile_dirs, installed_only=True)
    ranges = host_ranges_from_labels(labels)
    advertised = labels.get(ADVERTISE_LABEL, "")
    media = (min(low for low, _ in ranges), max(high for _, high in ranges)) if ranges else None
    start = hostproc.start_ticks(info.pid, settings.engine_proc)
    if not start:
        raise XmsError(f"The first process of {info.name} is gone.")
    values = instance_values(profile, advertised, published_ports(info))
    files = instance_files(profile, media, values) if media is not None else []
    # One archive, the marker last: the server starts once it is there, and only for this start of the
    # container; a write that fails leaves the server's files as its image has them.
    engine.put_files(info.id, [*files, (PLAN_MARKER, start.encode() + b"\n", 0o644)])
    return Handed(info.name, advertised, f"{media[0]}-{media[1]}" if media else "")
