"""Compose files and engine settings for fleets: what `docker-xms compose` and `node setup` print. Pure data.

A generated service carries everything `run` gives a container that a Compose file can say (image,
systemd's tmpfs, on cgroup v1 the gate before systemd, CAP_SYS_NICE, the stop signal and grace, the health check, the
container's ephemeral range) and docker-xms's labels, so that the agent on whichever node runs a replica
adopts it: grants its budget and forwards its media range (see `domain/adoption.py`). What a file cannot
say (a real-time budget: Swarm services have no `cpu-rt-runtime`) the agent gives.

One file cannot reach the default bridge on every tool: docker-compose adds a network-scoped alias on
every network a service names, which the engine refuses on `bridge`, so a Compose file uses
`network_mode`; `docker stack deploy` ignores `network_mode` (it would put the tasks on an overlay
network, behind Swarm's own publishing), so a stack file names the node's `bridge` or `host` network as
an external network. `target` chooses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from docker_xms.domain.boot import WRITABLE_CGROUPS
from docker_xms.domain.labels import (
    CONTAINER_ADDRESS,
    LABEL_STRATEGY,
    MANAGED_LABEL,
    MODE_LABEL,
    ONE_TO_ONE,
    PROFILE_LABEL,
)
from docker_xms.domain.plan_unit import DEFAULT_WAIT_S, container_env
from docker_xms.domain.ports import ephemeral_outside
from docker_xms.domain.profiles import MANAGEMENT_ROLES, Profile
from docker_xms.domain.recipes import GATE_ENTRYPOINT, STOP_SIGNAL
from docker_xms.domain.watchdog import rttime_limit
from docker_xms.errors import BadInput

# Swarm's generic resource a node advertises (its real-time pool, in ms per second) and a task reserves.
RT_MS_KIND = "RT_MS"
# The newest file format that docker-compose 1.29, Compose v2 and `docker stack deploy` all accept.
COMPOSE_VERSION = "3.8"
# Seconds added to a profile's drain grace for the stop timeout: systemd's own stop of the other units.
STOP_MARGIN_S = 10
# The reservation of a replica without --rt-ms: about a tenth of a node's default pool of 950 ms.
DEFAULT_RT_MS = 95
DAEMON_KEY = "node-generic-resources"
# The image's own command, run by the gate on cgroup v1: systemd, as every image docker-xms builds has it.
DEFAULT_COMMAND = ("/sbin/init",)

Target = Literal["compose", "stack"]
TARGETS: tuple[Target, ...] = ("compose", "stack")
NETWORKS = ("dnat", "host")


@dataclass(frozen=True)
class ComposeOptions:
    replicas: int = 1
    # "dnat": the node's default bridge, media ranges forwarded by the agent; "host": host networking.
    ports: str = "dnat"
    # The service's name (the profile's by default) and its image (the profile's by default).
    name: str | None = None
    image: str | None = None
    # The real-time share a replica reserves from its node's RT_MS (Swarm's admission, not its weight).
    rt_ms: int = DEFAULT_RT_MS
    cgroup_version: int = 1
    # The profile's readiness as one shell script (usecases/readiness.health_script); "" for none.
    health_script: str = ""
    target: Target = "compose"
    # What the gate runs once systemd's cgroup is writable (cgroup v1): the image's command.
    command: tuple[str, ...] = DEFAULT_COMMAND
    # How long a replica's server waits for its plan, and whether it starts without one (the host's settings).
    plan_wait_s: int = DEFAULT_WAIT_S
    start_without_plan: bool = True


def stop_timeout_s(profile: Profile) -> int | None:
    """Seconds the engine waits after the stop signal before it kills the container; None: its default."""
    return profile.drain.grace_s + STOP_MARGIN_S if profile.drain.grace_s else None


def service_labels(profile: Profile, options: ComposeOptions) -> dict[str, str]:
    """The labels the agent adopts a replica by (see domain/adoption.py for what it computes itself)."""
    return {
        MANAGED_LABEL: "true",
        PROFILE_LABEL: profile.name,
        LABEL_STRATEGY: options.ports,
        MODE_LABEL: CONTAINER_ADDRESS if options.ports == "dnat" else ONE_TO_ONE,
    }


def compose_file(profile: Profile, options: ComposeOptions) -> dict[str, Any]:
    """The Compose file for `options.replicas` replicas of `profile`, as a mapping ready for YAML."""
    _check(profile, options)
    name = options.name or profile.name
    tmpfs = list(dict.fromkeys(["/run", "/run/lock", *profile.tmpfs]))
    service: dict[str, Any] = {
        "image": options.image or profile.image,
        "cap_add": ["SYS_NICE"],
        "stop_signal": STOP_SIGNAL,
        "labels": service_labels(profile, options),
    }
    limits: dict[str, Any] = {}
    watchdog = rttime_limit(profile.watchdog_ms)
    if watchdog is not None:
        # The runaway watchdog, as `run` gives it (domain/watchdog.py). `docker stack deploy` before
        # Engine 23 ignores a service's ulimits (it says so): on such nodes the replicas have none.
        limits["rttime"] = {"soft": watchdog.soft_us, "hard": watchdog.hard_us}
    if options.cgroup_version == 2:
        # The engine's own cgroup2 mount of a private namespace, made writable for systemd by Engine 28's
        # option; SCHED_FIFO through the rtprio limit (see domain/boot.systemd_boot, and v2_systemd_refusal
        # for the engines where systemd cannot boot).
        limits["rtprio"] = 99
        service["cgroup"] = "private"
        service["security_opt"] = [WRITABLE_CGROUPS]
    else:
        # No cgroup mount of the host's: the engine mounts each controller read-only at the container's own
        # group, and the gate holds systemd back until the agent on the node has made that group's
        # name=systemd mount writable (as `run` does; adapters/cgroupns.py). systemd then keeps its units
        # below the container's own group. Every Compose tool interpolates ${...}: $$ is a literal $.
        service["entrypoint"] = [part.replace("$", "$$") for part in GATE_ENTRYPOINT]
        service["command"] = [part.replace("$", "$$") for part in options.command]
    if limits:
        service["ulimits"] = limits
    if options.target == "stack":
        # `docker stack deploy` drops a service's `tmpfs` key (a Swarm service has tmpfs mounts only):
        # without a tmpfs on /run systemd mounts one itself, lacks CAP_SYS_ADMIN and exits 255 unlogged.
        service.setdefault("volumes", []).extend({"type": "tmpfs", "target": path} for path in tmpfs)
    else:
        service["tmpfs"] = tmpfs
    grace = stop_timeout_s(profile)
    if grace is not None:
        service["stop_grace_period"] = f"{grace}s"
    environment = dict(profile.env)
    if profile.waits_for_plan:
        environment.update(container_env(options.plan_wait_s, options.start_without_plan))
    if environment:
        service["environment"] = environment
    if options.health_script:
        service["healthcheck"] = {
            # Every Compose tool interpolates ${...} in the file: $$ is a literal $.
            "test": ["CMD", "/bin/bash", "-c", options.health_script.replace("$", "$$")],
            "interval": "5s",
            "timeout": "4s",
            "retries": 3,
            "start_period": f"{int(profile.readiness.timeout)}s",
        }
    networks: dict[str, Any] = {}
    if options.ports == "host":
        if options.target == "stack":
            service["networks"] = ["host"]
            networks = {"host": {"external": True, "name": "host"}}
        else:
            service["network_mode"] = "host"
    else:
        ephemeral = ephemeral_outside([(p.start, p.end) for p in (*profile.ports, *profile.media_ranges)])
        if ephemeral is not None:
            service["sysctls"] = {"net.ipv4.ip_local_port_range": f"{ephemeral[0]} {ephemeral[1]}"}
        ports = _published(profile, options.target)
        if ports:
            service["ports"] = ports
        if options.target == "stack":
            service["networks"] = ["bridge"]
            networks = {"bridge": {"external": True, "name": "bridge"}}
        else:
            service["network_mode"] = "bridge"
    deploy: dict[str, Any] = {
        "replicas": options.replicas,
        "resources": {
            "reservations": {
                "generic_resources": [{"discrete_resource_spec": {"kind": RT_MS_KIND, "value": options.rt_ms}}]
            }
        },
    }
    if options.ports == "host":
        # Host networking: two replicas on one node would listen on the same ports.
        deploy["placement"] = {"max_replicas_per_node": 1}
    service["deploy"] = deploy
    out: dict[str, Any] = {"version": COMPOSE_VERSION, "services": {name: service}}
    if networks:
        out["networks"] = networks
    return out


def _published(profile: Profile, target: Target) -> list[Any]:
    """Signalling, web and control ports as `run -c` publishes them: host ports chosen by the engine.

    A port without authentication (rtpengine's ng) goes on 127.0.0.1 only; Swarm cannot bind an address
    (it would listen on every one), so a stack file leaves such a port to the node's own reach of the
    task's address. Swarm publishes in host mode: its ingress would rewrite the caller's address.
    """
    out: list[Any] = []
    for spec in profile.ports:
        for port in range(spec.start, spec.end + 1):
            local = spec.role in MANAGEMENT_ROLES and not spec.authenticated
            if target == "stack":
                if not local:
                    out.append({"target": port, "protocol": spec.protocol, "mode": "host"})
            else:
                out.append(f"127.0.0.1::{port}/{spec.protocol}" if local else f"{port}/{spec.protocol}")
    return out


def _check(profile: Profile, options: ComposeOptions) -> None:
    if options.replicas < 0:
        raise BadInput(f"--replicas must be 0 or more, not {options.replicas}.")
    if not options.command:
        raise BadInput("--command must name the image's command (systemd), such as /sbin/init.")
    if options.ports not in NETWORKS:
        raise BadInput(f"--ports {options.ports!r} is not one of {', '.join(NETWORKS)} for a Compose file.")
    if options.rt_ms < 1:
        raise BadInput(f"--rt-ms must be 1 or more, not {options.rt_ms}.")
    if options.target not in TARGETS:
        raise BadInput(f"--for {options.target!r} is not one of {', '.join(TARGETS)}.")
    if not (options.image or profile.image):
        raise BadInput(f"Profile {profile.name} names no image; give one with --image.")


def pool_ms(pool_us: int, period_us: int = 1_000_000) -> int:
    """A node's real-time pool in ms per second, rounded down so that reservations never exceed it."""
    return pool_us * 1000 // period_us


def node_resources(pool: int) -> list[str]:
    return [f"{RT_MS_KIND}={pool}"]


def merged_daemon_json(existing: Mapping[str, Any], pool: int) -> dict[str, Any]:
    """daemon.json with this node's RT_MS set, every other setting and generic resource kept."""
    if pool < 1:
        raise BadInput(f"The real-time pool of {pool} ms is too small to advertise; give --pool-ms.")
    current = existing.get(DAEMON_KEY, [])
    if not isinstance(current, list) or not all(isinstance(x, str) for x in current):
        raise BadInput(f"The engine's {DAEMON_KEY} setting is not a list of strings; fix daemon.json first.")
    kept = [x for x in current if x.split("=", 1)[0] != RT_MS_KIND]
    return {**existing, DAEMON_KEY: [*kept, *node_resources(pool)]}


def daemon_json_text(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, indent=2, sort_keys=False) + "\n"
