"""Fleets: the Compose file of a profile's service, and the engine setting that advertises a node's pool.

Swarm has no field for a real-time budget; it schedules by generic resources instead. Each node
advertises its real-time pool as `RT_MS` (ms per second) in the engine's `node-generic-resources`, each
replica of a generated service reserves its share, and the agent on the node that runs it grants the
budget itself (see usecases/adoption.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from docker_xms.adapters import cgroups, hostfiles
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import compose as compose_files
from docker_xms.domain.rt_mode import PER_GROUP
from docker_xms.errors import BadInput
from docker_xms.settings import Settings
from docker_xms.usecases.readiness import health_script
from docker_xms.usecases.rt import RtHost, read_state

DAEMON_JSON = Path("/etc/docker/daemon.json")


@dataclass(frozen=True)
class ComposeRequest:
    profile: str = "rtpengine"
    replicas: int = 1
    ports: str = "dnat"
    name: str | None = None
    image: str | None = None
    rt_ms: int = compose_files.DEFAULT_RT_MS
    target: compose_files.Target = "compose"
    command: tuple[str, ...] = compose_files.DEFAULT_COMMAND


def compose_text(request: ComposeRequest, settings: Settings) -> str:
    """The Compose file as YAML, for this host's cgroup version."""
    profile = load_profile(request.profile, settings.profile_dirs)
    host = cgroups.detect_host(*settings.roots)
    options = compose_files.ComposeOptions(
        replicas=request.replicas,
        ports=request.ports,
        name=request.name,
        image=request.image,
        rt_ms=request.rt_ms,
        cgroup_version=host.cgroup_version,
        health_script=health_script(profile),
        target=request.target,
        command=request.command,
        plan_wait_s=settings.plan_wait_s,
        start_without_plan=settings.start_without_plan,
    )
    data = compose_files.compose_file(profile, options)
    header = (
        f"# docker-xms compose {profile.name}: {request.replicas} replica(s), media ports by {request.ports}.\n"
        "# The docker-xms agent on each node grants the real-time budget and forwards the media range.\n"
        + (
            f"# Each replica's server waits up to {settings.plan_wait_s} s for the node's agent to hand it its plan "
            "(address, ports).\n"
            if profile.waits_for_plan
            else ""
        )
        + (
            "# On cgroup v1 it also opens each replica's own systemd cgroup: a replica waits for it (60 s at most).\n"
            if host.cgroup_version == 1
            else "# cgroup v2: systemd's own cgroup writable by writable-cgroups=true (Engine 28 or later); on an engine\n"
            "# with --userns-remap, whose cgroups are writable already and which refuses it, drop security_opt.\n"
        )
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


@dataclass(frozen=True)
class NodeSetup:
    pool_ms: int
    setting: dict[str, Any]
    text: str
    path: str
    written: bool


def node_setup(
    rt: RtHost | None,
    pool_ms: int | None = None,
    write: bool = False,
    path: Path = DAEMON_JSON,
) -> NodeSetup:
    """The engine's `node-generic-resources` for this host's pool, merged into daemon.json when `write`."""
    if pool_ms is None:
        if rt is None:
            raise BadInput("Without an engine the pool cannot be read; give it with --pool-ms.")
        state = read_state(rt)
        if state.mode != PER_GROUP:
            raise BadInput("This host has no per-container real-time budgets; give the pool with --pool-ms.")
        pool_ms = compose_files.pool_ms(state.pool_us, state.global_period_us)
    existing: dict[str, Any] = {}
    if write and path.exists():
        try:
            loaded = json.loads(hostfiles.load_bytes(path) or b"{}")
        except ValueError as exc:
            raise BadInput(f"{path} is not JSON ({exc}); fix it first.") from None
        if not isinstance(loaded, dict):
            raise BadInput(f"{path} does not hold a JSON object; fix it first.")
        existing = loaded
    merged = compose_files.merged_daemon_json(existing, pool_ms)
    text = compose_files.daemon_json_text(
        merged if write else {compose_files.DAEMON_KEY: merged[compose_files.DAEMON_KEY]}
    )
    if write:
        hostfiles.save_text(path, text)
    return NodeSetup(pool_ms, merged, text, str(path), write)
