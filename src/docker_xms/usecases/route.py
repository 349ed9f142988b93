"""The static route that makes container addresses reachable from the LAN (`run -c`), as advice: the
commands for each system, and what to tell a media server on a VM's Docker host."""

from __future__ import annotations

from dataclasses import dataclass

from docker_xms.adapters import hostnet
from docker_xms.adapters.engine import Engine


@dataclass(frozen=True)
class RouteAdvice:
    destination: str
    mask: str
    prefix: int
    gateway: str
    metric: int
    commands: dict[str, str]
    nat_advice: str


def route(engine: Engine) -> RouteAdvice:
    subnet = engine.bridge_subnet()
    network, prefix = hostnet.split_cidr(subnet)
    gateway = hostnet.host_address()
    mask = hostnet.prefix_to_mask(prefix)
    return RouteAdvice(
        destination=network,
        mask=mask,
        prefix=prefix,
        gateway=gateway,
        metric=10,
        commands={
            "linux": f"ip route add {network}/{prefix} via {gateway} metric 10",
            "windows": f"route -p ADD {network} MASK {mask} {gateway} METRIC 10",
            "macos": f"sudo route -n add -net {network}/{prefix} {gateway}",
        },
        nat_advice=(
            "On a VM Docker host in 1:1 mode, clients reach the media server through the VM's address: "
            f"configure the media server as behind NAT with {gateway} as its public address "
            "(XMS: System > Network > Behind NAT)."
        ),
    )
