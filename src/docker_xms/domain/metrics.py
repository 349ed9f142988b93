"""What the agent exports to Prometheus and `top` shows: the figures of a host and its managed containers,
and their metric families in Prometheus's conventions (base units, so budgets are seconds per 1 s period).

Pure: the use case `usecases/metrics.py` reads the figures from the engine's list view, the cgroup files,
/proc and netfilter; the adapter `adapters/prometheus.py` serves the families.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from docker_xms.domain.labels import COMPOSE_PROJECT, SWARM_SERVICE, SWARM_TASK
from docker_xms.domain.rt_mode import CPUS, GLOBAL, NONE, PER_GROUP, V2_RT_GROUP
from docker_xms.errors import BadInput

if TYPE_CHECKING:
    from docker_xms.domain.rt_mode import RtMode

RT_POLICIES = frozenset({"SCHED_FIFO", "SCHED_RR"})
# The modes exported: a v2 host with group scheduling counts as per-group (exported_mode).
MODES: tuple[RtMode, ...] = (PER_GROUP, GLOBAL, NONE, CPUS)
DEFAULT_ADDRESS = "127.0.0.1"
US_PER_S = 1_000_000


def listen_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, or a bare PORT on 127.0.0.1: a metrics port is not opened to the network unless asked."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_ADDRESS
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536 or (sep and not host):
        raise BadInput(f"--metrics {text!r} is not PORT or ADDRESS:PORT, such as 9108 or 0.0.0.0:9108.")
    return host, int(port)


def origin_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The Swarm service and task, or the Compose project, that started a container ("" where none), as
    metric labels (domain/adoption.origin says the same in one word for `ps`)."""
    return {
        "swarm_service": labels.get(SWARM_SERVICE, ""),
        "swarm_task": labels.get(SWARM_TASK, ""),
        "compose_project": labels.get(COMPOSE_PROJECT, ""),
    }


def count_policies(policies: list[str]) -> tuple[int, int]:
    """(real-time, other) thread counts from the threads' scheduling policy names."""
    rt = sum(1 for p in policies if p in RT_POLICIES)
    return rt, len(policies) - rt


def exported_mode(mode: RtMode) -> RtMode:
    """The host's real-time mode as exported: a v2 host with group scheduling counts as per-group."""
    return PER_GROUP if mode in (PER_GROUP, V2_RT_GROUP) else mode


@dataclass(frozen=True)
class ContainerFigures:
    id: str
    name: str
    profile: str
    mode: str
    origin: Mapping[str, str]
    # The kernel's cpu.rt_runtime_us of its cgroup; None on hosts without per-group budgets.
    budget_us: int | None
    share: float | None
    rt_threads: int
    other_threads: int
    ready: bool
    advertise: str
    # Host media ports its plan forwards by DNAT (from its labels), and what netfilter holds for it now;
    # None when netfilter could not be read.
    media_ports: int
    forward_rules: int | None
    forwarded_ports: int | None
    # The runaway watchdog its processes run under (RLIMIT_RTTIME soft, us; 0: none); None: not readable.
    watchdog_us: int | None = None


@dataclass(frozen=True)
class ReconcileCounts:
    done: int = 0
    failed: int = 0
    last_at: float | None = None  # seconds since the epoch


# Upper bounds of the wake-up lateness histogram, in seconds: 10 us to 50 ms, where a media thread's
# lateness goes from unnoticed to a heard gap (a 20 ms packet time).
WAKEUP_BUCKETS_S = (10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3)


@dataclass(frozen=True)
class WakeupHistogram:
    """Wake-up lateness samples of a container's scheduled probes, cumulated: counts per bucket (not
    cumulative across buckets; the last one counts what exceeds every bound), and their sum in seconds."""

    counts: tuple[int, ...] = (0,) * (len(WAKEUP_BUCKETS_S) + 1)
    sum_s: float = 0.0

    def add(self, samples_us: list[float]) -> WakeupHistogram:
        counts = list(self.counts)
        for us in samples_us:
            seconds = max(us, 0.0) / US_PER_S
            index = next((i for i, bound in enumerate(WAKEUP_BUCKETS_S) if seconds <= bound), len(WAKEUP_BUCKETS_S))
            counts[index] += 1
        return WakeupHistogram(tuple(counts), self.sum_s + sum(max(us, 0.0) for us in samples_us) / US_PER_S)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus's buckets: (le, samples at or under it), ending with +Inf = every sample."""
        out, total = [], 0
        for bound, count in zip((*WAKEUP_BUCKETS_S, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else f"{bound:g}", total))
        return out


@dataclass(frozen=True)
class HostFigures:
    mode: RtMode
    pool_us: int | None
    parent_us: int | None
    steal_seconds: float | None
    # The CPU wake-up latency limit in force (/dev/cpu_dma_latency); None when none is.
    cpu_latency_limit_us: int | None
    containers: tuple[ContainerFigures, ...]
    reconciles: ReconcileCounts | None = None
    # kernel.sched_rt_runtime_us (-1: no limit), and the fair server's runtime per CPU in ns (6.12 and later,
    # where debugfs is mounted; empty elsewhere).
    rt_runtime_us: int | None = None
    fair_server_ns: Mapping[int, int] = field(default_factory=dict)
    # Scheduled wake-up probes (agent --probe-every), by container id; empty when none run.
    wakeups: Mapping[str, WakeupHistogram] = field(default_factory=dict)


Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: `name` without the `_total` a counter gets when served."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    # A histogram's series: labels, cumulative (le, count) buckets ending with +Inf, and the sum.
    histograms: list[tuple[tuple[str, ...], list[tuple[str, int]], float]] = field(default_factory=list)


CONTAINER_LABELS = ("name", "id", "profile", "mode", "swarm_service", "swarm_task", "compose_project")


def families(figures: HostFigures) -> list[Family]:
    """The figures as Prometheus metric families; series exist only for containers that run now."""

    def gauge(name: str, text: str, labels: tuple[str, ...] = CONTAINER_LABELS) -> Family:
        return Family(name, "gauge", text, labels)

    budget = gauge(
        "docker_xms_container_rt_budget_seconds",
        "Real-time CPU time per 1 s period its cgroup holds (cpu.rt_runtime_us / 1e6).",
    )
    share = gauge("docker_xms_container_rt_share_ratio", "Its budget as a part of the host's real-time pool.")
    threads = gauge(
        "docker_xms_container_threads",
        "Threads of its processes by scheduling policy: realtime (SCHED_FIFO, SCHED_RR) or other.",
        (*CONTAINER_LABELS, "policy"),
    )
    ready = gauge("docker_xms_container_ready", "1 when its readiness check passes (the engine's health is healthy).")
    advertise = gauge(
        "docker_xms_container_advertise_info",
        "The address its media server advertises.",
        (*CONTAINER_LABELS, "address"),
    )
    media = gauge("docker_xms_container_media_ports", "Host media ports its port plan forwards by DNAT.")
    forwarded = gauge(
        "docker_xms_container_media_ports_forwarded", "Host media ports the DNAT rules present forward to it."
    )
    rules = gauge("docker_xms_container_forward_rules", "DNAT range rules netfilter holds for it.")
    watchdog = gauge(
        "docker_xms_container_watchdog_seconds",
        "How long a real-time thread of its may run without blocking before the kernel stops it (RLIMIT_RTTIME); "
        "0: no watchdog.",
    )
    wakeups = Family(
        "docker_xms_container_wakeup_latency_seconds",
        "histogram",
        "How late the scheduled probe's periodic wake-ups came inside it, at its profile's real-time priority.",
        CONTAINER_LABELS,
    )
    for c in figures.containers:
        key = (c.name, c.id[:12], c.profile, c.mode, *(c.origin.get(k, "") for k in CONTAINER_LABELS[4:]))
        if c.budget_us is not None:
            budget.samples.append((key, c.budget_us / US_PER_S))
        if c.share is not None:
            share.samples.append((key, c.share))
        threads.samples.append(((*key, "realtime"), c.rt_threads))
        threads.samples.append(((*key, "other"), c.other_threads))
        ready.samples.append((key, 1.0 if c.ready else 0.0))
        if c.advertise:
            advertise.samples.append(((*key, c.advertise), 1.0))
        media.samples.append((key, c.media_ports))
        if c.watchdog_us is not None:
            watchdog.samples.append((key, c.watchdog_us / US_PER_S))
        if c.forward_rules is not None and c.forwarded_ports is not None:
            rules.samples.append((key, c.forward_rules))
            forwarded.samples.append((key, c.forwarded_ports))
        histogram = figures.wakeups.get(c.id)
        if histogram is not None:
            wakeups.histograms.append((key, histogram.cumulative(), histogram.sum_s))
    out = [budget, share, threads, ready, advertise, media, forwarded, rules, watchdog]
    if figures.wakeups:
        out.append(wakeups)
    managed = gauge("docker_xms_managed_containers", "Managed containers running.", ())
    managed.samples.append(((), len(figures.containers)))
    mode = gauge("docker_xms_host_rt_mode", "The host's real-time mode: 1 for the one in force.", ("mode",))
    mode.samples.extend(((m,), 1.0 if exported_mode(figures.mode) == m else 0.0) for m in MODES)
    out += [managed, mode]
    if figures.rt_runtime_us is not None:
        runtime = gauge(
            "docker_xms_host_rt_runtime_seconds",
            "Real-time CPU time per period the kernel admits (kernel.sched_rt_runtime_us / 1e6; -1: no limit).",
            (),
        )
        runtime.samples.append(((), figures.rt_runtime_us / US_PER_S if figures.rt_runtime_us >= 0 else -1.0))
        out.append(runtime)
    if figures.fair_server_ns:
        fair = gauge(
            "docker_xms_host_fair_server_runtime_seconds",
            "Time per period each CPU keeps for normal tasks however busy its real-time threads are (fair server).",
            ("cpu",),
        )
        fair.samples.extend(((str(cpu),), ns / 1e9) for cpu, ns in figures.fair_server_ns.items())
        out.append(fair)
    if figures.pool_us is not None:
        pool = gauge(
            "docker_xms_host_rt_pool_seconds", "Real-time CPU time per second shared among managed containers.", ()
        )
        pool.samples.append(((), figures.pool_us / US_PER_S))
        out.append(pool)
    if figures.parent_us is not None:
        parent = gauge(
            "docker_xms_host_rt_parent_seconds", "Real-time CPU time per second the engine's parent cgroup holds.", ()
        )
        parent.samples.append(((), figures.parent_us / US_PER_S))
        out.append(parent)
    if figures.steal_seconds is not None:
        steal = Family(
            "docker_xms_host_steal_seconds",
            "counter",
            "CPU time the hypervisor took from this machine (/proc/stat steal).",
        )
        steal.samples.append(((), figures.steal_seconds))
        out.append(steal)
    if figures.cpu_latency_limit_us is not None:
        limit = gauge(
            "docker_xms_host_cpu_latency_limit_seconds",
            "The CPU wake-up latency limit in force (/dev/cpu_dma_latency).",
            (),
        )
        limit.samples.append(((), figures.cpu_latency_limit_us / US_PER_S))
        out.append(limit)
    if figures.reconciles is not None:
        done = Family("docker_xms_reconciliations", "counter", "Reconciliations this agent has done.")
        done.samples.append(((), figures.reconciles.done))
        failed = Family("docker_xms_reconciliation_failures", "counter", "Reconciliations of this agent that failed.")
        failed.samples.append(((), figures.reconciles.failed))
        out += [done, failed]
        if figures.reconciles.last_at is not None:
            last = gauge("docker_xms_last_reconciliation_timestamp_seconds", "When this agent last reconciled.", ())
            last.samples.append(((), figures.reconciles.last_at))
            out.append(last)
    return out
