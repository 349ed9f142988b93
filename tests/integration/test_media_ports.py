"""Media ports at scale: real RTP through the forwarded host ports in each strategy, and no rule left behind.

Media is sent to 127.0.0.1 at the host port that the run summary maps to the container port rtpengine put
into its SDP, so each test goes through what a client outside would use: the engine's proxies (publish),
one DNAT rule per range (dnat) or host networking (host). Traffic goes only to 127.0.0.0/8, this host's
docker0 gateway address and containers these tests start. Containers are named ``mp-*``.

Other users may run containers on the same engine meanwhile: netfilter is compared only on docker-xms
lines, leaving out rules that belong to containers these tests did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from lab.rtpstats import StreamStats, stream_stats

from docker_xms.adapters.hostproc import pids_named
from docker_xms.adapters.rtp import (
    NgClient,
    NgError,
    exchange,
    open_call,
    udp_socket,
)
from docker_xms.domain import ports as port_plans
from docker_xms.domain.labels import host_ranges_from_labels
from tests.helpers import TEST_LABEL, run_cli, wait_for
from tests.host_state import one_to_one_holder

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PACKETS = 150  # 3 s of 20 ms packets
MIN_RECEIVED = -(-PACKETS * 95 // 100)  # 95 %, rounded up
CYCLES = 100
ONE_TO_ONE_BUSY = "already runs with 1:1 host ports"
_COUNTERS = re.compile(r"\s*\[\d+:\d+\]")
_OWNER = re.compile(r"docker-xms:([0-9a-f]{12}):")


def _name(purpose: str) -> str:
    return f"mp-{purpose}-{os.getpid()}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("docker-xms run needs root")


@pytest.fixture(scope="module")
def gateway(docker_client: Any) -> str:
    """docker0's address on this host, read from the interface itself.

    The engine's bridge network leaves its IPAM gateway out after some restarts; the interface always
    has the address.
    """
    done = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True, check=False
    )
    match = re.search(r"inet ([0-9.]+)/", done.stdout)
    assert match, f"docker0 has no IPv4 address: {done.stdout or done.stderr}"
    return match.group(1)


# --- running through the CLI ---------------------------------------------------------------------------


def run_json(*args: str, wait_one_to_one: float = 0.0) -> dict[str, Any]:
    """`docker-xms run ... --json`; in 1:1 mode waits while another user's 1:1 container holds the host."""
    deadline = time.monotonic() + wait_one_to_one
    while True:
        result = run_cli("run", *args, "--json", timeout=300)
        if result.code == 0:
            return dict(json.loads(result.out))
        if ONE_TO_ONE_BUSY in result.err:
            holder = one_to_one_holder(docker.from_env())
            if holder is not None:
                pytest.skip(f"{holder}, which these tests did not start, holds this host's 1:1 ports")
            if time.monotonic() < deadline:
                time.sleep(2)
                continue
        if "--ports" in args and "-c" not in args and "is already in use" in result.err:
            pytest.skip(f"a 1:1 host port is held by something these tests did not start: {result.err.strip()}")
        raise AssertionError(f"docker-xms run {' '.join(args)} failed ({result.code}): {result.err}{result.out}")


def remove(name: str) -> None:
    result = run_cli("rm", "-f", name, timeout=120)
    assert result.code == 0 or "There is no container" in result.err, result.err + result.out


def host_port(summary: dict[str, Any], container_port: int) -> int:
    """The host port the summary's media rows map a container media port to."""
    for row in summary["media"]:
        if row["start"] <= container_port <= row["end"]:
            return int(row["host_start"]) + container_port - int(row["start"])
    raise AssertionError(f"container port {container_port} is in none of the media ranges {summary['media']}")


def port_row(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in summary["ports"] if row["name"] == name)


# --- RTP through rtpengine ------------------------------------------------------------------------------


@dataclass
class Relayed:
    to_a: StreamStats
    to_b: StreamStats
    sent: tuple[int, int]
    container_ports: tuple[int, int]
    host_ports: tuple[int, int]
    # The address rtpengine put into its SDP (where its media sockets are bound).
    advertised: str


def relay_call(
    summary: dict[str, Any], ng_at: tuple[str, int], sdp_ip: str, bind_ip: str, direction: list[str] | None = None
) -> Relayed:
    """Offer/answer two legs, then stream both ways through 127.0.0.1 at the forwarded host ports."""
    with (
        udp_socket(bind_ip) as leg_a,
        udp_socket(bind_ip) as leg_b,
        NgClient(*ng_at, timeout=1.0, attempts=5) as ng,
    ):
        # Each leg is received where it sends from: the same socket, whatever rtpengine learns.
        options: dict[str, Any] = {"direction": direction} if direction else {}
        call = open_call(ng, leg_a, leg_b, sdp_ip, **options)
        advertised, b_port = call.b_sends_to
        a_port = call.a_sends_to[1]
        b_sends_to = ("127.0.0.1", host_port(summary, b_port))
        a_sends_to = ("127.0.0.1", host_port(summary, a_port))
        try:
            done = exchange(leg_a, leg_b, a_sends_to, b_sends_to, PACKETS)
            to_b = stream_stats(done.at_b, origin=done.sent_by_a.origin, sent=PACKETS)
            to_a = stream_stats(done.at_a, origin=done.sent_by_b.origin, sent=PACKETS)
        finally:
            with contextlib.suppress(NgError):
                ng.delete(call.call_id, call.from_tag)
    return Relayed(
        to_a,
        to_b,
        (done.sent_by_a.sent, done.sent_by_b.sent),
        (a_port, b_port),
        (a_sends_to[1], b_sends_to[1]),
        advertised,
    )


def check_relayed(strategy: str, relayed: Relayed) -> None:
    for direction, stats in (("A->B", relayed.to_b), ("B->A", relayed.to_a)):
        delay = stats.delay_percentiles() if stats.received else None
        print(
            f"\n{strategy} {direction}: received {stats.received}/{PACKETS}, jitter {stats.jitter_ms:.3f} ms, "
            + (f"delay ms p50 {delay.p50:.3f} p99 {delay.p99:.3f} " if delay else "")
            + f"(container ports {relayed.container_ports}, host ports {relayed.host_ports})"
        )
        assert stats.received >= MIN_RECEIVED, f"{strategy} {direction}: {stats}"
        assert stats.duplicates == 0, f"{strategy} {direction}"
    assert relayed.sent == (PACKETS, PACKETS)


def wait_ng(host: str, port: int) -> None:
    def pong() -> bool:
        try:
            with NgClient(host, port, timeout=0.5, attempts=1) as ng:
                return ng.ping()
        except NgError:
            return False

    wait_for(pong, timeout=60, what=f"rtpengine to answer ng at {host}:{port}")


@pytest.fixture
def container_name() -> Iterator[list[str]]:
    """Names to `docker-xms rm -f` whatever happens."""
    names: list[str] = []
    yield names
    for name in names:
        remove(name)


@pytest.mark.parametrize(
    ("strategy", "args"),
    [
        pytest.param("publish", ("-c", "--ports", "publish", "--media-ports", "20"), id="publish-c"),
        pytest.param("dnat", ("-c", "--ports", "dnat"), id="dnat-c"),
        pytest.param("dnat", ("--ports", "dnat"), id="dnat-1to1"),
    ],
)
def test_rtp_through_forwarded_bridge_ports(
    rtpengine_image: str, gateway: str, container_name: list[str], strategy: str, args: tuple[str, ...]
) -> None:
    name = _name(strategy)
    container_name.append(name)
    one_to_one = "-c" not in args
    summary = run_json(*args, "--name", name, wait_one_to_one=180 if one_to_one else 0)
    assert summary["strategy"] == strategy
    assert summary["mode"] == ("one-to-one" if one_to_one else "container-address")
    ng = port_row(summary, "ng")
    if strategy == "dnat" and not one_to_one:
        ng_at = (summary["address"], int(ng["container"]))
    else:
        assert ng["host"], summary["ports"]
        ng_at = ("127.0.0.1", int(ng["host"]))
    if one_to_one:
        assert [(m["host_start"], m["host_end"]) for m in summary["media"]] == [(30000, 30999)]
    else:
        # The server is told its host range: forwarding changes the address of a media port, not its number.
        assert all(m["host_start"] == m["start"] for m in summary["media"]), summary["media"]
    wait_ng(*ng_at)
    # rtpengine inside the container reaches this host at the bridge gateway; bound on 0.0.0.0 the legs also
    # take the relayed stream when it comes back through the proxy or the masquerade to 127.0.0.1.
    relayed = relay_call(summary, ng_at, sdp_ip=gateway, bind_ip="0.0.0.0")
    check_relayed(f"{strategy}{'' if one_to_one else ' -c'}", relayed)


def _held_host_ranges() -> list[tuple[int, int]]:
    """The host media ranges the engine's managed containers hold, running or stopped."""
    client = docker.from_env()
    try:
        return [
            r
            for c in client.containers.list(all=True, filters={"label": "io.docker-xms.managed=true"})
            for r in host_ranges_from_labels(c.labels)
        ]
    finally:
        client.close()


def _profile_clear_of_held_ranges(folder: Path) -> str:
    """The rtpengine profile with a media range that no container on this host holds.

    Host networking gives each -c container a slice of the profile's range; a server the suite did not
    start (the demo, stopped for the run, keeps its 1:1 range) may hold all of it.
    """
    held = _held_host_ranges()
    start = next(
        base for base in range(31000, 10000, -1000) if not any(base <= high and low <= base + 999 for low, high in held)
    )
    text = (Path(port_plans.__file__).parent.parent / "profiles/rtpengine.toml").read_text()
    assert 'range = "30000-30999"' in text
    text = text.replace('range = "30000-30999"', f'range = "{start}-{start + 999}"')
    text = text.replace('name = "rtpengine"', 'name = "rtpengine-host-test"', 1)
    path = folder / "rtpengine-host-test.toml"
    path.write_text(text)
    return str(path)


def test_rtp_through_host_networking(rtpengine_image: str, container_name: list[str], tmp_path: Path) -> None:
    name = _name("host")
    container_name.append(name)
    profile = _profile_clear_of_held_ranges(tmp_path)
    summary = run_json("-c", "--ports", "host", "--media-ports", "100", "--name", name, "--profile", profile)
    assert summary["strategy"] == "host"
    assert [m["host_start"] - m["start"] for m in summary["media"]] == [0] * len(summary["media"])
    assert sum(m["end"] - m["start"] + 1 for m in summary["media"]) == 100
    ng_at = ("127.0.0.1", 2223)
    wait_ng(*ng_at)
    # With host networking the demo's default interface ("pub") is the host's LAN address; its "lo"
    # interface binds media on 127.0.0.1, which is where this test may send.
    relayed = relay_call(summary, ng_at, sdp_ip="127.0.0.1", bind_ip="127.0.0.1", direction=["lo", "lo"])
    assert relayed.advertised == "127.0.0.1"
    check_relayed("host -c", relayed)


# --- no rule left behind --------------------------------------------------------------------------------


def xms_rules(ours: set[str]) -> dict[str, list[str]]:
    """docker-xms's lines of the nat and filter tables, without counters and without other users' rules."""
    tables: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        done = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, timeout=60, check=True)
        lines = []
        for line in done.stdout.splitlines():
            if "docker-xms" not in line and "DOCKER-XMS" not in line:
                continue
            owner = _OWNER.search(line)
            if owner is not None and owner.group(1) not in ours:
                continue
            lines.append(_COUNTERS.sub("", line).rstrip())
        tables[table] = lines
    return tables


def owned_lines(rules: dict[str, list[str]], cid: str) -> list[str]:
    return [line for lines in rules.values() for line in lines if f"docker-xms:{cid[:12]}:" in line]


@pytest.fixture
def chains_exist(rtpengine_image: str) -> None:
    """The chains and jumps exist before the first snapshot: they are created once and kept."""
    if any("DOCKER-XMS" in line for lines in xms_rules(set()).values() for line in lines):
        return
    name = _name("warmup")
    try:
        run_json("-c", "--ports", "dnat", "--media-ports", "10", "--no-wait", "--name", name)
    finally:
        remove(name)


def test_start_stop_rm_leave_no_rule(chains_exist: None, container_name: list[str]) -> None:
    name = _name("stop")
    container_name.append(name)
    before = xms_rules(set())
    summary = run_json("-c", "--ports", "dnat", "--no-wait", "--name", name)
    cid = summary["id"][:12]
    ours = {cid}
    running = owned_lines(xms_rules(ours), cid)
    # One range: its DNAT, its masquerade for 127.0.0.1, its filter ACCEPT, and the SNAT that sends its media
    # out from the advertised address (the host's, by default).
    assert len(running) == 4, running
    assert len([line for line in running if "-j SNAT" in line]) == 1, running
    stopped = run_cli("stop", name, timeout=120)
    assert stopped.code == 0, stopped.err
    assert owned_lines(xms_rules(ours), cid) == []
    assert xms_rules(ours) == before
    removed = run_cli("rm", "-f", name, timeout=120)
    assert removed.code == 0, removed.err
    assert xms_rules(ours) == before


def test_hundred_start_rm_cycles_leave_no_rule(chains_exist: None) -> None:
    before = xms_rules(set())
    ours: set[str] = set()
    started = time.monotonic()
    for cycle in range(CYCLES):
        name = _name(f"cycle{cycle}")
        try:
            summary = run_json("-c", "--ports", "dnat", "--media-ports", "10", "--no-wait", "--name", name)
            ours.add(summary["id"][:12])
        finally:
            remove(name)
    took = time.monotonic() - started
    print(f"\n{CYCLES} start/rm cycles (-c --ports dnat --media-ports 10 --no-wait): {took:.1f} s")
    after = xms_rules(ours)
    assert len(ours) == CYCLES
    assert after == before


# --- XMS's full port set with one rule per range ---------------------------------------------------------


def docker_proxies() -> dict[int, str]:
    """docker-proxy processes: pid to command line."""
    out = {}
    for pid in pids_named("docker-proxy"):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return out


def _option(cmdline: str, name: str) -> str:
    words = cmdline.split()
    return words[words.index(name) + 1] if name in words[:-1] else ""


def test_xms_port_set_is_two_rules_and_no_media_proxies(
    docker_client: Any, rtpengine_image: str, container_name: list[str]
) -> None:
    name = _name("xms")
    container_name.append(name)
    proxies_before = docker_proxies()
    started = time.monotonic()
    summary = run_json(
        "--profile", "xms", "-i", rtpengine_image, "--ports", "dnat", "--no-wait", "--name", name, wait_one_to_one=180
    )
    took = time.monotonic() - started
    proxies_after = docker_proxies()
    media = summary["media"]
    media_count = sum(m["end"] - m["start"] + 1 for m in media)
    print(f"\nxms 1:1 dnat ({media_count} media ports, {len(media)} ranges): up in {took:.2f} s")
    assert summary["strategy"] == "dnat"
    assert media_count == 4498
    assert [(m["start"], m["end"]) for m in media] == [(49152, 53152), (57344, 57840)]

    cid = summary["id"][:12]
    rules = owned_lines(xms_rules({cid}), cid)
    dnat = [line for line in rules if "-j DNAT" in line]
    assert len(dnat) == len(media) == 2, rules
    for m in media:
        assert any(f"--dport {m['host_start']}:{m['host_end']}" in line for line in dnat), (m, dnat)
    # Per range: DNAT, masquerade for 127.0.0.1, filter ACCEPT, and the SNAT from the advertised address.
    assert len(rules) == 4 * len(media), rules

    new = {pid: cmd for pid, cmd in proxies_after.items() if pid not in proxies_before}
    address = summary["address"]
    its = {pid: cmd for pid, cmd in new.items() if _option(cmd, "-container-ip") == address}
    signalling = [row for row in summary["ports"] if row["role"] != "media"]
    print(
        f"docker-proxy processes: {len(proxies_before)} before, {len(proxies_after)} after; "
        f"{len(its)} for this container's {len(signalling)} signalling/web ports"
    )
    # One per published port and address family at most; none for a media port.
    assert len(its) <= 2 * len(signalling), sorted(its.values())
    media_ports = [(m["start"], m["end"]) for m in media]
    for cmd in its.values():
        port = int(_option(cmd, "-container-port") or 0)
        assert not any(low <= port <= high for low, high in media_ports), cmd
    assert len(proxies_after) - len(proxies_before) < 100, "media ports got proxies"

    # XMS's RTP range lies inside the kernel's default ephemeral range: inside the container it is moved off.
    assert any("Ephemeral ports inside the container are 32768-49151" in note for note in summary["notes"])
    code, out = docker_client.containers.get(summary["id"]).exec_run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
    assert code == 0
    assert out.decode().split() == ["32768", "49151"]


# --- a host port the engine published inside a 1:1 range ---------------------------------------------


def test_a_port_the_engine_published_is_cut_out_of_a_one_to_one_range(
    docker_client: Any, busybox_image: str, rtpengine_image: str, container_name: list[str]
) -> None:
    """Another container's engine-published port inside the media range keeps its packets, and gets them."""
    hole = 30500
    plain = docker_client.containers.run(
        busybox_image,
        ["/bin/busybox", "sleep", "600"],
        detach=True,
        name=_name("plain"),
        ports={"7000/udp": hole},
        labels={TEST_LABEL: "carve"},
    )
    try:
        name = _name("carve")
        container_name.append(name)
        summary = run_json("--ports", "dnat", "--no-wait", "--name", name, wait_one_to_one=180)
        cid = summary["id"][:12]

        def dnat_ranges() -> list[str]:
            lines = [line for line in owned_lines(xms_rules({cid}), cid) if "-j DNAT" in line]
            return sorted(line.split("--dport ")[1].split()[0] for line in lines)

        assert dnat_ranges() == ["30000:30499", "30501:30999"]

        # A listener in the plain container's network namespace: a datagram to the hole on 127.0.0.1 goes
        # through the engine's proxy to it, not to rtpengine.
        plain.reload()
        listener = subprocess.Popen(
            [
                "nsenter",
                f"--net=/proc/{plain.attrs['State']['Pid']}/ns/net",
                sys.executable,
                "-c",
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 7000)); "
                "print('ready', flush=True); s.settimeout(20); print(s.recvfrom(100)[0].decode(), flush=True)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(5):  # UDP: a few tries while the proxy sets up its flow
                sender.sendto(b"carved", ("127.0.0.1", hole))
                time.sleep(0.2)
        out, _ = listener.communicate(timeout=30)
        assert out.strip() == "carved"

        plain.remove(force=True)
        mended = run_cli("rt", "rebalance", timeout=120)
        assert mended.code == 0, mended.err
        assert dnat_ranges() == ["30000:30999"]
    finally:
        with contextlib.suppress(Exception):
            plain.remove(force=True)
