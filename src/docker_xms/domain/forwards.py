"""A DNAT forward of a media range: what a port plan asks for, a label records and netfilter applies."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DnatForward:
    """Host ports host_start-host_end to the same offsets of the container's container_start-container_end.

    A plan and a label know no address; netfilter needs one, so the forward to apply carries the
    container's address (`to`) and the address the range's media leaves the host from (`leaving_from`).
    """

    name: str
    protocol: str
    host_start: int
    host_end: int
    container_start: int
    container_end: int
    container_ip: str = ""
    # The host address that media the container sends from this range leaves from, keeping its port: the
    # reverse of the DNAT, so that a peer's packets to the SDP's address and port and the relay's packets to
    # that peer are one flow in either order. "" leaves it to the engine's masquerade (the per-link address).
    source_ip: str = ""

    @property
    def count(self) -> int:
        return self.host_end - self.host_start + 1

    def label(self) -> str:
        return (
            f"{self.name}/{self.protocol}:{self.host_start}-{self.host_end}>{self.container_start}-{self.container_end}"
        )

    @property
    def same_numbers(self) -> bool:
        """Whether the container uses the host's port numbers, so that only the address changes."""
        return self.host_start == self.container_start

    def to(self, container_ip: str) -> DnatForward:
        return replace(self, container_ip=container_ip)

    def leaving_from(self, source_ip: str) -> DnatForward:
        """The forward with the address its media leaves from; none for a range the container numbers apart
        from the host's, as netfilter's SNAT can keep a port but not shift it (its server advertises its own
        numbers then, which no outside peer reaches through the forward anyway)."""
        return replace(self, source_ip=source_ip if self.same_numbers else "")


@dataclass(frozen=True)
class Forward:
    """A forward as netfilter holds it, with the container that owns it."""

    container_id: str
    spec: DnatForward


@dataclass(frozen=True)
class Reconciled:
    """What a reconciliation changed: the containers whose rules went, and those whose rules were written."""

    removed: tuple[str, ...]
    added: tuple[str, ...]


def media_source(advertised: str, is_local: Callable[[str], bool], default_route_address: str) -> str:
    """The host address a container's media leaves from, for the address its server advertises.

    The advertised address itself where this host holds it; where it does not (a NAT router in front
    forwards that address to this host), the host's address on the default route, which the router maps
    back to the advertised one. "" for a server that advertises its container's own address (reached by a
    route to the container network, not through the forwards), or a value that is no IPv4 address.
    """
    try:
        address = str(ipaddress.IPv4Address(advertised))
    except ValueError:
        return ""
    return address if is_local(address) else default_route_address
