"""The agent as a Swarm global service: the service described from the settings, and created on a manager."""

from __future__ import annotations

from docker_xms.adapters.engine import Engine
from docker_xms.adapters.profile_store import list_profiles
from docker_xms.domain.agent_service import CAPABILITIES, AgentService, linger_for
from docker_xms.domain.names import parse_ref
from docker_xms.settings import Settings


def service_from_settings(
    settings: Settings,
    image: str,
    cgroup_parent: str | None = None,
    rt_pool_us: int | None = None,
    metrics: str | None = None,
    interval_s: float | None = None,
) -> AgentService:
    """The service for these settings; the nodes' cgroup parent and pool cap default to this host's own.

    It lingers, when its node is drained, for as long as the slowest profile known here takes to drain.
    """
    parse_ref(image, allow_digest=True)
    return AgentService(
        image=image,
        cgroup_parent=settings.cgroup_parent if cgroup_parent is None else cgroup_parent,
        rt_pool_us=settings.rt_pool_us if rt_pool_us is None else rt_pool_us,
        metrics=metrics,
        interval_s=interval_s,
        linger_s=linger_for(list_profiles(settings.profile_dirs)),
    )


def create(engine: Engine, service: AgentService) -> str:
    """Create the service on the swarm whose manager `engine` is; returns the service's ID."""
    return engine.create_global_service(
        service.name,
        service.image,
        list(service.args),
        service.env,
        [(m.source, m.target, m.read_only) for m in service.mounts],
        list(CAPABILITIES),
        service.labels,
        service.stop_grace_s,
    )
