"""Real-time budgets on a live host: read the state, rebalance it safely, prove it inside a container.

The engine is the source of truth for which containers are managed (their labels) and for the budget a
restart re-applies (HostConfig.CpuRealtimeRuntime); the kernel's cgroup files are the truth for what
holds now. Every change runs under the host lock, so commands and the agent never interleave writes.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from docker_xms.adapters import cgroups, hostnet, hostproc, pmqos
from docker_xms.adapters.hostlock import host_lock
from docker_xms.adapters.signals import deferred
from docker_xms.domain import budget, cpusets
from docker_xms.domain.adoption import origin
from docker_xms.domain.boot import userns_remapped
from docker_xms.domain.doctor import Finding, diagnose, fair_server_findings, idle_findings, inotify_findings
from docker_xms.domain.engine_types import DEFAULT_BRIDGES, DOCKER, PODMAN, ContainerInfo, ContainerSummary
from docker_xms.domain.labels import MANAGED_LABEL, SWARM_TASK, WEIGHT_LABEL, reserved_weight, unreadable, weight_of
from docker_xms.domain.rt_mode import CPUS, GLOBAL, PER_GROUP
from docker_xms.domain.watchdog import JOURNAL_QUERY, WatchdogStop, engine_time, watchdog_stops
from docker_xms.errors import BadInput, ContainerBeingRemoved, StartBudgetRefused, XmsError
from docker_xms.settings import Settings
from docker_xms.usecases import adoption
from docker_xms.usecases.boundaries import CgroupFsApi, EngineApi

if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineKind
    from docker_xms.domain.rt_mode import RtMode


@dataclass(frozen=True, kw_only=True)
class RtHost:
    engine: EngineApi
    host: cgroups.HostRt
    fs: CgroupFsApi
    driver: str
    parent: str
    # An upper bound on the pool, set by the user (rt_pool_us, DOCKER_XMS_RT_POOL_US).
    cap_us: int | None = None
    settings: Settings = field(default_factory=Settings)
    # The ports a process of this host listens on, by protocol (hostnet.listening_ports): cut out of forwards.
    listening: Callable[[], Mapping[str, set[int]]] = hostnet.listening_ports
    # CPU-set mode (domain/cpusets.py): the host's CPUs and which are for media; None: budgets or global.
    cpus: cpusets.CpuLayout | None = None
    # The engine remaps user namespaces (its /info says so): on cgroup v2 the container's cgroup is then
    # writable as it is, and root in a container is no root on the host (domain/boot.systemd_boot).
    userns: bool = False
    # Which engine answers the Docker API, and its version (its /version): Podman boots systemd its own way.
    engine_kind: EngineKind = DOCKER
    engine_version: str = ""
    # The host's processes in one container's PID namespace, by its first process (hostproc).
    pids_in_namespace_of: Callable[[int], list[int]] = hostproc.pids_in_pid_namespace_of

    @property
    def bridge(self) -> str:
        """The engine's default bridge, which the media forwards tell apart from the way out."""
        return DEFAULT_BRIDGES[self.engine_kind]

    @property
    def lock_path(self) -> Path:
        return self.settings.lock_path

    @property
    def per_group(self) -> bool:
        return self.host.mode == PER_GROUP

    def cgroup_of(self, container_id: str) -> str:
        return cgroups.container_cgroup(self.parent, self.driver, container_id, self.engine_kind)


def open_host(engine: EngineApi, settings: Settings) -> RtHost:
    host = cgroups.detect_host(*settings.roots)
    info = engine.info()
    # The engine's parent cannot be read from the engine; the settings name it when it is not the default.
    driver = settings.cgroup_driver or info.cgroup_driver
    parent = cgroups.engine_parent(host, driver, settings.cgroup_parent, info.kind)
    return RtHost(
        engine=engine,
        host=host,
        fs=cgroups.CgroupFs(host.cpu_root),
        driver=driver,
        parent=parent,
        cap_us=settings.rt_pool_us,
        settings=settings,
        cpus=cpu_layout(settings, host.mode, lambda: cgroups.online_cpus(settings.sys_root)),
        userns=userns_remapped(info.security_options),
        engine_kind=info.kind,
        engine_version=info.server_version,
    )


def cpu_layout(settings: Settings, mode: RtMode, online: Callable[[], tuple[int, ...]]) -> cpusets.CpuLayout | None:
    """Whether media containers share real-time CPU by CPU sets on this host, and how (the `rt_mode`,
    `housekeeping_cpus` and `cpus_when_short` settings); None: by budgets, or as today where no CPU is spare."""
    if settings.rt_mode not in cpusets.RT_MODE_SETTINGS:
        raise BadInput(f"rt_mode must be one of {', '.join(cpusets.RT_MODE_SETTINGS)}, not {settings.rt_mode!r}.")
    if settings.cpus_when_short not in cpusets.WHEN_SHORT:
        raise BadInput(
            f"cpus_when_short must be one of {', '.join(cpusets.WHEN_SHORT)}, not {settings.cpus_when_short!r}."
        )
    when_short: cpusets.WhenShort = "refuse" if settings.cpus_when_short == "refuse" else "share"
    if settings.rt_mode == "budgets":
        if mode != PER_GROUP:
            raise BadInput(
                f"rt_mode = budgets needs per-group real-time budgets (cgroup v1 and a kernel with "
                f"CONFIG_RT_GROUP_SCHED), and this host's mode is {mode}: set rt_mode = cpus or auto."
            )
        return None
    if settings.rt_mode == "cpus":
        return cpusets.layout(online(), settings.housekeeping_cpus, when_short)
    # auto: budgets where the kernel keeps them per group; CPU sets where every real-time thread draws on the
    # host's one budget and a CPU is left for media. (Where containers cannot use SCHED_FIFO at all, v2 with
    # group scheduling or a runtime of 0, CPU sets would not change that: rt doctor says what to do.)
    if mode != GLOBAL:
        return None
    cpus = online()
    if len(cpus) <= max(settings.housekeeping_cpus, 0):
        return None
    return cpusets.layout(cpus, settings.housekeeping_cpus, when_short)


@dataclass(frozen=True, kw_only=True)
class Holder:
    """A container or cgroup holding real-time runtime inside the engine's parent."""

    id: str
    name: str
    runtime_us: int
    engine_runtime_us: int
    weight: int
    managed: bool
    share: float = 0.0
    # How a managed container was started (domain/adoption.origin); "" for a foreign holder.
    origin: str = ""
    # The runaway watchdog its processes run under (RLIMIT_RTTIME's soft limit, us; domain/watchdog.py); 0: none.
    watchdog_us: int = 0
    # How often the watchdog has stopped one of its processes since it started (the journal inside says so).
    watchdog_stops: int = 0
    # The CPUs the engine lets it run on ("1-3"); "": every CPU.
    cpus: str = ""


@dataclass(frozen=True)
class Skipped:
    """A running managed container whose labels cannot be read or ask for what they may not: it gets no
    share of the pool (what it holds counts like a foreign holder's) and no new port rule, and is reported
    instead of failing every reconcile."""

    id: str
    name: str
    reason: str

    def sentence(self) -> str:
        return f"Skipped {self.name}: {self.reason}; it gets no share of the pool and no new port rule."


@dataclass(frozen=True, kw_only=True)
class RtState:
    """The host's real-time figures and who holds what; the parent's stay 0 where containers get no budget
    of their own (no per-group mode)."""

    mode: RtMode
    cgroup_version: int
    global_runtime_us: int
    global_period_us: int
    parent: str
    parent_runtime_us: int = 0
    capacity_us: int = 0
    siblings_us: int = 0
    foreign_us: int = 0
    pool_us: int = 0
    managed: tuple[Holder, ...]
    foreign: tuple[Holder, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    # The fair server's runtime per CPU, ns per its period (6.12 and later, where debugfs is mounted): the time
    # normal tasks keep on each CPU however busy its real-time threads are.
    fair_server_ns: Mapping[int, int] = field(default_factory=dict)
    # CPU-set mode: the host's own CPUs and those for media containers ("" in the other modes).
    housekeeping_cpus: str = ""
    media_cpus: str = ""


@dataclass(frozen=True, kw_only=True)
class Rebalance:
    pool_us: int = 0
    parent_us: int = 0
    budgets: Mapping[str, int] = field(default_factory=dict)
    writes: tuple[budget.Write, ...] = ()
    arriving_us: int = 0
    per_group: bool = True
    names: Mapping[str, str] = field(default_factory=dict)
    # What the kernel held before the writes, so that callers (the agent's log) can say what changed.
    before: Mapping[str, int] = field(default_factory=dict)
    parent_before: int = 0
    # Runtime held by groups inside the parent that no running managed container owns, by group name.
    foreign: Mapping[str, int] = field(default_factory=dict)
    skipped: tuple[Skipped, ...] = ()
    # CPU-set mode: each container's CPUs ("1-3"), the arriving one's, and the CPU sets changed by this pass
    # (container id -> (before, after)).
    cpus: Mapping[str, str] = field(default_factory=dict)
    arriving_cpus: str = ""
    cpu_changes: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def managed_running(engine: EngineApi, settings: Settings | None = None) -> list[ContainerSummary]:
    """The running managed containers, from one list request: no container is inspected one by one.

    With `settings`, as docker-xms acts on them (usecases/adoption.with_plans): what it decided for each,
    and a container whose labels claim what they may not marked to be skipped and reported.
    """
    running = [c for c in engine.list_containers(all=False, label=f"{MANAGED_LABEL}=true") if c.running]
    if settings is None:
        return running
    return adoption.with_plans(
        running, adoption.held_plans(settings), adoption.media_pool(settings), adoption.adopt_sources(settings)
    )


def readable(managed: Iterable[ContainerSummary]) -> tuple[list[ContainerSummary], tuple[Skipped, ...]]:
    """The containers whose labels can be read, and the others with the reason."""
    ok: list[ContainerSummary] = []
    skipped: list[Skipped] = []
    for info in managed:
        reason = unreadable(info.labels)
        if reason is None:
            ok.append(info)
        else:
            skipped.append(Skipped(info.id, info.name, reason))
    return ok, tuple(skipped)


# Reserved weights of Swarm tasks by container id: an environment cannot change, so each task is inspected
# once in the life of a process (an agent), not at every rebalance.
_RESERVED: dict[str, int] = {}


def weights(engine: EngineApi, managed: Iterable[ContainerSummary]) -> dict[str, int]:
    """Each container's weight: its weight label, else for a Swarm task the RT_MS it reserved, else 1."""
    out = {}
    for c in managed:
        if WEIGHT_LABEL in c.labels or SWARM_TASK not in c.labels:
            out[c.id] = weight_of(c.labels)
            continue
        if c.id not in _RESERVED:
            info = engine.find_container(c.id)
            _RESERVED[c.id] = (reserved_weight(info.env) if info is not None else None) or 1
        out[c.id] = _RESERVED[c.id]
    return out


def parent_room(rt: RtHost, ours: Collection[str] = ()) -> budget.Room:
    """The engine's parent's room and the pool, as the cgroup files show them now; of its groups, those
    named in `ours` are the managed containers', every other one that holds runtime is foreign."""
    rt.fs.ensure(rt.parent)
    children = rt.fs.children(rt.parent)
    return budget.room(rt.fs.read_runtime("/"), rt.fs.sibling_runtime(rt.parent), children, ours, rt.cap_us)


def _scan(rt: RtHost, managed: list[ContainerSummary]) -> tuple[dict[str, int], list[Holder], budget.Room]:
    """Kernel runtime of each managed container, the foreign holders, and the parent's room."""
    by_cgroup = {rt.cgroup_of(c.id).rsplit("/", 1)[-1]: c for c in managed}
    room = parent_room(rt, by_cgroup)
    now = {by_cgroup[group].id: runtime for group, runtime in room.held.items()}
    foreign: list[Holder] = []
    for group, runtime in room.foreign.items():
        other = rt.engine.find_container(_container_id(group))
        foreign.append(
            Holder(
                id=other.id if other else group,
                name=other.name if other else group,
                runtime_us=runtime,
                engine_runtime_us=other.cpu_rt_runtime if other else 0,
                weight=0,
                managed=False,
            )
        )
    # A managed container without a cgroup has just stopped or not yet started: it holds nothing and
    # is no member; one whose cgroup lacks the file's runtime counts as holding 0.
    for info in managed:
        if info.id not in now and rt.fs.exists(rt.cgroup_of(info.id)):
            now[info.id] = 0
    return now, foreign, room


def watchdog_stops_in(rt: RtHost, info: ContainerInfo, after: float = 0.0) -> list[WatchdogStop]:
    """What systemd inside a running container logged of the watchdog's stops since it last started (and after
    `after`, epoch seconds); none where its watchdog is off, the image has no journal or shell to ask, or its
    answer is late (IN_CONTAINER_S). What it says is bounded: no stop before the start, or in the future."""
    started = engine_time(info.started_at)
    if info.rttime_us <= 0 or started is None:
        return []
    since = max(started, after)
    try:
        code, out = rt.engine.exec(
            info.id,
            ["sh", "-c", JOURNAL_QUERY, "watchdog", str(int(since))],
            timeout_s=IN_CONTAINER_S,
            max_bytes=8192,
        )
    except XmsError:
        return []
    now = time.time()
    return [stop for stop in watchdog_stops(out) if since <= stop.at <= now + CLOCK_SLACK_S] if code == 0 else []


def _container_id(cgroup_name: str) -> str:
    return cgroup_name.removeprefix("docker-").removesuffix(".scope")


def read_state(rt: RtHost) -> RtState:
    host = rt.host
    managed, skipped = readable(managed_running(rt.engine, rt.settings))
    weight = weights(rt.engine, managed)
    # `rt status` shows the stored budget beside the kernel's, the watchdog and the CPUs: one inspect per
    # managed container, here only.
    stored = {c.id: rt.engine.find_container(c.id) for c in managed}
    now, foreign, room = _scan(rt, managed) if rt.per_group else ({}, [], None)
    pool = room.pool_us if room is not None else 0

    def holder(c: ContainerSummary) -> Holder:
        info = stored[c.id]
        return Holder(
            id=c.id,
            name=c.name,
            runtime_us=now.get(c.id, 0),
            engine_runtime_us=info.cpu_rt_runtime if info else 0,
            weight=weight[c.id],
            managed=True,
            share=now.get(c.id, 0) / pool if pool else 0.0,
            origin=origin(c.labels),
            watchdog_us=info.rttime_us if info else 0,
            watchdog_stops=len(watchdog_stops_in(rt, info)) if info else 0,
            cpus=info.cpuset_cpus if info else "",
        )

    layout = rt.cpus
    return RtState(
        mode=CPUS if layout is not None else host.mode,
        cgroup_version=host.cgroup_version,
        global_runtime_us=host.rt_runtime_us,
        global_period_us=host.rt_period_us,
        fair_server_ns=cgroups.fair_server_reserve(rt.settings.sys_root),
        parent=rt.parent,
        parent_runtime_us=rt.fs.read_runtime(rt.parent) if room is not None else 0,
        capacity_us=room.capacity_us if room is not None else 0,
        siblings_us=room.siblings_us if room is not None else 0,
        foreign_us=room.foreign_us if room is not None else 0,
        pool_us=pool,
        managed=tuple(holder(c) for c in managed),
        foreign=tuple(foreign),
        skipped=skipped,
        housekeeping_cpus=cpusets.format_cpu_list(layout.housekeeping) if layout else "",
        media_cpus=cpusets.format_cpu_list(layout.media) if layout else "",
    )


# The kernel counts a removed group's runtime until it frees the group, a moment after its directory is
# gone (an RCU grace period and a work item later: seen when a container is removed and the rebalance
# follows at once). A write the plan made fit, refused as too much for the parent, is tried again for
# this long before the refusal stands.
RELEASE_WAIT_S = 2.0
_RELEASE_POLL_S = 0.01


def rebalance(rt: RtHost, exclude: frozenset[str] = frozenset()) -> Rebalance:
    """Share the pool among the running managed containers, under the host lock.

    Shrink donors, move the parent, grow receivers, each write checked by the kernel; a failed write
    rolls back what was applied.
    """
    with host_lock(rt.lock_path):
        return rebalance_locked(rt, None, exclude)


@contextmanager
def reserve(rt: RtHost, weight: int, exclude: frozenset[str] = frozenset()) -> Iterator[Rebalance]:
    """Make room for one arriving container of `weight`; its share is the plan's `arriving_us`.

    The block runs while the host lock is still held (it creates or starts the container with that
    share), so no other process can take the room made for it. If the block raises, the others get
    their share back before the exception goes on.
    """
    with host_lock(rt.lock_path):
        share = rebalance_locked(rt, weight, exclude)
        try:
            yield share
        except BaseException:
            with deferred():
                rebalance_locked(rt, None, exclude)
            raise


def rebalance_locked(
    rt: RtHost, arriving_weight: int | None = None, exclude: frozenset[str] = frozenset()
) -> Rebalance:
    """`rebalance` for a caller that already holds the host lock."""
    managed, skipped = readable(c for c in managed_running(rt.engine, rt.settings) if c.id not in exclude)
    names = {c.id: c.name for c in managed}
    weight = weights(rt.engine, managed)
    # In CPU-set mode, what the engine holds for each: one inspect per container, read by the plan and its
    # application alike.
    held = {c.id: rt.engine.find_container(c.id) for c in managed} if rt.cpus is not None else {}
    placed = _place_cpus(rt, managed, weight, arriving_weight, held) if rt.cpus is not None else None
    cpus = {} if placed is None else {key: placed.text(key) for key in placed.cpus if key != budget.ARRIVING}
    arriving_cpus = "" if placed is None else placed.text(budget.ARRIVING)
    changes = {} if placed is None else _apply_cpus(rt, placed, managed, held)
    if not rt.per_group:
        return Rebalance(
            per_group=False, names=names, skipped=skipped, cpus=cpus, arriving_cpus=arriving_cpus, cpu_changes=changes
        )
    now, foreign, room = _scan(rt, managed)
    # Containers whose cgroup is gone cannot hold a budget; they are not members. In CPU-set mode a member
    # weighs what its CPUs are of the media CPUs.
    share = weight if placed is None else {key: placed.share_weight(key) for key in placed.cpus}
    members = [budget.Member(c.id, share[c.id]) for c in managed if c.id in now]
    for gone in set(_RESERVED) - set(names):
        del _RESERVED[gone]
    if arriving_weight is not None:
        members.append(budget.Member(budget.ARRIVING, share.get(budget.ARRIVING, arriving_weight)))
    targets = budget.split(room.pool_us, members)
    parent_now = rt.fs.read_runtime(rt.parent)
    parent_target = room.pool_us + room.foreign_us
    writes = budget.plan(parent_now, parent_target, now, targets, room.foreign_us)
    _apply(rt, [w for w in writes if w.target != budget.ARRIVING], now, parent_now)
    return Rebalance(
        pool_us=room.pool_us,
        parent_us=parent_target,
        budgets=targets,
        writes=tuple(writes),
        arriving_us=targets.get(budget.ARRIVING, 0),
        per_group=True,
        names=names,
        before=dict(now),
        parent_before=parent_now,
        foreign={h.id: h.runtime_us for h in foreign},
        skipped=skipped,
        cpus=cpus,
        arriving_cpus=arriving_cpus,
        cpu_changes=changes,
    )


def _place_cpus(
    rt: RtHost,
    managed: Sequence[ContainerSummary],
    weight: Mapping[str, int],
    arriving_weight: int | None,
    held: Mapping[str, ContainerInfo | None],
) -> cpusets.CpuPlan:
    """The media CPUs divided among the running managed containers (and one arriving, refused where the
    setting says so and no CPU of its own is left), in the order they started; each keeps its CPUs where it can."""
    assert rt.cpus is not None
    order = sorted(managed, key=lambda c: (c.created, c.id))
    members = [(c.id, weight[c.id]) for c in order]
    if arriving_weight is not None:
        problem = cpusets.shortage(rt.cpus, len(members))
        if problem is not None:
            raise BadInput(problem)
        members.append((budget.ARRIVING, arriving_weight))
    # What each holds now (the engine's record): kept where the division allows.
    current = {c.id: _held_cpus(held.get(c.id)) for c in order}
    return cpusets.plan(rt.cpus, members, current)


def _held_cpus(info: ContainerInfo | None) -> tuple[int, ...]:
    """The CPUs the engine holds for a container; none where it holds none or a list docker-xms cannot read."""
    try:
        return cpusets.parse_cpu_list(info.cpuset_cpus) if info is not None else ()
    except BadInput:
        return ()


def _apply_cpus(
    rt: RtHost,
    placed: cpusets.CpuPlan,
    managed: Sequence[ContainerSummary],
    held: Mapping[str, ContainerInfo | None],
) -> dict[str, tuple[str, str]]:
    """Give each running container the CPUs of the plan where the engine holds others (a rebalance, or a
    hand `docker update --cpuset-cpus`); what changed, by container id."""
    changes: dict[str, tuple[str, str]] = {}
    for c in managed:
        want = placed.text(c.id)
        info = held.get(c.id)
        if info is None or not want or info.cpuset_cpus == want:
            continue
        with contextlib.suppress(ContainerBeingRemoved):
            rt.engine.update_cpuset(c.id, want)
            changes[c.id] = (info.cpuset_cpus, want)
    return changes


def start_with_budget(rt: RtHost, container_id: str, weight: int) -> int:
    """Start a stopped managed container with its share of the pool; returns the budget it got.

    The engine re-applies the budget stored in the container's configuration when it starts it, and
    a stored value that no longer fits the parent makes the start fail with "invalid argument": so
    the share that fits now is stored first, under the host lock, with room made for it.
    """

    with reserve(rt, weight) as share:
        start_stored(rt.engine, container_id, share.arriving_us, share.arriving_cpus)
    return share.arriving_us


def start_stored(engine: EngineApi, container_id: str, budget_us: int, cpus: str = "") -> None:
    """Store the share that fits now as the container's budget (and in CPU-set mode its CPUs), then start it
    (the engine re-applies them)."""
    if budget_us > 0:
        engine.update_rt_runtime(container_id, budget_us)
    if cpus:
        engine.update_cpuset(container_id, cpus)
    start_once_freed(engine, container_id)


def start_once_freed(engine: EngineApi, container_id: str) -> None:
    """Start a container whose configuration carries its share: the engine writes it into the new group,
    which the kernel refuses while a group removed a moment ago still counts (see RELEASE_WAIT_S), so a
    start refused that way is tried again for as long as a write is."""
    _once_freed(lambda: engine.start(container_id), lambda exc: isinstance(exc, StartBudgetRefused))


def grow_parent(rt: RtHost) -> tuple[int, int] | None:
    """Raise the engine's parent to what a rebalance would give it, from the cgroup files alone.

    For when the engine is away or just back (after a reboot the parent holds 0, and the engine's own
    restarts of containers with a budget fail with "invalid argument"). Without the engine no child can
    be told apart, so every child counts as foreign: the target is then at least the rebalanced one,
    and growing only never breaks the kernel's rules; the next rebalance trims it. Returns
    (before, after) when it wrote, None when the parent already held enough or there is no such host.
    """
    if not rt.per_group:
        return None
    with host_lock(rt.lock_path):
        room = parent_room(rt)
        target = min(room.capacity_us, room.pool_us + room.foreign_us)
        now = rt.fs.read_runtime(rt.parent)
        if now == budget.UNLIMITED or now >= target:
            return None
        rt.fs.write_runtime(rt.parent, target)
        return now, target


def _apply(rt: RtHost, writes: list[budget.Write], before: Mapping[str, int], parent_before: int) -> None:
    """Apply a plan's writes: all of them, or, when one fails, none (what was applied is rolled back).

    A signal cannot stop the writes half-way: it is held until they end, and when it then stops the
    command the plan is rolled back like any failure. Any exception rolls back, not only errors, so
    the kernel is left with one whole plan, the new one or the one before.
    """
    applied: list[budget.Write] = []
    try:
        with deferred():
            for write in writes:
                _write(rt, write)
                applied.append(write)
    except BaseException as exc:
        with deferred():
            problems = []
            for write in budget.rollback(applied, before, parent_before):
                try:
                    _write(rt, write)
                except XmsError as again:
                    problems.append(again.message)
        if isinstance(exc, XmsError):
            # The error keeps its type: EngineUnavailable when the engine went away, which the agent waits out.
            restored = (
                "rolled back to the previous budgets" if not problems else "rollback failed too: " + "; ".join(problems)
            )
            exc.add_context(f"The rebalance was {restored}.")
        raise


def _write(rt: RtHost, write: budget.Write) -> None:
    if write.target == budget.PARENT:
        _write_group(rt, rt.parent, write.value)
        return
    # Through the engine, so that the stored configuration matches and a restart re-applies the value;
    # then into the cgroup, because engines before 23 store the update without applying it.
    going = False
    if write.value > 0:
        try:
            rt.engine.update_rt_runtime(write.target, write.value)
        except XmsError as exc:
            # A container being removed or stopped by someone else while we plan (`docker rm -f` by
            # hand, another command): its stored budget no longer matters. Any other refusal does.
            going = isinstance(exc, ContainerBeingRemoved) or not _running(rt.engine, write.target)
            if not going:
                raise
    try:
        _write_group(rt, rt.cgroup_of(write.target), write.value)
    except cgroups.CgroupWriteError as exc:
        # Its cgroup vanished with it: a group that is gone holds nothing, which only lowers the
        # children's sum, so the rest of the plan stays acceptable to the kernel.
        if not (going or exc.errno == errno.ENOENT) or rt.fs.exists(rt.cgroup_of(write.target)):
            raise


def _running(engine: EngineApi, container_id: str) -> bool:
    other = engine.find_container(container_id)
    return other is not None and other.running


def _write_group(rt: RtHost, group: str, value: int) -> None:
    _once_freed(
        lambda: rt.fs.write_runtime(group, value),
        lambda exc: isinstance(exc, cgroups.CgroupWriteError) and exc.errno == errno.EINVAL and rt.fs.exists(group),
    )


def _once_freed(attempt: Callable[[], None], refused_for_now: Callable[[XmsError], bool]) -> None:
    """`attempt`, tried again while the kernel refuses it for a removed group's runtime (`refused_for_now`),
    for at most RELEASE_WAIT_S; any other error, or the refusal after that, goes on to the caller."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            attempt()
            return
        except XmsError as exc:
            if not refused_for_now(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(_RELEASE_POLL_S)


# --- proof inside a container ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RtThread:
    pid: int
    tid: int
    comm: str
    policy: str
    priority: int
    cgroup: str
    cgroup_runtime_us: int | None


@dataclass(frozen=True, kw_only=True)
class Verification:
    container: str
    name: str
    mode: RtMode
    budget_us: int
    fifo_allowed: bool
    fifo_detail: str
    rt_threads: tuple[RtThread, ...]
    threads_total: int
    zero_budget_groups: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.fifo_allowed and bool(self.rt_threads) and not self.zero_budget_groups


# How long the agent's checks inside a container (chrt, the raise script: milliseconds when the image is
# honest) may take: the agent's one loop waits on them, and a hostile image's `chrt` must not hold back the
# reconciliation of the others.
IN_CONTAINER_S = 3.0
# How far ahead of this host's clock a time a container reports may be and still be taken.
CLOCK_SLACK_S = 60.0
# `rt verify` and `run`'s proof: a person waits on them, and a host whose media CPUs are busy may take longer.
VERIFY_WAIT_S = 15.0


def verify(rt: RtHost, ref: str, timeout_s: float = IN_CONTAINER_S) -> Verification:
    """The kernel's word on a running container's real-time threads; `timeout_s` bounds the check inside it
    (the agent's loop keeps the short default; a command someone waits on may wait longer on a busy host)."""
    info = rt.engine.get_container(ref)
    if not info.running:
        raise BadInput(f"Container {info.name} is not running ({info.status}).")
    code, out = rt.engine.exec(info.id, ["chrt", "--fifo", "1", "true"], timeout_s=timeout_s)
    if code == 0:
        fifo, detail = True, "chrt --fifo 1 succeeded inside the container"
    elif code in (126, 127) or "executable file not found" in out:
        fifo, detail = False, "chrt is not in the image (install util-linux) so SCHED_FIFO could not be tried"
    else:
        fifo, detail = False, f"chrt --fifo 1 failed inside the container: {out.strip() or f'exit {code}'}"
    threads, total, zero_groups = _rt_threads(rt, info)
    budget_us = rt.fs.read_runtime(rt.cgroup_of(info.id)) if rt.per_group and rt.fs.exists(rt.cgroup_of(info.id)) else 0
    return Verification(
        container=info.id,
        name=info.name,
        mode=rt.host.mode,
        budget_us=budget_us,
        fifo_allowed=fifo,
        fifo_detail=detail,
        rt_threads=tuple(threads),
        threads_total=total,
        zero_budget_groups=tuple(sorted(zero_groups)),
    )


# Run inside the container, so that it works from an agent in any pid namespace (a Swarm service's too):
# each thread named in the arguments after the priority that runs SCHED_OTHER is put at SCHED_FIFO at
# that priority, and its name printed. The container's own SYS_NICE and its budget let it.
_RAISE_SCRIPT = r"""prio=$1; shift
for t in /proc/[0-9]*/task/[0-9]*; do
  comm=$(cat "$t/comm" 2>/dev/null) || continue
  for want in "$@"; do
    [ "$comm" = "$want" ] || continue
    case $(chrt -p "${t##*/}" 2>/dev/null) in
      *SCHED_OTHER*) chrt -f -p "$prio" "${t##*/}" && echo "$comm" ;;
    esac
  done
done
"""


def raise_threads(rt: RtHost, container_id: str, names: Iterable[str], priority: int) -> list[str]:
    """The threads named `names` that run SCHED_OTHER in a container that has a budget now, put at
    SCHED_FIFO `priority` as the server would have put them had the budget been there when it started;
    the names of those raised."""
    wanted = list(names)
    if not wanted:
        return []
    code, out = rt.engine.exec(
        container_id, ["bash", "-c", _RAISE_SCRIPT, "raise", str(priority), *wanted], timeout_s=IN_CONTAINER_S
    )
    if code != 0:
        raise XmsError(f"Raising the real-time threads in {container_id[:12]} failed: {out.strip() or f'exit {code}'}.")
    return out.splitlines()


def _rt_threads(rt: RtHost, info: ContainerInfo) -> tuple[list[RtThread], int, set[str]]:
    """Real-time threads of the container's processes, seen where the engine's pids are (`engine_proc`: the
    host's /proc, or the node's for an agent running as a Swarm service)."""
    pids = _container_pids(rt, info)
    found: list[RtThread] = []
    zero: set[str] = set()
    total = 0
    for pid in pids:
        try:
            threads = cgroups.thread_policies(pid, rt.settings.engine_proc)
        except XmsError:
            continue
        for thread in threads:
            total += 1
            if thread.policy not in ("SCHED_FIFO", "SCHED_RR"):
                continue
            runtime = None
            if rt.per_group:
                try:
                    runtime = rt.fs.read_runtime(thread.cgroup)
                except XmsError:
                    runtime = None
                if runtime == 0:
                    zero.add(thread.cgroup)
            found.append(
                RtThread(
                    pid=pid,
                    tid=thread.tid,
                    comm=thread.comm,
                    policy=thread.policy,
                    priority=thread.rt_priority,
                    cgroup=thread.cgroup,
                    cgroup_runtime_us=runtime,
                )
            )
    return found, total, zero


def _container_pids(rt: RtHost, info: ContainerInfo) -> list[int]:
    """Every process of the container: the cgroup's procs, including systemd's sub-cgroups; else the engine's
    list. Podman's lists PIDs as the container sees them: there, the processes in the PID namespace of its
    first one (docker-xms runs beside Podman, in the host's namespace)."""
    pids = rt.fs.procs_under(rt.cgroup_of(info.id)) if rt.per_group else set()
    if not pids and rt.engine_kind == PODMAN:
        pids = set(rt.pids_in_namespace_of(info.pid)) if info.pid > 0 else set()
    elif not pids:
        pids = set(rt.engine.container_pids(info.id))
    return sorted(pids)


def doctor(rt: RtHost) -> list[Finding]:
    info = rt.engine.info()
    parent_runtime = None
    if rt.per_group and rt.fs.exists(rt.parent):
        parent_runtime = rt.fs.read_runtime(rt.parent)
    # What the engine reports about cgroups describes the real host, not a tree given by sys_root.
    real_host = rt.settings.real_host
    version = info.cgroup_version if real_host else str(rt.host.cgroup_version)
    findings = diagnose(rt.host, rt.driver, version, parent_runtime, rt.parent)
    findings += fair_server_findings(cgroups.fair_server_reserve(rt.settings.sys_root))
    if real_host:
        idle = pmqos.read_idle_state()
        findings += idle_findings(idle.driver, idle.limit_us, pmqos.NO_LIMIT_US)
        findings += inotify_findings(hostproc.inotify_max_user_instances())
    return findings
