"""The `sip` profile end to end: SIPp calls through the containerized Kamailio, media through its rtpengine.

Caller and callee are SIPp (Debian sip-tester), each in a network namespace the test creates, joined to
the host by a veth pair in a private /30 and routed to the container network through the host. The
caller plays SIPp's own G.711 A-law recording; the callee echoes every RTP packet back. Packets are
counted by netfilter counters inside each namespace, so the numbers come from neither SIPp nor rtpengine.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lab.peer_links import Peer, pick_block, sh

from tests.helpers import run_cli, wait_for
from tests.sip_calls import MEDIA_PORT, PCAP, SCENARIO, pcap_packets, sipp_stats

pytestmark = [pytest.mark.engine, pytest.mark.slow]


class Namespaces:
    """Peers in namespaces the test owns, and the host-side rules that let them reach the container network."""

    def __init__(self, container_subnet: str, within: str) -> None:
        self.container_subnet = container_subnet
        self.block = pick_block(within)
        self.token = secrets.token_hex(3)
        self.forward_chain = "DOCKER-USER" if self._chain_exists("DOCKER-USER") else "FORWARD"
        self.peers: list[Peer] = []
        self.rules: list[list[str]] = []

    @staticmethod
    def _chain_exists(chain: str) -> bool:
        return subprocess.run(["iptables", "-w", "-nL", chain], capture_output=True).returncode == 0

    def add(self, role: str) -> Peer:
        index = len(self.peers)
        subnet = list(self.block.subnets(new_prefix=30))[index]
        host_addr, peer_addr = (str(a) for a in list(subnet.hosts())[:2])
        netns = f"dxsip-{self.token}-{role}"
        host_if, peer_if = f"dxs{self.token}{role[0]}", "eth0"
        peer = Peer(netns, host_if, peer_addr)
        sh("ip", "netns", "add", netns)
        self.peers.append(peer)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", netns)
        sh("ip", "addr", "add", f"{host_addr}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", netns, "addr", "add", f"{peer_addr}/30", "dev", peer_if)
        sh("ip", "-n", netns, "link", "set", peer_if, "up")
        # The namespace's only way out: the container network, through the host.
        sh("ip", "-n", netns, "route", "add", self.container_subnet, "via", host_addr)
        # Docker's FORWARD policy drops what is neither published nor forwarded by a DNAT rule; media
        # sent straight to the container's own ports is neither.
        rule = [self.forward_chain, "-i", host_if, "-d", self.container_subnet, "-j", "ACCEPT"]
        sh("iptables", "-w", "-I", *rule)
        self.rules.append(rule)
        return peer

    def close(self) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-w", "-D", *rule], capture_output=True)
        for peer in self.peers:
            subprocess.run(["ip", "netns", "del", peer.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", peer.host_if], capture_output=True)


@pytest.fixture(scope="module")
def sip_image(docker_client: Any) -> str:
    result = run_cli("build", "--profile", "sip", "--if-missing", timeout=900)
    assert result.code == 0, result.err + result.out
    return "docker-xms/sip:latest"


@pytest.fixture(scope="module")
def sip_container(sip_image: str) -> Iterator[dict[str, Any]]:
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    name = f"sip-test-{secrets.token_hex(3)}"
    # The tech note's way: peers with a route to the container network, told the container's own address.
    started = run_cli(
        "run", "-c", "--profile", "sip", "--advertise", "container", "--name", name, "--json", timeout=300
    )
    assert started.code == 0, started.err
    try:
        yield json.loads(started.out)
    finally:
        run_cli("rm", "-f", name)


def bridge_subnet(docker_client: Any) -> str:
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"]
    return str(next(c["Subnet"] for c in config if ":" not in c["Subnet"]))


def numsessions(name: str) -> int:
    result = run_cli("shell", name, "--", "rtpengine-ctl", "list", "numsessions")
    assert result.code == 0, result.err
    match = re.search(r"Current sessions total: (\d+)", result.out)
    assert match, result.out
    return int(match.group(1))


def test_sip_profile_is_ready_and_answers_options(sip_container: dict[str, Any]) -> None:
    assert sip_container["ready"] is True
    assert sip_container["ready_state"].startswith("SIP OPTIONS answered 200")
    assert sip_container["rt_verified"] is True
    assert {
        (p["name"], p["protocol"], p["container"]) for p in sip_container["ports"] if p["role"] == "signalling"
    } == {
        ("sip", "udp", "5060"),
        ("sip-tcp", "tcp", "5060"),
    }
    # rtpengine's ng stays inside the container: Kamailio is its only client.
    assert not [p for p in sip_container["ports"] if p["name"] == "ng"]


T = TypeVar("T")


def sipp_call(
    caller: Peer,
    callee: Peer,
    proxy: tuple[str, int],
    tmp_path: Path,
    callee_scenario: Sequence[str],
    during: Callable[[], T],
) -> tuple[dict[str, int], T]:
    """One SIPp call through the proxy: the callee (`callee_scenario`: SIPp's built-in echo, or a scenario
    file) listening first, the caller playing the G.711 recording; both end without error. The caller's
    statistics, and what `during` gave while the call ran."""
    sipps: list[subprocess.Popen[str]] = []
    try:
        uas = callee.popen(
            "sipp", *callee_scenario, "-i", callee.address, "-p", "5060", "-mi", callee.address,
            "-mp", str(MEDIA_PORT), "-m", "1", "-nostdin", "-timeout", "60s", "-trace_err", "-error_file",
            str(tmp_path / "uas-errors.log"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        sipps.append(uas)
        time.sleep(0.5)
        stats_file = tmp_path / "uac-stats.csv"
        uac = caller.popen(
            "sipp", f"{callee.address}:5060", "-rsa", f"{proxy[0]}:{proxy[1]}", "-sf", str(SCENARIO),
            "-i", caller.address, "-p", "5060", "-mi", caller.address, "-mp", str(MEDIA_PORT), "-m", "1",
            "-nostdin", "-timeout", "60s", "-trace_stat", "-stf", str(stats_file), "-trace_err",
            "-error_file", str(tmp_path / "uac-errors.log"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        sipps.append(uac)
        seen = during()
        uac_code, uas_code = uac.wait(timeout=60), uas.wait(timeout=30)
        errors = "".join(p.read_text() for p in tmp_path.glob("*-errors.log"))
        assert (uac_code, uas_code) == (0, 0), errors or (uac.stderr.read() if uac.stderr else "")
        return sipp_stats(stats_file), seen
    finally:
        for sipp in sipps:
            sipp.kill()
            sipp.wait()


def sip_call(name: str, proxy: tuple[str, int], caller: Peer, callee: Peer, tmp_path: Path, what: str) -> None:
    """One SIPp call through the proxy: answered, its media echoed back, torn down, no session left."""
    expected = pcap_packets(PCAP)
    stats, during = sipp_call(
        caller,
        callee,
        proxy,
        tmp_path,
        ("-sn", "uas", "-rtp_echo"),
        lambda: wait_for(lambda: numsessions(name), timeout=8, interval=0.5, what="an rtpengine session"),
    )
    sent, echoed_back = caller.count("OUTPUT"), caller.count("INPUT")
    reached_callee, echoed = callee.count("INPUT"), callee.count("OUTPUT")
    wait_for(lambda: numsessions(name) == 0, timeout=10, what="no rtpengine session left")
    print(
        f"\nsip {what}: calls {stats['OutgoingCall(C)']}, successful {stats['SuccessfulCall(C)']}, "
        f"failed {stats['FailedCall(C)']}; rtpengine sessions during {during}, after 0; RTP packets: pcap "
        f"{expected}, caller sent {sent}, callee received {reached_callee}, callee echoed {echoed}, "
        f"caller received {echoed_back}"
    )
    assert (stats["OutgoingCall(C)"], stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == (1, 1, 0)
    assert during == 1
    assert (sent, reached_callee, echoed, echoed_back) == (expected, expected, expected, expected)


def test_a_call_through_the_proxy_is_answered_and_its_media_relayed_by_rtpengine(
    docker_client: Any, sip_container: dict[str, Any], tmp_path: Path
) -> None:
    name, proxy = sip_container["name"], sip_container["address"]
    spaces = Namespaces(bridge_subnet(docker_client), "10.200.0.0/16")
    try:
        caller, callee = spaces.add("a"), spaces.add("b")
        caller.run("iptables", "-w", "-A", "OUTPUT", "-p", "udp", "-d", proxy, "!", "--dport", "5060")
        caller.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "-s", proxy, "!", "--sport", "5060")
        callee.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(MEDIA_PORT))
        callee.run("iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--sport", str(MEDIA_PORT))

        sip_call(name, (proxy, 5060), caller, callee, tmp_path, "at the container's address")
    finally:
        spaces.close()


def test_a_caller_outside_the_allowed_networks_is_refused(
    docker_client: Any, sip_container: dict[str, Any], tmp_path: Path
) -> None:
    name, proxy = sip_container["name"], sip_container["address"]
    # 198.18.0.0/15 (RFC 2544, benchmarking) is in none of the profile's private ranges.
    spaces = Namespaces(bridge_subnet(docker_client), "198.18.0.0/15")
    try:
        caller = spaces.add("x")
        errors = tmp_path / "uac-errors.log"
        result = caller.run(
            "sipp", "192.0.2.1:5060", "-rsa", f"{proxy}:5060", "-sf", str(SCENARIO), "-i", caller.address,
            "-p", "5060", "-mi", caller.address, "-m", "1", "-nostdin", "-timeout", "20s",
            "-trace_err", "-error_file", str(errors),
        )  # fmt: skip
        assert result.returncode != 0
        assert "SIP/2.0 403 Forbidden" in errors.read_text()
        assert numsessions(name) == 0
    finally:
        spaces.close()
