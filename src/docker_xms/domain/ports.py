"""Port plans: which ports the engine publishes, which media ranges netfilter forwards, and which
media range each container's server is told to use.

Publishing a UDP port through the engine costs one docker-proxy process per port and address family,
so a media server's thousands of RTP ports are better reached another way:

- ``publish``: the engine publishes every port itself (fine for a handful of media ports).
- ``dnat``: the engine publishes signalling, web and control ports; each media range is forwarded by
  one netfilter DNAT rule (see `docker_xms.adapters.netfilter`).
- ``host``: host networking; with ``container-address`` mode each container gets its own slice of the
  profile's media ports.

Modes: ``one-to-one`` (host port = container port, one such container per host) and
``container-address`` (the engine picks host ports for signalling; each container gets its own
host media range, which is shown to the user).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from docker_xms.domain.forwards import DnatForward
from docker_xms.domain.labels import (
    ADVERTISE_OWN,
    LABEL_DNAT,
    LABEL_HOST_MEDIA,
    LABEL_STRATEGY,
    ONE_TO_ONE,
    STRATEGIES,
    mode_of,
)
from docker_xms.domain.pool import merge
from docker_xms.domain.profiles import MANAGEMENT_ROLES, PortSpec
from docker_xms.errors import BadInput

if TYPE_CHECKING:
    from docker_xms.domain.labels import Mode, Strategy

# Above this many media ports, docker-proxy processes cost more (memory, start time) than one rule.
DNAT_THRESHOLD = 20
# Linux's default net.ipv4.ip_local_port_range in a new network namespace.
KERNEL_EPHEMERAL = (32768, 60999)


@dataclass(frozen=True)
class StrategyChoice:
    strategy: Strategy
    reason: str


@dataclass(frozen=True)
class MediaRange:
    """A media range as the server sees it (start-end) and where the host offers it."""

    name: str
    protocol: str
    start: int
    end: int
    host_start: int
    host_end: int

    @property
    def count(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class PortPlan:
    strategy: str
    mode: Mode
    # "bridge" or "host".
    network_mode: str
    # The docker SDK's `ports=` form: {"5060/udp": 5060}, or None for a port the engine picks.
    publish: Mapping[str, int | None]
    forwards: tuple[DnatForward, ...]
    media: tuple[MediaRange, ...]
    # Things the user should know about this plan, one sentence each.
    notes: tuple[str, ...] = ()
    # The container's own ephemeral port range (net.ipv4.ip_local_port_range in its network namespace), set
    # when the kernel's default would overlap the server's ports; None: the default is left alone.
    container_ephemeral: tuple[int, int] | None = None

    @property
    def media_range(self) -> tuple[int, int] | None:
        """The range the server is told (its first media range, as profile templates expect)."""
        if not self.media:
            return None
        return (self.media[0].start, self.media[0].end)

    @property
    def media_port_count(self) -> int:
        return sum(m.count for m in self.media)

    @property
    def host_media_ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(merge((m.host_start, m.host_end) for m in self.media))

    def labels(self) -> dict[str, str]:
        out = {LABEL_STRATEGY: self.strategy}
        if self.media:
            out[LABEL_HOST_MEDIA] = ",".join(f"{a}-{b}" for a, b in self.host_media_ranges)
        if self.forwards:
            out[LABEL_DNAT] = ",".join(f.label() for f in self.forwards)
        return out


# How the engine reports a port published on every address.
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 - names the case, binds nothing
EVERY_ADDRESS = ("", ALL_ADDRESSES, "::")
LOOPBACK = "127.0.0.1"


def check_bind(address: str) -> str:
    """`run --bind`'s address, as the engine wants it."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise BadInput(f"--bind {address!r} is not an IP address such as 127.0.0.1 or 192.0.2.10.") from None


def bind_addresses(profile_ports: Sequence[PortSpec], bind: str | None) -> dict[str, str]:
    """The host address of each control and management port ("2223/udp" -> "127.0.0.1").

    `bind` holds for all of them; without it, a port without authentication is published on the loopback
    address only, and the others on every address (absent from the result), as the engine does by default.
    """
    out: dict[str, str] = {}
    for spec in profile_ports:
        if spec.role not in MANAGEMENT_ROLES:
            continue
        address = bind if bind is not None else (None if spec.authenticated else LOOPBACK)
        if address is not None:
            out.update({f"{spec.start + offset}/{spec.protocol}": address for offset in range(spec.count)})
    return out


def bound(publish: Mapping[str, int | None], binds: Mapping[str, str]) -> dict[str, Any]:
    """The SDK's `ports=` with the host address of each port that has one: (address, port or None)."""
    return {key: (binds[key], port) if key in binds else port for key, port in publish.items()}


def open_everywhere(name: str, label: str, host_network: bool) -> str:
    """The warning for a control port without authentication that every address of the host reaches."""
    how = (
        "with host networking it listens on every address of this host"
        if host_network
        else "it is published on every address of this host"
    )
    fix = "close it with a firewall" if host_network else "publish it on one address with --bind 127.0.0.1"
    return f"{name} ({label}) has no authentication and {how}: anyone who reaches it controls the server; {fix}."


def decide_strategy(requested: str, mode: Mode, media_port_count: int, netfilter_available: bool) -> StrategyChoice:
    """The strategy to use and why; "auto" prefers DNAT when there are many media ports."""
    # Checked as well at run time: a mode may come from a label or a caller the type checker never saw.
    mode_of(mode)
    if requested != "auto" and requested not in STRATEGIES:
        raise BadInput(f"Unknown port strategy {requested!r}: use auto, {', '.join(STRATEGIES)}.")
    if requested == "dnat" and not netfilter_available:
        raise BadInput(
            "The dnat port strategy needs a usable iptables command run as root; install iptables or choose --ports publish."
        )
    if requested != "auto":
        # One of STRATEGIES, as checked above.
        return StrategyChoice(cast("Strategy", requested), f"{requested} was asked for")
    if media_port_count <= DNAT_THRESHOLD:
        return StrategyChoice("publish", f"{media_port_count} media ports are few enough for the engine to publish")
    if netfilter_available:
        return StrategyChoice(
            "dnat", f"{media_port_count} media ports are forwarded by one DNAT rule per range, not one process per port"
        )
    return StrategyChoice(
        "publish",
        f"iptables is not usable here, so the engine publishes all {media_port_count} media ports, one process each (slow)",
    )


def with_container_ephemeral(
    plan: PortPlan, profile_ports: Sequence[PortSpec], media_ranges: Sequence[PortSpec]
) -> PortPlan:
    """The plan with the container's own ephemeral range moved off the server's ports, where it needs it.

    In a network namespace of its own, the kernel's default ephemeral range can overlap the server's ports
    (XMS's RTP range does): the server's own outgoing connections could then take a port its media needs.
    With host networking the host's range applies and is left alone.
    """
    if plan.network_mode == "host":
        return plan
    taken = [(p.start, p.end) for p in (*profile_ports, *media_ranges)]
    taken += [(m.start, m.end) for m in plan.media]
    ephemeral = ephemeral_outside(taken)
    if ephemeral is None:
        return plan
    note = (
        f"Ephemeral ports inside the container are {ephemeral[0]}-{ephemeral[1]}, off the server's ports, so that "
        "its own connections never take a media port."
    )
    return replace(plan, container_ephemeral=ephemeral, notes=(*plan.notes, note))


def ephemeral_outside(
    taken: Iterable[tuple[int, int]], default: tuple[int, int] = KERNEL_EPHEMERAL, minimum: int = 4096
) -> tuple[int, int] | None:
    """An ephemeral range clear of `taken`: None when the default is clear; else the widest free stretch of
    the default if it holds `minimum` ports, else the widest free stretch of 1024-65535.
    """
    spans = merge(taken)
    if not any(_overlap(default, span) for span in spans):
        return None
    for low, high in (default, (1024, 65535)):
        gaps, start = [], low
        for a, b in spans:
            if b < start or a > high:
                continue
            if a > start:
                gaps.append((start, a - 1))
            start = max(start, b + 1)
        if start <= high:
            gaps.append((start, high))
        best = max(gaps, key=lambda g: (g[1] - g[0], -g[0]), default=None)
        if best is not None and best[1] - best[0] + 1 >= minimum:
            return best
    raise BadInput(f"The profile's ports leave no stretch of {minimum} free ports for the container's own connections.")


def plan_ports(
    profile_ports: Sequence[PortSpec],
    media_ranges: Sequence[PortSpec],
    mode: Mode,
    strategy: str,
    media_ports: int | None = None,
    used_host_ranges: Iterable[tuple[int, int]] = (),
    *,
    host_pool: tuple[int, int],
    same_ports: bool = False,
    own_numbers_first: bool = False,
) -> PortPlan:
    """Plan one container's ports.

    `used_host_ranges` are the host media ranges other containers hold (from their `LABEL_HOST_MEDIA`
    labels); `host_pool` is where container-address mode finds host media ranges, kept below the
    kernel's ephemeral range from which the engine picks the host ports it publishes. With `same_ports`
    the server is told its host range in container-address mode, so that forwarding changes only the
    address of a media port, never its number: the port in an SDP is then right on both sides. With
    `own_numbers_first` (a server that cannot be told, as an adopted one), the container's own media ports
    are taken on the host when they are free and in the pool, for the same reason.
    """
    mode_of(mode)
    if strategy not in STRATEGIES:
        raise BadInput(f"Unknown port strategy {strategy!r}: use {', '.join(STRATEGIES)}.")
    available = sum(r.count for r in media_ranges)
    if media_ports is not None:
        if media_ports < 1:
            raise BadInput(f"--media-ports must be at least 1, not {media_ports}.")
        if media_ports > available:
            raise BadInput(f"--media-ports {media_ports} is more than the profile's {available} media ports.")
    count = available if media_ports is None else media_ports
    used = list(used_host_ranges)
    one_to_one = mode == ONE_TO_ONE

    if strategy == "host":
        if one_to_one:
            media = tuple(_identity(p) for p in _first(media_ranges, count))
            _check_free(media, used)
            return PortPlan(strategy, mode, "host", {}, (), media)
        media = _host_slice(media_ranges, count, used)
        shared = ", ".join(p.label() for p in profile_ports)
        notes = (f"With host networking only one container can listen on {shared}.",) if shared else ()
        return PortPlan(strategy, mode, "host", {}, (), media, notes)

    publish = _publish_fixed(profile_ports, one_to_one)
    pieces = _first(media_ranges, count)
    if one_to_one:
        media = tuple(_identity(p) for p in pieces)
        _check_free(media, used)
    elif own_numbers_first and _free_in_pool(identity := tuple(_identity(p) for p in pieces), host_pool, used):
        media = identity
    else:
        base = _allocate(count, host_pool, used)
        media = _shift(pieces, base)
        if same_ports:
            media = tuple(replace(m, start=m.host_start, end=m.host_end) for m in media)
    if strategy == "publish":
        for m in media:
            for offset in range(m.count):
                publish[f"{m.start + offset}/{m.protocol}"] = m.host_start + offset
        return PortPlan(strategy, mode, "bridge", publish, (), media)
    forwards = tuple(DnatForward(m.name, m.protocol, m.host_start, m.host_end, m.start, m.end) for m in media)
    return PortPlan(strategy, mode, "bridge", publish, forwards, media)


ADVERTISE_CHOICES = ("host", ADVERTISE_OWN)


def check_advertise(value: str) -> str:
    """`run --advertise`'s value: host, container, or the IPv4 address peers reach the host at."""
    if value in ADVERTISE_CHOICES:
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise BadInput(
            f"--advertise {value!r} is not host, container or an IPv4 address such as 203.0.113.10."
        ) from None


def with_host_ports(plan: PortPlan, chosen: Mapping[str, int]) -> PortPlan:
    """The plan with host ports chosen ahead for ports the engine would pick ("5060/udp" -> 32801)."""
    return replace(plan, publish={**plan.publish, **{k: v for k, v in chosen.items() if k in plan.publish}})


def carve(forward: DnatForward, holes: Iterable[int]) -> tuple[DnatForward, ...]:
    """The forward without the host ports in `holes`: the pieces around them, each keeping its offsets.

    A host port inside a forwarded range may also be published by the engine for another container (the
    engine picks host ports from the kernel's ephemeral range, which 1:1 media ranges can overlap); the
    DNAT rules are jumped to first, so without a hole they would take that container's packets.
    """
    pieces: list[DnatForward] = []
    start = forward.host_start
    for hole in sorted({h for h in holes if forward.host_start <= h <= forward.host_end}):
        if hole > start:
            pieces.append(_piece(forward, start, hole - 1))
        start = hole + 1
    if start <= forward.host_end:
        pieces.append(_piece(forward, start, forward.host_end))
    return tuple(pieces)


def _piece(forward: DnatForward, host_start: int, host_end: int) -> DnatForward:
    shift = forward.container_start - forward.host_start
    return replace(
        forward,
        host_start=host_start,
        host_end=host_end,
        container_start=host_start + shift,
        container_end=host_end + shift,
    )


def _first(ranges: Sequence[PortSpec], count: int) -> list[PortSpec]:
    """The profile's media ranges cut down to their first `count` ports."""
    out: list[PortSpec] = []
    left = count
    for spec in ranges:
        if left <= 0:
            break
        take = min(left, spec.count)
        out.append(PortSpec(spec.name, spec.protocol, spec.start, spec.start + take - 1, spec.role))
        left -= take
    return out


def _identity(spec: PortSpec) -> MediaRange:
    return MediaRange(spec.name, spec.protocol, spec.start, spec.end, spec.start, spec.end)


def _shift(pieces: Sequence[PortSpec], base: int) -> tuple[MediaRange, ...]:
    """Lay the pieces end to end on the host from `base`."""
    out: list[MediaRange] = []
    at = base
    for p in pieces:
        out.append(MediaRange(p.name, p.protocol, p.start, p.end, at, at + p.count - 1))
        at += p.count
    return tuple(out)


def _publish_fixed(ports: Sequence[PortSpec], one_to_one: bool) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for spec in ports:
        for offset in range(spec.count):
            key = f"{spec.start + offset}/{spec.protocol}"
            if not one_to_one:
                out[key] = None
            else:
                out[key] = (spec.host_port if spec.host_port is not None else spec.start) + offset
    return out


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _check_free(media: Sequence[MediaRange], used: Sequence[tuple[int, int]]) -> None:
    for m in media:
        for taken in used:
            if _overlap((m.host_start, m.host_end), taken):
                raise BadInput(
                    f"Host ports {taken[0]}-{taken[1]} are held by another container, so {m.name} "
                    f"({m.start}-{m.end}/{m.protocol}) cannot be offered one-to-one; remove it or use -c."
                )


def _free_in_pool(media: Sequence[MediaRange], pool: tuple[int, int], taken: Sequence[tuple[int, int]]) -> bool:
    return all(
        pool[0] <= m.host_start
        and m.host_end <= pool[1]
        and not any(_overlap((m.host_start, m.host_end), t) for t in taken)
        for m in media
    )


def _allocate(size: int, pool: tuple[int, int], taken: Sequence[tuple[int, int]]) -> int:
    """The start of the first free block of `size` host ports in the pool."""
    low, high = pool
    if not 1 <= low <= high <= 65535:
        raise BadInput(f"The host port pool {low}-{high} must lie within 1-65535, low to high.")
    at = low
    while at + size - 1 <= high:
        clash = [t for t in taken if _overlap((at, at + size - 1), t)]
        if not clash:
            return at
        at = max(t[1] for t in clash) + 1
    raise BadInput(
        f"The host port pool {low}-{high} has no free block of {size} ports left for another container; "
        "remove one, give fewer with --media-ports, or widen the pool."
    )


def _host_slice(ranges: Sequence[PortSpec], size: int, taken: Sequence[tuple[int, int]]) -> tuple[MediaRange, ...]:
    """The first free slice of the profile's media ports, `size` ports long."""
    ports = [(spec, p) for spec in ranges for p in range(spec.start, spec.end + 1)]
    slices = len(ports) // size
    for k in range(slices):
        chosen = ports[k * size : (k + 1) * size]
        media = _runs(chosen)
        if not any(_overlap((m.start, m.end), t) for m in media for t in taken):
            return media
    raise BadInput(
        f"All {slices} slices of {size} media ports are taken by other host-network containers; "
        "remove one or give each fewer with --media-ports."
    )


def _runs(ports: Sequence[tuple[PortSpec, int]]) -> tuple[MediaRange, ...]:
    out: list[MediaRange] = []
    for spec, port in ports:
        last = out[-1] if out else None
        if last is not None and last.name == spec.name and last.end + 1 == port:
            out[-1] = MediaRange(last.name, last.protocol, last.start, port, last.start, port)
        else:
            out.append(MediaRange(spec.name, spec.protocol, port, port, port, port))
    return tuple(out)
