"""A DNAT forward of a media range: what a port plan asks for, a label records and netfilter applies."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DnatForward:
    """Host ports host_start-host_end to the same offsets of the container's container_start-container_end.

    A plan and a label know no address; netfilter needs one, so the forward to apply carries the
    container's address (`to`).
    """

    name: str
    protocol: str
    host_start: int
    host_end: int
    container_start: int
    container_end: int
    container_ip: str = ""

    @property
    def count(self) -> int:
        return self.host_end - self.host_start + 1

    def label(self) -> str:
        return (
            f"{self.name}/{self.protocol}:{self.host_start}-{self.host_end}>{self.container_start}-{self.container_end}"
        )

    def to(self, container_ip: str) -> DnatForward:
        return replace(self, container_ip=container_ip)
