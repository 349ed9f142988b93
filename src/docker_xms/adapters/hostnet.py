"""This host's network facts: its address, the ports the kernel hands out to outgoing sockets."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from docker_xms.errors import BadInput, XmsError


def port_free(protocol: str, port: int, address: str = "0.0.0.0") -> bool:  # noqa: S104 - a test bind
    """Whether a socket could bind the port now: the engine's own publishing fails later, less clearly."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def pick_port(protocols: Sequence[str], low: int, high: int, avoid: Collection[int] = ()) -> int:
    """A port in low-high that every protocol could bind now on every address, from a random start.

    For a port the engine would otherwise pick at start, chosen before the container exists so that its
    files can name it; the engine still refuses the port if another process takes it meanwhile.
    """
    span = high - low + 1
    first = secrets.randbelow(span)
    for step in range(span):
        port = low + (first + step) % span
        if port not in avoid and all(port_free(protocol, port) for protocol in protocols):
            return port
    raise XmsError(f"No host port in {low}-{high} is free for {'/'.join(protocols)}.")


def _ip_json(*args: str) -> list[dict[str, object]]:
    try:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True, timeout=5).stdout
        data = json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return data if isinstance(data, list) else []


def host_address() -> str:
    """The IPv4 address of the interface that holds the default route (what the LAN reaches)."""
    routes = _ip_json("-4", "route", "show", "default")
    device = str(routes[0].get("dev", "")) if routes else ""
    if routes and routes[0].get("prefsrc"):
        return str(routes[0]["prefsrc"])
    for link in _ip_json("-4", "addr", "show", *(["dev", device] if device else [])):
        for addr in link.get("addr_info", []) or []:  # type: ignore[attr-defined]
            local = str(addr.get("local", ""))
            if local and not local.startswith("127."):
                return local
    return "127.0.0.1"


@dataclass(frozen=True)
class LocalAddresses:
    """The IPv4 addresses this network namespace delivers to itself (its `local` routing table)."""

    networks: tuple[ipaddress.IPv4Network, ...]

    @classmethod
    def read(cls) -> LocalAddresses:
        try:
            out = subprocess.run(
                ["ip", "-4", "route", "show", "table", "local", "type", "local"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        return cls(tuple(parse_local_routes(out)))

    def holds(self, address: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def parse_local_routes(text: str) -> list[ipaddress.IPv4Network]:
    """The networks of `ip -4 route show table local type local` ("local 127.0.0.0/8 dev lo ...")."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "local":
            try:
                out.append(ipaddress.IPv4Network(words[1], strict=False))
            except ValueError:
                continue
    return out


def listening_ports(proc_root: Path = Path("/proc")) -> dict[str, set[int]]:
    """Ports a process of this network namespace listens on, by protocol: TCP sockets in LISTEN, UDP sockets
    bound and not connected (a server's), from /proc/net/{tcp,tcp6,udp,udp6}."""
    out: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = (proc_root / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            try:
                port, remote_port = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            listening = fields[3] == "0A" if table.startswith("tcp") else remote_port == 0
            if listening and port:
                out[table[:3]].add(port)
    return out


def ephemeral_ports(proc_root: Path = Path("/proc")) -> tuple[int, int]:
    """The range the kernel (and the engine, for -P) picks local ports from."""
    try:
        low, high = (proc_root / "sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def split_cidr(cidr: str) -> tuple[str, int]:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise BadInput(f"{cidr!r} is not a network address: {exc}.") from None
    return str(network.network_address), network.prefixlen


def prefix_to_mask(prefix: int) -> str:
    return str(ipaddress.ip_network(f"0.0.0.0/{prefix}").netmask)
