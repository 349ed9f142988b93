"""The two plain-Docker baselines that managed containers are measured against, set up like with like.

- unmanaged: the same image under plain `docker run` with SYS_NICE and no real-time budget. The kernel then refuses
  SCHED_FIFO in it: that is what a media server gets when nobody looks after the budget.
- hand-made: what a careful administrator builds without docker-xms: raise the engine's parent cgroup's
  cpu.rt_runtime_us by hand, then `docker run --cpu-rt-runtime=<the share docker-xms gives> --cap-add SYS_NICE`.
  Its real-time setup is the same as a managed container's; what it lacks is someone to keep it right as
  containers come and go.

Both are copied from a managed container that docker-xms starts for the purpose and removes again (its mounts, stop
signal, capabilities, healthcheck, environment, sysctls, the server's configuration files and as many published
ports), so that only the real-time setup differs.

docker-xms hands the whole real-time pool to the managed containers that run, so a hand-made container finds no
room beside them: its start fails with "invalid argument". To measure both kinds side by side, the benchmark has
docker-xms give up the hand-made containers' part for a moment (a rebalance with the pool capped), raises the
engine's parent by hand as the administrator would, and starts the hand-made containers, all under docker-xms's host
lock so that no command or agent takes the room meanwhile. Each of the N hand-made containers gets
S = pool / (W + 2N), W being the weight of the other managed containers that run: docker-xms then counts the
hand-made ones as other holders and gives each of its own N containers the rest, S again (checked before anything
is measured). This holds with or without a docker-xms agent, which shares the pool the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from bench.common import cli, client
from bench.containers import remove, rt_budget, start_managed

UNMANAGED = "unmanaged"
HAND_MADE = "hand-made"
T = TypeVar("T")


def rotated(kinds: Sequence[T], round_index: int) -> tuple[T, ...]:
    """The order of one round: each round starts one further along, so that over len(kinds) rounds every kind has
    been in every position once and a noisy minute on the machine lands on all of them alike."""
    shift = round_index % len(kinds)
    return (*kinds[shift:], *kinds[:shift])


def _healthcheck(check: dict[str, Any] | None) -> dict[str, Any] | None:
    if not check or not check.get("Test"):
        return None
    keys = {"Test": "test", "Interval": "interval", "Timeout": "timeout", "Retries": "retries"}
    out = {low: check[key] for key, low in keys.items() if check.get(key) is not None}
    if check.get("StartPeriod") is not None:
        out["start_period"] = check["StartPeriod"]
    return out


def _server_files(profile: str = "rtpengine") -> list[str]:
    """The files docker-xms writes into each container of the profile (rtpengine.conf with its media range)."""
    from docker_xms.adapters.profile_store import load_profile

    return [f.path for f in load_profile(profile).instance_files]


def snapshot(container_id: str, profile: str = "rtpengine") -> dict[str, Any]:
    """A managed container's configuration and server files, to create plain containers from after it is gone."""
    api = client().api
    files = {}
    for path in _server_files(profile):
        bits, _ = api.get_archive(container_id, path)
        files[path] = b"".join(bits)
    return {"attrs": api.inspect_container(container_id), "files": files}


def create_plain(
    name: str, like: dict[str, Any], rt_runtime_us: int | None = None, publish: dict[str, int] | None = None
) -> str:
    """A plain `docker create` of a managed container's image (`like`, a snapshot), set up as it was apart from
    docker-xms.

    Published ports: the same container ports with host ports picked by the engine (docker-xms picked its own for
    the managed one), so the count and the engine's work per port are the same. With `rt_runtime_us`, the
    administrator's own `--cpu-rt-runtime`; without it, no budget at all. With `publish` ("5060/udp" -> host
    port), those ports on those host ports instead. Started later.
    """
    config, host = like["attrs"]["Config"], like["attrs"]["HostConfig"]
    kwargs: dict[str, Any] = {
        "name": name,
        "detach": True,
        "tmpfs": host.get("Tmpfs") or {},
        "volumes": host.get("Binds") or [],
        "cap_add": host.get("CapAdd") or [],
        "stop_signal": config.get("StopSignal"),
        "environment": config.get("Env") or [],
        "sysctls": host.get("Sysctls") or None,
        "ports": publish if publish is not None else dict.fromkeys(host.get("PortBindings") or {}),
        "healthcheck": _healthcheck(config.get("Healthcheck")),
    }
    if rt_runtime_us:
        kwargs["cpu_rt_runtime"] = rt_runtime_us
    container = client().containers.create(config["Image"], **kwargs)
    container_id = str(container.id)
    try:
        for path, tar in like["files"].items():
            client().api.put_archive(container_id, path.rsplit("/", 1)[0] or "/", tar)
    except BaseException:
        container.remove(force=True)
        raise
    return container_id


def setup_of(container_id: str, profile: str = "rtpengine") -> dict[str, Any]:
    """What a container was given, as the engine and the kernel hold it: the record that shows like with like."""
    api = client().api
    attrs = api.inspect_container(container_id)
    config, host = attrs["Config"], attrs["HostConfig"]
    check = config.get("Healthcheck") or {}
    files = {}
    for path in _server_files(profile):
        code_out = api.exec_create(container_id, ["cat", path])
        files[path] = api.exec_start(code_out["Id"]).decode(errors="replace")
    return {
        "container": container_id[:12],
        "published_ports": sorted(host.get("PortBindings") or {}),
        "healthcheck": {k: check.get(k) for k in ("Test", "Interval", "Timeout", "Retries", "StartPeriod")},
        "cap_add": sorted(host.get("CapAdd") or []),
        "tmpfs": host.get("Tmpfs") or {},
        "binds": sorted(host.get("Binds") or []),
        "sysctls": host.get("Sysctls") or {},
        "stop_signal": config.get("StopSignal"),
        "image": config.get("Image"),
        "server_files": files,
        "cpu_rt_runtime_stored_us": int(host.get("CpuRealtimeRuntime") or 0),
        "budget_us": rt_budget(container_id),
    }


LIKE_FIELDS = (
    "published_ports",
    "healthcheck",
    "cap_add",
    "tmpfs",
    "binds",
    "sysctls",
    "stop_signal",
    "image",
    "server_files",
)


def check_like_with_like(setups: dict[str, dict[str, Any]], apart: tuple[str, ...] = ()) -> None:
    """Refuse to measure kinds whose setups differ in anything but the real-time budget (and the fields `apart`,
    which the section measures on purpose)."""
    kinds = list(setups)
    first = setups[kinds[0]]
    for kind in kinds[1:]:
        differ = [f for f in LIKE_FIELDS if f not in apart and setups[kind][f] != first[f]]
        if differ:
            raise RuntimeError(f"the {kind} container is not set up like the {kinds[0]} one: {', '.join(differ)}")
    # docker-xms rounds each share down: the managed share may be 1 us above the hand-made one, never more.
    budgets = {k: s["budget_us"] or 0 for k, s in setups.items() if k != UNMANAGED}
    if budgets and max(budgets.values()) - min(budgets.values()) > 1:
        raise RuntimeError(f"the real-time budgets differ between kinds: {budgets}")


def _rt_host() -> Any:
    from docker_xms.adapters.config import load_settings
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.rt import open_host

    settings = load_settings()
    return open_host(Engine.connect(host=settings.docker_host), settings)


def fair_share(n: int) -> int:
    """The budget of each of N hand-made containers, S = pool / (W + 2N): with them holding N of these, docker-xms
    gives each of its own N containers S as well (W = weight of the other managed containers that run)."""
    from docker_xms.domain.budget import MIN_RUNTIME_US
    from docker_xms.usecases.rt import read_state

    rt = _rt_host()
    try:
        if not rt.per_group:
            raise RuntimeError("the hand-made baseline needs per-group real-time budgets (cgroup v1 cpu controller)")
        state = read_state(rt)
    finally:
        rt.engine.close()
    others = sum(h.weight for h in state.managed)
    share = state.pool_us // (others + 2 * n)
    if share < MIN_RUNTIME_US:
        raise RuntimeError(f"a pool of {state.pool_us} us leaves {share} us each to {others + 2 * n} containers")
    return share


def template(name: str) -> dict[str, Any]:
    """A snapshot of a managed container started for the purpose and removed again (its budget given back)."""
    try:
        return snapshot(start_managed(name))
    finally:
        remove(name)


def start(container_ids: Sequence[str]) -> None:
    api = client().api
    for container_id in container_ids:
        api.start(container_id)


@contextlib.contextmanager
def hand_made_started(container_ids: Sequence[str], share_us: int) -> Iterator[dict[str, Any]]:
    """Start the hand-made containers (created with `--cpu-rt-runtime=share_us`) in room made for them.

    Under docker-xms's host lock: its containers give up N x share (a rebalance with the pool capped), then the
    administrator's step, `echo <enough> > <parent>/cpu.rt_runtime_us` (what the parent's children hold plus the
    hand-made budgets), then `docker start`. The parent's value from before the hand-made step is written back when
    the block ends (the hand-made containers must be gone by then), and docker-xms rebalances without the cap.
    """
    from docker_xms.adapters.hostlock import host_lock
    from docker_xms.domain.budget import to_period
    from docker_xms.usecases.rt import read_state, rebalance_locked

    rt = _rt_host()
    need = len(container_ids) * share_us
    try:
        with host_lock(rt.lock_path):
            state = read_state(rt)
            pool = state.pool_us
            rebalance_locked(dataclasses.replace(rt, cap_us=pool - need))
            before = rt.fs.read_runtime(rt.parent)
            held = sum(to_period(c.runtime_us, c.period_us) for c in rt.fs.children(rt.parent))
            after = max(before, held + need)
            rt.fs.write_runtime(rt.parent, after)
            print(f"hand-made: {rt.parent}/cpu.rt_runtime_us {before} -> {after} us by hand, {share_us} us each")
            start(container_ids)
        try:
            yield {
                "parent": rt.parent,
                "pool_us": pool,
                # Managed containers that are not the benchmark's, running beside it: they share the pool too.
                "other_managed": sorted(h.name for h in state.managed),
                "before_us": before,
                "children_held_us": held,
                "set_us": after,
                "share_us": share_us,
            }
        finally:
            # Given back only if docker-xms has not already taken the room back for its own containers (it rebalances
            # when one of them is removed); the rebalance below leaves the parent as docker-xms keeps it either way.
            held_now = sum(to_period(c.runtime_us, c.period_us) for c in rt.fs.children(rt.parent))
            if held_now <= before:
                rt.fs.write_runtime(rt.parent, before)
            # docker-xms's containers take the room back now, not at the next event.
            cli("rt", "rebalance", check=False)
    finally:
        rt.engine.close()
