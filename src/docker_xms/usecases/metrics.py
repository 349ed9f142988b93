"""The figures of the host and its managed containers, computed when asked: by a Prometheus scrape of the
agent's /metrics, and by each frame of `docker-xms top`, with the same function.

Cheap on purpose, as it runs on every scrape: one list request to the engine (no container is inspected),
the cpu cgroup files, the threads' /proc files and one `iptables -S` of docker-xms's own chain. Nothing is
kept between calls, so a container that is gone has no series at the next scrape (Prometheus marks them stale).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from docker_xms.adapters import cgroups, pmqos
from docker_xms.domain import budget
from docker_xms.domain.engine_types import ContainerSummary
from docker_xms.domain.forwards import Forward
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    ADVERTISE_OWN,
    MODE_LABEL,
    PROFILE_LABEL,
    forwards_from_labels,
    unreadable,
)
from docker_xms.domain.metrics import (
    ContainerFigures,
    HostFigures,
    ReconcileCounts,
    WakeupHistogram,
    count_policies,
    families,
    listen_address,
    origin_labels,
)
from docker_xms.domain.rt_mode import CPUS, PER_GROUP
from docker_xms.errors import XmsError
from docker_xms.settings import Settings
from docker_xms.usecases.boundaries import NetfilterApi
from docker_xms.usecases.listing import DRIVERS, container_group, engine_parents, managed_summaries
from docker_xms.usecases.rt import cpu_layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineKind


class ReconcileStats:
    """What the agent counts of its reconciliations; written by its loop, read by the scrape's thread."""

    def __init__(self) -> None:
        self._counts = ReconcileCounts()

    def done(self) -> None:
        self._counts = replace(self._counts, done=self._counts.done + 1, last_at=time.time())

    def failed(self) -> None:
        self._counts = replace(self._counts, failed=self._counts.failed + 1)

    def counts(self) -> ReconcileCounts:
        # One immutable value swapped whole: a reader never sees half an update.
        return self._counts


@dataclass(frozen=True)
class _Place:
    host: cgroups.HostRt
    fs: cgroups.CgroupFs
    # (driver, engine parent, engine): where containers' cgroups may be (listing.engine_parents).
    parents: tuple[tuple[str, str, EngineKind], ...]
    # Whether media containers share real-time CPU by CPU sets here (the metrics' mode is then `cpus`).
    cpu_sets: bool = False


class Figures:
    """Computes `HostFigures` on each call; safe to call from any thread (nothing shared but the settings)."""

    def __init__(
        self,
        settings: Settings,
        netfilter: NetfilterApi,
        stats: ReconcileStats | None = None,
        list_managed: Callable[[], list[ContainerSummary]] | None = None,
        wakeups: Callable[[], Mapping[str, WakeupHistogram]] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.list_managed = list_managed or (lambda: managed_summaries(settings))
        self.wakeups = wakeups
        self.netfilter = netfilter
        host = cgroups.detect_host(*settings.roots)
        # Both drivers' places, as `ps` reads them, unless the settings name the driver: no engine request.
        drivers = (settings.cgroup_driver,) if settings.cgroup_driver else DRIVERS
        self._place = _Place(
            host=host,
            fs=cgroups.CgroupFs(host.cpu_root),
            parents=engine_parents(host, settings.cgroup_parent, drivers),
            cpu_sets=cpu_layout(settings, host.mode, lambda: cgroups.online_cpus(settings.sys_root)) is not None,
        )

    def __call__(self) -> HostFigures:
        place = self._place
        running = [c for c in self.list_managed() if c.running]
        per_group = place.host.mode == PER_GROUP
        groups = {c.id: self._group(c.id) for c in running}
        parent = next((p for _, p, _ in place.parents if place.fs.exists(p)), None) if per_group else None
        held: dict[str, int] = {}
        pool = parent_us = None
        if parent is not None:
            children = place.fs.children(parent)
            ours = {g.rsplit("/", 1)[-1] for g in groups.values() if g}
            room = budget.room(
                place.fs.read_runtime("/"), place.fs.sibling_runtime(parent), children, ours, self.settings.rt_pool_us
            )
            held, pool = dict(room.held), room.pool_us
            parent_us = place.fs.read_runtime(parent)
        forwards = self._forwards()
        containers = tuple(self._container(c, groups.get(c.id), held, pool, forwards, per_group) for c in running)
        steal = cgroups.cpu_steal_ms()
        limit = pmqos.read_idle_state().limit_us if self.settings.real_host else None
        return HostFigures(
            mode=CPUS if place.cpu_sets else place.host.mode,
            rt_runtime_us=place.host.rt_runtime_us,
            fair_server_ns=cgroups.fair_server_reserve(self.settings.sys_root),
            pool_us=pool,
            parent_us=parent_us,
            steal_seconds=None if steal is None else steal / 1000,
            cpu_latency_limit_us=None if limit is None or limit >= pmqos.NO_LIMIT_US else limit,
            containers=containers,
            reconciles=self.stats.counts() if self.stats is not None else None,
            wakeups=self.wakeups() if self.wakeups is not None else {},
        )

    def _group(self, container_id: str) -> str | None:
        return container_group(self._place.fs, self._place.parents, container_id)

    def _forwards(self) -> list[Forward] | None:
        try:
            return self.netfilter.list_forwards()
        except XmsError:
            return None  # no iptables here, or not allowed to read it: the rule figures are left out

    def _container(
        self,
        c: ContainerSummary,
        group: str | None,
        held: dict[str, int],
        pool: int | None,
        forwards: list[Forward] | None,
        per_group: bool,
    ) -> ContainerFigures:
        budget_us = held.get(group.rsplit("/", 1)[-1], 0) if group else 0
        pids = self._pids(group)
        rt, other = count_policies(self._policies(pids))
        planned = 0
        if unreadable(c.labels) is None:
            planned = sum(f.host_end - f.host_start + 1 for f in forwards_from_labels(c.labels))
        mine = None if forwards is None else [f.spec for f in forwards if c.id.startswith(f.container_id)]
        advertise = c.labels.get(ADVERTISE_LABEL, "")
        return ContainerFigures(
            id=c.id,
            name=c.name,
            profile=c.labels.get(PROFILE_LABEL, ""),
            mode=c.labels.get(MODE_LABEL, ""),
            origin=origin_labels(c.labels),
            budget_us=budget_us if per_group else None,
            share=(budget_us / pool if pool else 0.0) if per_group else None,
            rt_threads=rt,
            other_threads=other,
            ready=c.health == "healthy",
            advertise=c.ip_address if advertise == ADVERTISE_OWN else advertise,
            media_ports=planned,
            forward_rules=None if mine is None else len(mine),
            forwarded_ports=None if mine is None else sum(f.host_end - f.host_start + 1 for f in mine),
            # What the kernel holds for its first process (every process inherits the engine's limit).
            watchdog_us=cgroups.rttime_soft_us(pids[0]) if pids else None,
        )

    def _pids(self, group: str | None) -> list[int]:
        try:
            return sorted(self._place.fs.procs_under(group)) if group else []
        except OSError:
            return []  # the container stopped while we looked: its series go at the next scrape

    @staticmethod
    def _policies(pids: Iterable[int]) -> list[str]:
        out: list[str] = []
        for pid in pids:
            try:
                out += [t.policy for t in cgroups.thread_policies(pid)]
            except XmsError:
                continue  # the process ended while we looked
        return out


class WakeupProbes:
    """`agent --probe-every S`: a short wake-up probe in each running managed container every S seconds.

    Each round runs docker-xms's static probe (copied in, removed after) for PROBE_S at the container's
    profile priority, one container after another so that the probes do not disturb each other, and adds
    every wake-up's lateness to that container's histogram. A container that stopped loses its histogram
    at the next round, so its series go stale like the others. A refusal (no budget: the kernel refuses
    SCHED_FIFO) adds nothing and is logged when it starts and when it ends.
    """

    PROBE_S = 0.5
    INTERVAL_US = 1000

    def __init__(
        self,
        settings: Settings,
        every_s: float,
        log: Callable[[str], None],
        list_managed: Callable[[], list[ContainerSummary]] | None = None,
    ) -> None:
        self.settings = settings
        self.every_s = every_s
        self.log = log
        self.list_managed = list_managed or (lambda: managed_summaries(settings))
        self._histograms: dict[str, WakeupHistogram] = {}
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def snapshot(self) -> dict[str, WakeupHistogram]:
        with self._lock:
            return dict(self._histograms)

    def round(self) -> None:
        """Probe each running managed container once."""
        from docker_xms.adapters.engine import Engine  # noqa: PLC0415 - the probe's engine, for this thread only
        from docker_xms.adapters.profile_store import load_profile  # noqa: PLC0415
        from docker_xms.usecases.probe import measure_samples  # noqa: PLC0415

        running = [c for c in self.list_managed() if c.running]
        with self._lock:
            for gone in set(self._histograms) - {c.id for c in running}:
                del self._histograms[gone]
        engine = Engine.connect(host=self.settings.docker_host)
        try:
            for c in running:
                if self._stop.is_set():
                    return
                try:
                    name = c.labels.get(PROFILE_LABEL, "")
                    priority = (
                        load_profile(name, self.settings.profile_dirs, installed_only=True).rt_priority if name else 50
                    )
                    samples = measure_samples(engine, c.id, priority, self.INTERVAL_US, self.PROBE_S)
                except Exception as exc:  # what a container prints is its own: any fault in reading it is its
                    reason = exc.message if isinstance(exc, XmsError) else f"{type(exc).__name__}: {str(exc)[:200]}"
                    if self._failing.get(c.id) != reason:
                        self.log(f"metrics: the wake-up probe in {c.name} failed: {reason}")
                    self._failing[c.id] = reason
                    continue
                if self._failing.pop(c.id, None) is not None:
                    self.log(f"metrics: the wake-up probe in {c.name} runs again")
                with self._lock:
                    self._histograms[c.id] = self._histograms.get(c.id, WakeupHistogram()).add(samples)
        finally:
            engine.close()

    def start(self) -> Callable[[], None]:
        """Probe in a daemon thread until the returned function is called."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.round()
                except Exception as exc:  # the thread outlives any one round's fault, and says it
                    reason = exc.message if isinstance(exc, XmsError) else f"{type(exc).__name__}: {str(exc)[:200]}"
                    self.log(f"metrics: a wake-up probe round failed: {reason}")
                self._stop.wait(self.every_s)

        thread = threading.Thread(target=loop, name="wakeup-probes", daemon=True)
        thread.start()

        def stop() -> None:
            self._stop.set()
            thread.join(timeout=self.PROBE_S * 4 + 10)

        return stop


def start_exporter(
    settings: Settings,
    netfilter: NetfilterApi,
    listen: str,
    stats: ReconcileStats | None,
    log: Callable[[str], None],
    probe_every_s: float | None = None,
) -> Callable[[], None]:
    """Serve the figures on `listen` (PORT or ADDRESS:PORT) until the returned function is called; with
    `probe_every_s`, also the histograms of scheduled wake-up probes."""
    # Imported here: prometheus_client is for the agent with --metrics, not for every command importing this.
    from docker_xms.adapters import prometheus  # noqa: PLC0415

    address, port = listen_address(listen)
    probes = WakeupProbes(settings, probe_every_s, log) if probe_every_s is not None else None
    figures = Figures(settings, netfilter, stats, wakeups=probes.snapshot if probes is not None else None)
    stop_serving = prometheus.serve(
        address, port, lambda: families(figures()), lambda reason: log(f"metrics: {reason}")
    )
    stop_probing = probes.start() if probes is not None else None

    def stop() -> None:
        if stop_probing is not None:
            stop_probing()
        stop_serving()

    return stop
