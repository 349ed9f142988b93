"""Peers as remote machines: network namespaces joined to this host by veth pairs, for tests and benchmarks.

`Peer` is one namespace with one address. `Links` puts each peer on a /30 link of its own to the host and
gives the host one more address, the one a media server advertises, on a bridge without ports: so the
host's address on each peer's link differs from the advertised one, as on a host with several interfaces,
and no traffic leaves this machine. Every address comes from a block that no address or route of the host
touches.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
from dataclasses import dataclass
from typing import Any


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Peer:
    """A network namespace with one address, reached from the host through a veth pair."""

    netns: str
    host_if: str
    address: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True, timeout=timeout
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *args], text=True, **kwargs)

    def count(self, chain: str) -> int:
        """Packets the namespace's own counting rule in `chain` saw."""
        out = self.run("iptables", "-w", "-nvxL", chain).stdout
        rows = [line.split() for line in out.splitlines() if "udp" in line.split()]
        assert len(rows) == 1, out
        return int(rows[0][0])


def _taken_networks() -> list[ipaddress.IPv4Network]:
    found = []
    for line in sh("ip", "-4", "-o", "addr", "show").splitlines():
        found.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in sh("ip", "-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0]
        if re.fullmatch(r"[\d.]+(/\d+)?", first):
            found.append(ipaddress.ip_network(first, strict=False))
    return found


def pick_block(within: str) -> ipaddress.IPv4Network:
    """A /29 inside `within` that no address or route of the host touches: two /30s for two peers."""
    pool = ipaddress.ip_network(within)
    taken = _taken_networks()
    for _ in range(200):
        base = int(pool.network_address) + secrets.randbelow(pool.num_addresses // 8) * 8
        block = ipaddress.ip_network(f"{ipaddress.ip_address(base)}/29")
        if not any(block.overlaps(net) for net in taken):
            return block
    raise AssertionError(f"no free /29 found in {within}")


@dataclass(frozen=True)
class LinkPeer(Peer):
    # The host's address on this peer's link: the only host address the peer is given a route to.
    host_end: str


def _namespace(peer: LinkPeer, prefix: int, container_subnet: str, only_to: str = "") -> None:
    """The namespace's side of its veth pair (made by the caller): its address, and a default route to the
    host's end of the link, the container network unreachable, as from another machine; with `only_to`, a
    route to that one address instead."""
    sh("ip", "-n", peer.netns, "link", "set", "lo", "up")
    sh("ip", "-n", peer.netns, "addr", "add", f"{peer.address}/{prefix}", "dev", "eth0")
    sh("ip", "-n", peer.netns, "link", "set", "eth0", "up")
    if only_to:
        sh("ip", "-n", peer.netns, "route", "add", f"{only_to}/32", "via", peer.host_end)
        return
    sh("ip", "-n", peer.netns, "route", "add", "default", "via", peer.host_end)
    sh("ip", "-n", peer.netns, "route", "add", "unreachable", container_subnet)


def _link(prefix: str, token: str, role: str, subnet: ipaddress.IPv4Network) -> LinkPeer:
    """A peer on a /30 link of its own: the veth pair made, the host's end addressed and up."""
    host_end, address = (str(a) for a in list(subnet.hosts())[:2])
    peer = LinkPeer(f"{prefix}-{token}-{role}", f"{prefix[:3]}{token}{role[0]}", address, host_end)
    _veth(peer)
    sh("ip", "addr", "add", f"{host_end}/30", "dev", peer.host_if)
    sh("ip", "link", "set", peer.host_if, "up")
    return peer


def _count_rtp(peer: LinkPeer, source: str, port: int) -> None:
    """RTP in (from `source`, and from anywhere) and out, counted by the kernel in the peer's namespace."""
    peer.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "-s", source, "--dport", str(port))
    peer.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(port))
    peer.run("iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--sport", str(port))


def _veth(peer: LinkPeer) -> None:
    sh("ip", "netns", "add", peer.netns)
    sh("ip", "link", "add", peer.host_if, "type", "veth", "peer", "name", "eth0", "netns", peer.netns)


def _close(peers: list[LinkPeer], bridge: str = "") -> None:
    for peer in peers:
        subprocess.run(["ip", "netns", "del", peer.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", peer.host_if], capture_output=True)
    if bridge:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def _bridge(name: str, address: str) -> None:
    sh("ip", "link", "add", name, "type", "bridge")
    sh("ip", "addr", "add", address, "dev", name)
    sh("ip", "link", "set", name, "up")


class Outside:
    """Peers on one LAN of the host's (a bridge with one host address on a private /29): their only way out
    is that address, which the media server advertises."""

    def __init__(self, container_subnet: str, within: str = "10.201.0.0/16", media_port: int = 6000) -> None:
        self.container_subnet = container_subnet
        self.media_port = media_port
        self.block = pick_block(within)
        self.token = secrets.token_hex(3)
        self.peers: list[LinkPeer] = []
        self.bridge = f"dxob{self.token}"
        self.hosts = [str(a) for a in self.block.hosts()]
        self.host_address = self.hosts[0]
        _bridge(self.bridge, f"{self.host_address}/{self.block.prefixlen}")

    def add(self, role: str) -> LinkPeer:
        address = self.hosts[1 + len(self.peers)]
        peer = LinkPeer(f"dxout-{self.token}-{role}", f"dxo{self.token}{role[0]}", address, self.host_address)
        self.peers.append(peer)
        _veth(peer)
        sh("ip", "link", "set", peer.host_if, "master", self.bridge)
        sh("ip", "link", "set", peer.host_if, "up")
        _namespace(peer, self.block.prefixlen, self.container_subnet)
        # RTP in and out of the namespace, counted by the kernel.
        peer.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(self.media_port))
        peer.run("iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--sport", str(self.media_port))
        return peer

    def close(self) -> None:
        _close(self.peers, self.bridge)


class Links:
    """Peers on links of their own, and an advertised address on a bridge of the test's without ports."""

    def __init__(self, container_subnet: str, within: str = "10.202.0.0/16", media_port: int = 6000) -> None:
        self.media_port = media_port
        self.token = secrets.token_hex(3)
        self.container_subnet = container_subnet
        self.peers: list[LinkPeer] = []
        # The advertised address: the first of a free block, on a bridge that holds it and nothing else.
        self.bridge = f"dxad{self.token}"
        self.advertised = str(next(pick_block(within).hosts()))
        _bridge(self.bridge, f"{self.advertised}/32")
        # The peers' links: a /30 each, in another free block.
        self.spare = iter(pick_block(within).subnets(new_prefix=30))

    def add(self, role: str, media_port: int | None = None) -> LinkPeer:
        peer = _link("dxlink", self.token, role, next(self.spare))
        self.peers.append(peer)
        _namespace(peer, 30, self.container_subnet)
        _count_rtp(peer, self.advertised, media_port if media_port is not None else self.media_port)
        return peer

    def close(self) -> None:
        _close(self.peers, self.bridge)


def json_outputs(*processes: subprocess.Popen[str], timeout: float) -> list[Any]:
    """What each process (a leg run in its namespace) printed as JSON, once every one has exited 0."""
    done = [process.communicate(timeout=timeout) for process in processes]
    assert all(process.returncode == 0 for process in processes), "".join(err for _, err in done)
    return [json.loads(out) for out, _ in done]


class ToAddress:
    """Peers on links of their own whose only route is to one address (a lab node's, on a network of this
    host's engine), through this host: as phones elsewhere that reach a node at that address alone.

    The host's FORWARD chain drops what goes to an engine's network unless the engine published it; the
    peers' traffic to and from the address is let through by rules of the peers' own (removed with them)."""

    def __init__(self, target: str, within: str = "10.203.0.0/16", media_port: int = 6000) -> None:
        self.target = target
        self.media_port = media_port
        self.token = secrets.token_hex(3)
        self.peers: list[LinkPeer] = []
        self.rules: list[list[str]] = []
        self.spare = iter(pick_block(within).subnets(new_prefix=30))
        exists = subprocess.run(["iptables", "-w", "-nL", "DOCKER-USER"], capture_output=True).returncode == 0
        self.forward_chain = "DOCKER-USER" if exists else "FORWARD"

    def add(self, role: str) -> LinkPeer:
        peer = _link("dxnode", self.token, role, next(self.spare))
        self.peers.append(peer)
        _namespace(peer, 30, "", only_to=self.target)
        # Forwarded both ways, and the target's packets to a peer left as they are: the engine masquerades
        # what its network sends elsewhere, which a routed network between the peers and the node does not.
        for rule in (
            [self.forward_chain, "-i", peer.host_if, "-d", self.target, "-j", "ACCEPT"],
            [self.forward_chain, "-o", peer.host_if, "-s", self.target, "-j", "ACCEPT"],
            ["-t", "nat", "POSTROUTING", "-o", peer.host_if, "-s", self.target, "-j", "RETURN"],
        ):
            table = rule[:2] if rule[0] == "-t" else []
            sh("iptables", "-w", *table, "-I", *rule[len(table) :])
            self.rules.append(rule)
        _count_rtp(peer, self.target, self.media_port)
        return peer

    def close(self) -> None:
        for rule in self.rules:
            table = rule[:2] if rule[0] == "-t" else []
            subprocess.run(["iptables", "-w", *table, "-D", *rule[len(table) :]], capture_output=True)
        _close(self.peers)
