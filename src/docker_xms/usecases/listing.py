"""`ps`: the managed containers from the engine's list view and their budgets from the cgroup files.

This module stays light on purpose (no Docker SDK, no rich): a listing is run often, and importing
those costs more than the listing itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from docker_xms.adapters import adoption_store, cgroups, engine_list, records
from docker_xms.domain.adoption import origin, trusted_labels
from docker_xms.domain.engine_types import DOCKER, PODMAN, ContainerSummary
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    ADVERTISE_OWN,
    LABEL_HOST_MEDIA,
    LABEL_STRATEGY,
    MANAGED_LABEL,
    MODE_LABEL,
    PLAN_GIVEN,
    PLAN_HANDED,
    PLAN_LABEL,
    PLAN_WAIT_LABEL,
    PROFILE_LABEL,
)
from docker_xms.domain.plan_unit import plan_state, wait_s_of
from docker_xms.domain.pool import parse_pool
from docker_xms.domain.rt_mode import PER_GROUP
from docker_xms.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineKind


def managed_summaries(settings: Settings) -> list[ContainerSummary]:
    """The engine's list view of managed containers: over the local socket, else through the SDK.

    Each shows what docker-xms decided for it (its record, or the plan chosen for an adopted one) as if its
    labels carried it; a label's own claim shows nothing.
    """
    plans = records.decided(settings)
    path = engine_list.local_socket(settings.docker_host)
    if path is not None:
        return _with_plans(engine_list.list_containers(path, label=f"{MANAGED_LABEL}=true"), plans, settings)
    from docker_xms.adapters.engine import Engine  # noqa: PLC0415 - only for engines not on a local socket

    found = Engine.connect(host=settings.docker_host).list_containers(all=True, label=f"{MANAGED_LABEL}=true")
    return _with_plans(found, plans, settings)


def _with_plans(
    summaries: list[ContainerSummary], plans: adoption_store.Plans, settings: Settings
) -> list[ContainerSummary]:
    # usecases/adoption.with_plans, without importing what that module needs to choose plans.
    pool = parse_pool(settings.media_port_pool)
    return [replace(s, labels=trusted_labels(s.labels, plans.get(s.id), pool)) for s in summaries]


@dataclass(frozen=True)
class PsRow:
    id: str
    name: str
    profile: str
    mode: str
    status: str
    health: str
    address: str
    strategy: str
    ports: str
    budget_us: int | None
    # The address the media server advertises ("" for a container started before docker-xms set one).
    advertise: str = ""
    # How it was started: run, compose:PROJECT, swarm:SERVICE.SLOT or docker (domain/adoption.origin).
    origin: str = ""
    # Whether docker-xms has handed it its plan: given, waiting (its server waits for it) or none.
    plan: str = "none"


def ps(
    summaries: list[ContainerSummary],
    budget_of: Callable[[str], int | None],
    plan_of: Callable[[ContainerSummary], str] | None = None,
) -> list[PsRow]:
    """One request to the engine (its list view), plus a cgroup file read per running container, and an
    inspect per running container whose server waits for a plan not yet given."""
    rows = []
    for s in summaries:
        published = sorted({f"{p.host_port}->{p.container_port}/{p.protocol}" for p in s.ports if p.host_port})
        host_media = s.labels.get(LABEL_HOST_MEDIA, "")
        rows.append(
            PsRow(
                id=s.id[:12],
                name=s.name or "?",
                profile=s.labels.get(PROFILE_LABEL, "?"),
                mode=s.labels.get(MODE_LABEL, "?"),
                status=s.state,
                health=s.health,
                address=s.ip_address,
                strategy=s.labels.get(LABEL_STRATEGY, ""),
                ports=", ".join(published + ([f"{host_media}/media"] if host_media else [])),
                budget_us=budget_of(s.id) if s.running else None,
                advertise=s.ip_address
                if s.labels.get(ADVERTISE_LABEL) == ADVERTISE_OWN
                else s.labels.get(ADVERTISE_LABEL, ""),
                origin=origin(s.labels),
                plan=plan_of(s) if plan_of is not None else "none",
            )
        )
    return rows


def json_text(rows: list[PsRow]) -> str:
    """`ps --json`: one object per container, keys sorted."""
    return json.dumps([asdict(row) for row in rows], indent=2, sort_keys=True)


def plan_reader(settings: Settings) -> Callable[[ContainerSummary], str]:
    """A container's plan state (domain/plan_unit.plan_state); the engine asked only about a running one
    whose image waits and which has no plan yet, for when it started and how long it waits."""
    path = engine_list.local_socket(settings.docker_host)

    def state(s: ContainerSummary) -> str:
        given = s.labels.get(PLAN_LABEL) in (PLAN_GIVEN, PLAN_HANDED)
        waits = s.labels.get(PLAN_WAIT_LABEL) == "true"
        if given or not waits or not s.running:
            return plan_state(given, waits, s.running, 0.0, 0)
        if path is not None:
            started, env = engine_list.started_and_env(path, s.id)
        else:
            from docker_xms.adapters.engine import Engine  # noqa: PLC0415 - only for engines not on a local socket

            info = Engine.connect(host=settings.docker_host).find_container(s.id)
            started, env = (info.started_at, info.env) if info is not None else ("", ())
        from docker_xms.domain.watchdog import engine_time  # noqa: PLC0415 - datetime, only for a waiting one

        at, wait_s = engine_time(started), wait_s_of(env)
        if at is None or wait_s is None:
            return "none"
        return plan_state(False, True, True, time.time() - at, wait_s)

    return state


def budget_reader(settings: Settings) -> Callable[[str], int | None]:
    """A cheap reader of a container's kernel budget for listings: no engine request, file reads only.

    It tries where either cgroup driver puts containers, so it need not ask the engine which one runs.
    """
    host = cgroups.detect_host(*settings.roots)
    if host.mode != PER_GROUP:
        return lambda _: None
    fs = cgroups.CgroupFs(host.cpu_root)
    places = engine_parents(host, settings.cgroup_parent)

    def read(container_id: str) -> int | None:
        group = container_group(fs, places, container_id)
        return None if group is None else fs.read_runtime(group)

    return read


DRIVERS = ("cgroupfs", "systemd")


def engine_parents(
    host: cgroups.HostRt, cgroup_parent: str, drivers: Sequence[str] = DRIVERS
) -> tuple[tuple[str, str, EngineKind], ...]:
    """Where an engine puts its containers' cgroups with each of these cgroup drivers: (driver, parent, engine),
    then Podman's place (systemd driver, its default parent).

    Looked for in each driver's place, a container's group is found without asking the engine which
    driver it runs.
    """
    places: list[tuple[str, str, EngineKind]] = []
    for driver in drivers:
        # The settings' parent names the systemd driver's only when it is a slice, as the engine reads it.
        custom = cgroup_parent if driver == "cgroupfs" or cgroup_parent.endswith(".slice") else ""
        places.append((driver, cgroups.engine_parent(host, driver, custom), DOCKER))
    if "systemd" in drivers and not cgroup_parent:
        places.append(("systemd", cgroups.engine_parent(host, "systemd", "", PODMAN), PODMAN))
    return tuple(places)


def container_group(
    fs: cgroups.CgroupFs, places: Sequence[tuple[str, str, EngineKind]], container_id: str
) -> str | None:
    """The container's cgroup in the first of `places` (engine_parents) where it exists, if any."""
    for driver, parent, engine in places:
        group = cgroups.container_cgroup(parent, driver, container_id, engine)
        if fs.exists(group):
            return group
    return None
