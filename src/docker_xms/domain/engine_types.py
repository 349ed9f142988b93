"""The engine's records: what it tells of itself and its containers, and the container docker-xms asks it for.

Plain data, built from the engine's JSON by the engine adapters (`adapters/engine.py`, `adapters/engine_list.py`),
which alone turn a `CreateSpec` into the SDK's arguments, so that the use cases and the in-memory fakes of
the tests take them without the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from docker_xms.domain.labels import LABEL_PREFIX, MANAGED_LABEL

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    EngineKind = Literal["docker", "podman"]

# Called with each chunk of an engine stream (pull, push, build) as it arrives.
Progress = Callable[[dict[str, "Any"]], None]


# Which engine answers the Docker API: Docker's own, or Podman's Docker-compatible service.
DOCKER: EngineKind = "docker"
PODMAN: EngineKind = "podman"


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    server_version: str
    api_version: str
    cgroup_driver: str
    cgroup_version: str
    security_options: tuple[str, ...]
    docker_root: str
    kind: EngineKind = DOCKER


# The bridge each engine's default network is on: docker-xms's forwards tell traffic to and from it apart.
DEFAULT_BRIDGES: dict[str, str] = {DOCKER: "docker0", PODMAN: "podman0"}


def engine_kind(components: object) -> EngineKind:
    """Docker or Podman, from the component names of the engine's /version (Podman's: "Podman Engine")."""
    if isinstance(components, list):
        for component in components[:16]:
            if isinstance(component, dict) and str(component.get("Name", "")).lower().startswith("podman"):
                return PODMAN
    return DOCKER


@dataclass(frozen=True)
class ContainerInfo:
    """What docker-xms needs to know of a container, read from the engine's inspect data."""

    id: str
    name: str
    status: str
    pid: int
    image: str
    labels: dict[str, str]
    ip_address: str
    cpu_rt_runtime: int
    cpu_rt_period: int
    cgroup_parent: str
    ports: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    restart_policy: str = ""
    network_mode: str = ""
    started_at: str = ""
    exit_code: int = 0
    # Why the engine could not start it last time (empty if it did, or was stopped on purpose).
    error: str = ""
    finished_at: str = ""
    # Its environment as created ("NAME=value"): where Swarm puts a task's reserved generic resources.
    env: tuple[str, ...] = ()
    # The soft RLIMIT_RTTIME the engine gives its processes, microseconds (the watchdog); 0: none.
    rttime_us: int = 0
    # The CPUs it may run on as the engine keeps them ("1-3"); "": every CPU.
    cpuset_cpus: str = ""

    @property
    def managed(self) -> bool:
        return self.labels.get(MANAGED_LABEL) == "true"

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting") and self.pid > 0

    def label(self, key: str, default: str = "") -> str:
        return self.labels.get(f"{LABEL_PREFIX}.{key}", default)


@dataclass(frozen=True)
class Healthcheck:
    """The engine's own health check: a command run in the container, times in seconds."""

    test: tuple[str, ...]
    interval_s: int
    timeout_s: int
    retries: int
    start_period_s: int


# What `run --restart` offers: the engine's policies, except on-failure (a media server that systemd keeps up
# inside does not exit on failure, and a count of retries would need a number of its own).
RESTART_CHOICES = ("no", "unless-stopped", "always")


@dataclass(frozen=True)
class CreateSpec:
    """Everything docker-xms asks of the engine when it creates a container (always detached)."""

    image: str
    name: str | None = None
    command: tuple[str, ...] | None = None
    # Replaces the image's entrypoint (with `command`, what runs is entrypoint + command).
    entrypoint: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    cap_add: tuple[str, ...] = ()
    stop_signal: str | None = None
    # Container port ("5060/udp") -> host port, (host address, host port), or None for any free port.
    ports: Mapping[str, Any] | None = None
    network_mode: str | None = None
    healthcheck: Healthcheck | None = None
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    # Host paths mounted read-only at the same path in the container.
    read_only_mounts: tuple[str, ...] = ()
    cgroupns: str | None = None
    # The RLIMIT_RTPRIO soft and hard limit, when the engine's default (0) is not enough.
    rtprio: int | None = None
    # The RLIMIT_RTTIME soft and hard limits in microseconds (domain/watchdog.py), None: the engine's (none).
    rttime_us: tuple[int, int] | None = None
    # Security options ("writable-cgroups=true", domain/boot.py).
    security_opt: tuple[str, ...] = ()
    # The engine's restart policy ("unless-stopped", ...); "": the engine's default (no).
    restart_policy: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    cpu_rt_runtime: int = 0
    # The CPUs it may run on ("1-3", domain/cpusets.py); "": every CPU.
    cpuset_cpus: str = ""
    # Seconds a stop waits after the stop signal before the engine kills (None: the engine's 10).
    stop_timeout: int | None = None


@dataclass(frozen=True)
class PublishedPort:
    protocol: str
    container_port: int
    # 0 when the port is exposed but not published on the host.
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True)
class ContainerSummary:
    """A container as the engine's list view shows it (GET /containers/json).

    What the list view lacks (the stored real-time budget, the restart policy, why a start failed) is
    in the inspect view (`Engine.get_container`), read only where it is needed.
    """

    id: str
    name: str
    image: str
    # The engine's state word: created, running, restarting, paused, exited, dead.
    state: str
    # The engine's human status ("Up 3 minutes (healthy)"): the only place the list view gives health.
    status: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip_address: str = ""
    ports: tuple[PublishedPort, ...] = ()
    network_mode: str = ""
    # When the engine created it (seconds since the epoch): the order CPU sets are handed out in.
    created: int = 0

    @property
    def managed(self) -> bool:
        return self.labels.get(MANAGED_LABEL) == "true"

    @property
    def running(self) -> bool:
        # A restarting container has no process (the engine sets its pid to 0 between attempts).
        return self.state == "running"

    @property
    def health(self) -> str:
        if "(healthy)" in self.status:
            return "healthy"
        if "(unhealthy)" in self.status:
            return "unhealthy"
        return "starting" if "health: starting" in self.status else "-"

    def label(self, key: str, default: str = "") -> str:
        return self.labels.get(f"{LABEL_PREFIX}.{key}", default)
