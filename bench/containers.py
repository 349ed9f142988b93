"""The benchmark's containers: started through docker-xms, waited for, removed again; their budgets, addresses
and cpu cgroups."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from bench.common import PREFIX, cli, client


def start_managed(name: str, wait: bool = False, extra: tuple[str, ...] = ("--media-ports", "10")) -> str:
    """A docker-xms container with a real-time budget; returns its id."""
    args = ["run", "-c", *extra, "--name", name, "--json"]
    if not wait:
        args.insert(2, "--no-wait")
    for attempt in range(5):
        proc = cli(*args, check=False)
        if proc.returncode == 0:
            return str(json.loads(proc.stdout)["id"])
        # Other users of this engine may take the media ports docker-xms picked a moment ago: try again.
        if "already allocated" not in proc.stderr or attempt == 4:
            raise RuntimeError(f"docker-xms {' '.join(args)} failed: {proc.stderr.strip()}")
        cli("rm", "-f", name, check=False)
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def wait_booted(container_id: str, timeout_s: float = 120, profile: str = "rtpengine") -> None:
    """Until the server is ready as `docker-xms run` waits for it (systemd up, rtpengine's unit, ng ping)."""
    from docker_xms.adapters.engine import Engine
    from docker_xms.adapters.profile_store import load_profile
    from docker_xms.usecases.readiness import wait_ready

    engine = Engine.connect()
    try:
        wait_ready(engine, container_id, load_profile(profile), timeout_s)
    finally:
        engine.close()


def remove(prefix: str) -> None:
    """Remove every container whose name starts with `prefix`: managed ones through docker-xms."""
    api = client().api
    # The list view only (no inspect per container): other users of the engine remove containers meanwhile.
    for summary in api.containers(all=True, filters={"name": prefix}):
        name = (summary.get("Names") or ["/"])[0].lstrip("/")
        if not name.startswith(prefix):
            continue
        if (summary.get("Labels") or {}).get("io.docker-xms.managed") == "true":
            proc = cli("rm", "-f", name, check=False)
            if proc.returncode == 0:
                continue
        with contextlib.suppress(Exception):
            api.remove_container(summary["Id"], force=True)


def rt_budget(container_id: str) -> int | None:
    """The container's kernel budget, read as `docker-xms ps` reads it."""
    from docker_xms.adapters.config import load_settings
    from docker_xms.usecases.listing import budget_reader

    return budget_reader(load_settings())(container_id)


def address_of(container_id: str) -> str:
    container = client().containers.get(container_id)
    return str(container.attrs["NetworkSettings"]["IPAddress"])


def cpu_cgroups(ids: list[str]) -> tuple[Path, ...]:
    """The cpu-controller cgroup directories of these containers, wherever this host keeps them."""
    from docker_xms.adapters.config import load_settings
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.rt import open_host

    settings = load_settings()
    engine = Engine.connect(host=settings.docker_host)
    try:
        rt = open_host(engine, settings)
        return tuple(rt.fs.path(rt.cgroup_of(cid)) for cid in ids)
    finally:
        engine.close()


def start_numbered(n: int, start_index: int = 0, prefix: str = PREFIX) -> None:
    """N managed containers named prefix + index, not waited for."""
    for i in range(start_index, start_index + n):
        cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", f"{prefix}{i}", "--json")


def remove_bench_containers(prefix: str = PREFIX) -> None:
    """Every container whose name starts with `prefix`; docker-xms's own then take their room back at once."""
    for container in client().containers.list(all=True):
        if container.name.startswith(prefix):
            container.remove(force=True)
    cli("rt", "rebalance", check=False)
