"""The lifecycle of containers that exist: find them by name or ID, start stopped ones again with their share
of the real-time pool, stop and remove them; after each, the budgets and port rules of the others follow
(usecases/reconcile.py)."""

from __future__ import annotations

from dataclasses import dataclass

from docker_xms.domain.engine_types import ContainerInfo
from docker_xms.domain.labels import MANAGED_LABEL, MODE_LABEL, ONE_TO_ONE, WEIGHT_LABEL, weight_of
from docker_xms.errors import BadInput, NotFound
from docker_xms.usecases.boundaries import EngineApi
from docker_xms.usecases.host import Host
from docker_xms.usecases.reconcile import reconcile
from docker_xms.usecases.rt import start_with_budget


def resolve(engine: EngineApi, refs: tuple[str, ...]) -> list[ContainerInfo]:
    """Containers by name or ID prefix; refuses all of them if any is unknown, before touching one."""
    found = []
    missing = []
    for ref in refs:
        info = engine.find_container(ref)
        if info is None:
            missing.append(ref)
        else:
            found.append(info)
    if missing:
        raise NotFound(f"There is no container {', '.join(missing)}.")
    return found


@dataclass(frozen=True)
class Started:
    name: str
    budget_us: int
    already_running: bool = False


def start(host: Host, refs: tuple[str, ...]) -> list[Started]:
    """Start stopped managed containers again, each with its share of the pool and its port rules.

    A plain `docker start` re-applies the budget the container had when it stopped, which the kernel
    refuses once the others have taken the pool; this makes room first.
    """
    engine = host.engine
    targets = resolve(engine, refs)
    foreign = [t.name for t in targets if not t.managed]
    if foreign:
        raise BadInput(f"{', '.join(foreign)} is not managed by docker-xms; start it with docker start.")
    weights = {t.id: _label_weight(t) for t in targets}
    _refuse_second_one_to_one(engine, [t for t in targets if not t.running])
    done: list[Started] = []
    try:
        for info in targets:
            if info.running:
                done.append(Started(info.name, 0, already_running=True))
            else:
                done.append(Started(info.name, start_with_budget(host.rt, info.id, weights[info.id])))
    finally:
        # The rules of those already started, even when a later one fails.
        reconcile(host.rt, host.netfilter)
    return done


def _refuse_second_one_to_one(engine: EngineApi, stopped: list[ContainerInfo]) -> None:
    """Refused before any starts: only one 1:1 container may run on a host."""
    wanted = [t for t in stopped if t.labels.get(MODE_LABEL) == ONE_TO_ONE]
    if len(wanted) > 1:
        raise BadInput(f"Only one 1:1 container can run on a host; start one of {', '.join(t.name for t in wanted)}.")
    if not wanted:
        return
    holder = next(
        (
            c.name
            for c in engine.list_containers(all=False, label=f"{MANAGED_LABEL}=true")
            if c.id != wanted[0].id and c.labels.get(MODE_LABEL) == ONE_TO_ONE and c.running
        ),
        None,
    )
    if holder is not None:
        raise BadInput(
            f"Container {holder} already runs with 1:1 host ports on this host; stop it before starting "
            f"{wanted[0].name}."
        )


def _label_weight(info: ContainerInfo) -> int:
    try:
        return weight_of(info.labels)
    except BadInput as exc:
        text = info.labels.get(WEIGHT_LABEL, "1")
        raise BadInput(
            f"Container {info.name} has the weight label {WEIGHT_LABEL}={text!r}; it must be 1 or more."
        ) from exc


def stop(host: Host, refs: tuple[str, ...], timeout: int | None = None) -> list[str]:
    """Stop containers; without `timeout` each gets its own stop timeout, so that its media server drains."""
    targets = resolve(host.engine, refs)
    for info in targets:
        host.engine.stop(info.id, timeout=timeout)
    reconcile(host.rt, host.netfilter)
    return [t.name for t in targets]


def remove(host: Host, refs: tuple[str, ...], force: bool) -> list[str]:
    targets = resolve(host.engine, refs)
    running = [t.name for t in targets if t.running]
    if running and not force:
        raise BadInput(f"{', '.join(running)} is running; stop it first or use rm -f.")
    for info in targets:
        host.engine.remove(info.id, force=force)
    reconcile(host.rt, host.netfilter)
    return [t.name for t in targets]
