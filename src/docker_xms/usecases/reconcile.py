"""The one reconciliation routine: budgets and port rules made to match the containers that run.

Commands call it after every change and the agent calls it on every engine event, so that whatever
happened on the host (a crash, a `docker rm -f` by hand, an engine restart) the end state is right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from docker_xms.adapters import cgroupns, hostnet
from docker_xms.adapters.hostlock import host_lock
from docker_xms.domain import ports as port_plans
from docker_xms.domain.engine_types import ContainerSummary
from docker_xms.domain.forwards import DnatForward, Reconciled, media_source
from docker_xms.domain.labels import ADVERTISE_LABEL, ADVERTISE_OWN, forwards_from_labels, unreadable
from docker_xms.domain.pool import Span
from docker_xms.usecases.adoption import Adoption, adopt_locked, media_pool, with_plans
from docker_xms.usecases.boundaries import EngineApi, NetfilterApi
from docker_xms.usecases.plan import Handed, hand_plans_locked
from docker_xms.usecases.rt import Rebalance, RtHost, managed_running, readable, rebalance_locked


@dataclass(frozen=True)
class Reconciliation:
    budgets: Rebalance
    rules: Reconciled | None
    # Containers adopted by label in this pass, and plans given back (see usecases/adoption.py).
    adoption: Adoption = field(default_factory=Adoption)
    # Containers whose systemd cgroup was made writable in this pass, and why some could not be.
    cgroups: tuple[str, ...] = ()
    # Plans handed to waiting servers in this pass (usecases/plan.py).
    handed: tuple[Handed, ...] = ()


def open_cgroups(rt: RtHost, running: Iterable[ContainerSummary]) -> tuple[str, ...]:
    """Make each running container's own `name=systemd` subtree writable where its gate waits for it
    (adapters/cgroupns.py): after a start by the engine (a restart policy, a reboot, Compose, Swarm) or by
    anyone else. The container's first process is the engine's to say: its pid is in the engine's pid
    namespace, seen at `engine_proc` (the node's /proc, mounted into the agent's Swarm service).
    A line per container opened, or per one that could not be."""
    proc = rt.settings.engine_proc
    lines = []
    for c in running:
        info = rt.engine.find_container(c.id)
        if info is None or not info.pid or not cgroupns.waiting_mount(info.pid, proc):
            continue
        problem = cgroupns.open_systemd_cgroup(info.pid, proc)
        lines.append(
            f"{c.name}: {problem}" if problem else f"systemd cgroup of {c.name} made writable (its own subtree)"
        )
    return tuple(lines)


def published_ports(summaries: Iterable[ContainerSummary]) -> dict[str, set[tuple[str, int]]]:
    """(protocol, host port) pairs the engine publishes, per container id, from its list view."""
    out: dict[str, set[tuple[str, int]]] = {}
    for summary in summaries:
        for port in summary.ports:
            if port.host_port:
                out.setdefault(summary.id, set()).add((port.protocol, port.host_port))
    return out


def live_forwards(
    engine: EngineApi,
    netfilter: NetfilterApi | None = None,
    plans: Mapping[str, Mapping[str, str]] | None = None,
    pool: Sequence[Span] = (),
    sources: Callable[[str], str] | None = None,
    listeners: Callable[[], Mapping[str, set[int]]] | None = None,
) -> dict[str, list[DnatForward]]:
    """The DNAT forwards every running managed container should have, from its labels and address.

    `plans` are what docker-xms decided for each container (usecases/adoption.held_plans: its records, and
    the plans of adopted containers): forwards come from them alone, never from labels. `pool` is the media
    port pool, against which the claims of a container without a decision are checked (to report it).

    Host ports that the engine publishes for any other container, and ports a process of the host listens on
    (`listeners`, by default read from /proc/net at each pass), are cut out of the ranges (`carve`): a
    forward never takes a port a host service uses.
    `sources` gives the host address media leaves from for a container's advertise label (`media_sources`).
    A container whose labels cannot be read keeps the forwards `netfilter` holds for it (`rt.Skipped`).
    One list request gives both: every running container's published ports and the managed ones.
    """
    running = with_plans(engine.list_containers(all=False), plans or {}, pool)
    source = sources if sources is not None else media_sources()
    published = published_ports(running)
    listening = listeners() if listeners is not None else hostnet.listening_ports()
    live: dict[str, list[DnatForward]] = {}
    held = None
    for info in (c for c in running if c.managed):
        if unreadable(info.labels) is not None:
            # Skipped and reported; a container docker-xms decided for keeps the rules it holds.
            if netfilter is not None and info.id in (plans or {}):
                held = netfilter.list_forwards() if held is None else held
                kept = [f.spec for f in held if info.id.startswith(f.container_id)]
                if kept:
                    live[info.id] = kept
            continue
        forwards = forwards_from_labels(info.labels)
        if not (info.running and forwards and info.ip_address):
            continue
        taken = [pair for cid, pairs in published.items() if cid != info.id for pair in pairs]
        taken += [(protocol, port) for protocol, ports in listening.items() for port in ports]
        leaving = source(info.labels.get(ADVERTISE_LABEL, ADVERTISE_OWN))
        live[info.id] = [
            f.to(info.ip_address).leaving_from(leaving)
            for forward in forwards
            for f in port_plans.carve(forward, (port for protocol, port in taken if protocol == forward.protocol))
        ]
    return live


def media_sources() -> Callable[[str], str]:
    """The host address media leaves from, per advertised address; the host's addresses read once, if at all."""
    facts: list[tuple[hostnet.LocalAddresses, str]] = []

    def source(advertised: str) -> str:
        if advertised in ("", ADVERTISE_OWN):
            return ""
        if not facts:
            facts.append((hostnet.LocalAddresses.read(), hostnet.host_address()))
        local, default = facts[0]
        return media_source(advertised, local.holds, default)

    return source


def reconcile(rt: RtHost, netfilter: NetfilterApi) -> Reconciliation:
    # One lock around reading the engine and writing rules: `run` adds a new container's rules under
    # it too, so a reconcile can neither miss them with a stale view nor add them a second time.
    with host_lock(rt.lock_path):
        # First, so that a container started by Compose or Swarm has its plan before its rules are made.
        adoption = adopt_locked(rt.engine, rt.settings)
        budgets = rebalance_locked(rt)
        # Only those docker-xms acts on: not one skipped for its labels or left out by the adopt setting.
        acted_on, _ = readable(managed_running(rt.engine, rt.settings))
        # With its share in force, and before its gate opens (cgroup v1): a waiting server finds its plan
        # as soon as systemd runs.
        handed = hand_plans_locked(rt.engine, rt.settings, adoption.plans)
        opened = open_cgroups(rt, acted_on) if rt.host.cgroup_version == 1 else ()
        rules = None
        if netfilter.available():
            netfilter.ensure_chains()
            live = live_forwards(rt.engine, netfilter, adoption.plans, media_pool(rt.settings), listeners=rt.listening)
            rules = netfilter.reconcile(live)
    return Reconciliation(budgets, rules, adoption, opened, tuple(handed))
