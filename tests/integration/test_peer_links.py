"""Calls from peers on links of their own, as on a host with several interfaces, that send as phones do.

Each peer is a network namespace on its own /30 link to the host, so the host's address on each link
differs from the address the media server advertises. That address sits on a bridge the test makes (with
no port: no traffic leaves this machine through it); each peer's only route is its link's host address.
The peers send to the address and port their SDP names from the start, whether or not anything came
from there yet: in half the calls the caller's first packet is relayed to the callee before the callee
sends its own.

Without the reverse of the DNAT, the relay's first packet to a peer leaves through the engine's
MASQUERADE from the host's address on that peer's link, and conntrack then moves the peer's own packets,
sent to the advertised address and the SDP's port, to another port of the container (measured before the
change: 6 of 12 calls one-way). With it, both are one flow, and every packet a peer gets comes from the
advertised address and the port its SDP named.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab.peer_links import LinkPeer, Links, json_outputs

from tests.helpers import (
    AGENT_ARGV,
    LoggedAgent,
    agent_for_a_test,
    compose_replica,
    conntrack_drops,
    renamed_profile_env,
    wait_for,
)
from tests.integration.test_media_ports import port_row, run_json
from tests.integration.test_outside import media_of, ng_client, sdp_for
from tests.integration.test_sip_profile import bridge_subnet, numsessions, sipp_call
from tests.sip_calls import MEDIA_PORT, PCAP, UAS_SCENARIO, calls_from_outside, counters, pcap_packets

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PACKETS = 50
CALLS = 50
# Calls at once: each leg's process serves one socket per call of a batch.
BATCH = 10
FIRST_PORT = 20000

# One leg of a batch of calls, run inside its namespace. Per call: bind the port its SDP named; if it
# speaks first, send PACKETS RTP packets 20 ms apart from the start; else wait for the first packet from
# the relay (at most 2 s), then send. Every datagram received is recorded by its source. Ends when every
# call has sent all and got all, or 1.5 s after the last packet sent.
LEG = r"""
import json, selectors, socket, struct, sys, time
calls, at, packets = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
state = []
for c in calls:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((c["bind"], c["port"]))
    s.setblocking(False)
    st = {"sock": s, "target": tuple(c["target"]), "first": c["first"], "sent": 0, "got": 0, "sources": {},
          "start": None, "ssrc": (c["port"] * 7919) & 0xFFFFFFFF}
    sel.register(s, selectors.EVENT_READ, st)
    state.append(st)
time.sleep(max(0.0, at - time.time()))
begin = time.monotonic()
for st in state:
    if st["first"]:
        st["start"] = begin
last_sent = None
while True:
    now = time.monotonic()
    for st in state:
        if st["start"] is None and now - begin > 2.0:
            st["start"] = now
        if st["start"] is not None and st["sent"] < packets and now >= st["start"] + 0.02 * st["sent"]:
            n = st["sent"]
            st["sock"].sendto(struct.pack("!BBHII", 0x80, 0, n, n * 160, st["ssrc"]) + bytes(160), st["target"])
            st["sent"] += 1
            last_sent = now
    for key, _ in sel.select(timeout=0.002):
        st = key.data
        while True:
            try:
                _, source = st["sock"].recvfrom(2048)
            except BlockingIOError:
                break
            st["got"] += 1
            k = "%s:%d" % source
            st["sources"][k] = st["sources"].get(k, 0) + 1
            if st["start"] is None:
                st["start"] = time.monotonic()
    done = all(st["sent"] == packets for st in state)
    if done and (all(st["got"] >= packets for st in state) or time.monotonic() - last_sent > 1.5):
        break
print(json.dumps([{"sent": st["sent"], "got": st["got"], "sources": st["sources"]} for st in state]))
"""


@pytest.fixture
def links(docker_client: Any) -> Iterator[Links]:
    spaces = Links(bridge_subnet(docker_client), media_port=MEDIA_PORT)
    try:
        yield spaces
    finally:
        spaces.close()


def _name(kind: str) -> str:
    # "rtp-": a prefix the suite knows as its own when it looks for a 1:1 container it did not start.
    return f"rtp-link-{kind}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Call:
    call_id: str
    port: int
    caller_first: bool
    # Where each leg sends: the address and port the other side's SDP, as rewritten by rtpengine, names.
    caller_to: tuple[str, int]
    callee_to: tuple[str, int]


def offer_answer(ng_port: int, index: int, caller: LinkPeer, callee: LinkPeer) -> Call:
    call_id, port = f"link-{secrets.token_hex(4)}", FIRST_PORT + 2 * index
    offered = ng_client(
        ng_port, "offer", f"--call-id={call_id}", "--from-tag=caller", "--trust-address",
        f"--sdp={sdp_for(caller.address, port)}",
    )  # fmt: skip
    answered = ng_client(
        ng_port, "answer", f"--call-id={call_id}", "--from-tag=caller", "--to-tag=callee", "--trust-address",
        f"--sdp={sdp_for(callee.address, port)}",
    )  # fmt: skip
    return Call(call_id, port, index % 2 == 0, media_of(answered), media_of(offered))


def run_legs(caller: LinkPeer, callee: LinkPeer, calls: list[Call]) -> tuple[list[dict[str, Any]], ...]:
    at = time.time() + 1.0

    def leg(peer: LinkPeer, caller_side: bool) -> subprocess.Popen[str]:
        plan = [
            {
                "bind": peer.address,
                "port": c.port,
                "target": list(c.caller_to if caller_side else c.callee_to),
                "first": c.caller_first == caller_side,
            }
            for c in calls
        ]
        return peer.popen(
            sys.executable,
            "-c",
            LEG,
            json.dumps(plan),
            str(at),
            str(PACKETS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    at_caller, at_callee = json_outputs(leg(caller, True), leg(callee, False), timeout=60)
    return at_caller, at_callee


@pytest.mark.parametrize("mode", ["1:1", "-c"])
def test_calls_from_peers_on_links_of_their_own_carry_both_directions_from_the_advertised_address(
    rtpengine_image: str, links: Links, names: list[str], mode: str
) -> None:
    if shutil.which("rtpengine-ng-client") is None:
        pytest.fail("rtpengine-ng-client is not installed: apt-get install rtpengine-utils")
    caller, callee = links.add("a"), links.add("b")
    assert len({caller.host_end, callee.host_end, links.advertised}) == 3
    name = _name("ng")
    names.append(name)
    args = ("-c",) if mode == "-c" else ()
    summary = run_json(
        *args, "--ports", "dnat", "--advertise", links.advertised, "--name", name,
        wait_one_to_one=180 if not args else 0,
    )  # fmt: skip
    assert (summary["advertise"], summary["advertise_choice"]) == (links.advertised, "address")
    (media,) = summary["media"]
    ng_port = int(port_row(summary, "ng")["host"])

    results: list[tuple[Call, dict[str, Any], dict[str, Any]]] = []
    for first in range(0, CALLS, BATCH):
        calls = [offer_answer(ng_port, i, caller, callee) for i in range(first, first + BATCH)]
        try:
            at_caller, at_callee = run_legs(caller, callee, calls)
        finally:
            for call in calls:
                ng_client(ng_port, "delete", f"--call-id={call.call_id}", "--from-tag=caller")
        results += zip(calls, at_caller, at_callee, strict=True)

    lines, bad = [], []
    for call, a, b in results:
        for address, port in (call.caller_to, call.callee_to):
            assert address == links.advertised
            assert media["host_start"] <= port <= media["host_end"]
        # Each leg hears only the advertised address, from the port its own SDP answer named.
        expected_a = {f"{call.caller_to[0]}:{call.caller_to[1]}"}
        expected_b = {f"{call.callee_to[0]}:{call.callee_to[1]}"}
        ok = (
            a["got"] >= PACKETS - 2
            and b["got"] >= PACKETS - 2
            and set(a["sources"]) == expected_a
            and set(b["sources"]) == expected_b
        )
        first = "caller" if call.caller_first else "callee"
        lines.append(
            f"{call.call_id} {first} first: caller got {a['got']} from {a['sources']}, "
            f"callee got {b['got']} from {b['sources']}"
        )
        if not ok:
            bad.append(lines[-1])
    firsts = sum(1 for call, _, _ in results if call.caller_first)
    print(
        f"\nrtpengine {mode}, advertised {links.advertised}, peers' links {caller.host_end} and {callee.host_end}: "
        f"{len(results) - len(bad)} of {len(results)} calls with >= {PACKETS - 2} of {PACKETS} packets both ways, "
        f"all from the advertised address and the SDP's port ({firsts} with the caller first)"
    )
    assert len(results) == CALLS
    assert firsts == CALLS // 2
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("mode", ["1:1", "-c"])
def test_a_sip_call_whose_callee_sends_from_the_start_is_heard_both_ways(
    sip_image: str, links: Links, names: list[str], tmp_path: Path, mode: str
) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    caller, callee = links.add("a"), links.add("b")
    name = _name("sip")
    names.append(name)
    args = ("-c",) if mode == "-c" else ()
    summary = run_json(
        *args, "--profile", "sip", "--ports", "dnat", "--advertise", links.advertised, "--name", name,
        wait_one_to_one=180 if not args else 0,
    )  # fmt: skip
    assert summary["ready"] is True, summary["ready_state"]
    sip_port = int(port_row(summary, "sip")["host"])
    sip_call_heard_both_ways(caller, callee, name, (links.advertised, sip_port), tmp_path, f"sip {mode}")


def sip_call_heard_both_ways(
    caller: LinkPeer, callee: LinkPeer, name: str, proxy: tuple[str, int], tmp_path: Path, what: str
) -> None:
    """One SIPp call through the proxy at `proxy` (the advertised address and the signalling's host port) of
    container `name`, whose callee plays its own recording from the ACK on to the address its SDP names (no
    echo): answered, every packet both ways, from the advertised address only."""
    played = pcap_packets(PCAP)
    dropped_before = conntrack_drops()
    stats, _ = sipp_call(caller, callee, proxy, tmp_path, ("-sf", str(UAS_SCENARIO)), lambda: None)
    (caller_from_advertised, caller_in), (callee_from_advertised, callee_in) = (
        counters(caller, "INPUT"),
        counters(callee, "INPUT"),
    )
    caller_out, callee_out = counters(caller, "OUTPUT")[0], counters(callee, "OUTPUT")[0]
    clashes = conntrack_drops() - dropped_before
    wait_for(lambda: numsessions(name) == 0, timeout=10, what="no rtpengine session left")
    seen = (
        f"{what}, advertised {proxy[0]}:{proxy[1]}, callee sending from the start: calls "
        f"{stats['SuccessfulCall(C)']} of {stats['OutgoingCall(C)']}; pcap {played} packets; caller sent "
        f"{caller_out}, callee received {callee_in} ({callee_from_advertised} from the advertised address); "
        f"callee sent {callee_out}, caller received {caller_in} ({caller_from_advertised} from it); "
        f"{clashes} dropped by the host's connection tracking meanwhile"
    )
    print("\n" + seen)
    assert (stats["OutgoingCall(C)"], stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == (1, 1, 0), seen
    assert (caller_out, callee_out) == (played, played), seen
    # Every packet arrives, from the advertised address only. The one loss a real network path has too is
    # counted by the kernel, not guessed: both ends' first packets of the flow at the same instant (the
    # relay's to the callee and the callee's to the relay) make one conntrack entry each way, and the
    # second is dropped at insertion. Any other loss fails.
    assert 2 * played - (callee_in + caller_in) <= clashes, seen
    assert (callee_from_advertised, caller_from_advertised) == (callee_in, caller_in), seen


def test_ten_sip_calls_through_a_compose_replica_handed_its_plan_are_heard_both_ways_from_peers_outside(
    docker_client: Any, sip_image: str, links: Links, tmp_path: Path
) -> None:
    """A replica Compose started (docker-compose 1.29, from `docker-xms compose`), its plan handed over by an
    agent whose `advertise` setting is the address peers reach this host at: ten calls at once from peers
    whose only way out is that address, the callee sending its own recording from the start, as through a
    Swarm node's task (tests/integration/test_swarm.py)."""
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    env = renamed_profile_env(tmp_path, "sip", "sipwait", advertise=links.advertised, plan_wait_s="120")
    with (
        compose_replica(tmp_path, "sipwait", env, docker_client) as cid,
        agent_for_a_test(LoggedAgent(AGENT_ARGV, {**os.environ, **env})) as agent,
    ):
        wait_for(lambda: "plan given to" in agent.log(), 30, 0.1, "the agent to hand over the plan")
        container = docker_client.containers.get(cid)
        wait_for(
            lambda: container.reload() or container.attrs["State"].get("Health", {}).get("Status") == "healthy",
            150,
            1,
            "the proxy to answer OPTIONS",
        )
        sip_port = int(container.attrs["NetworkSettings"]["Ports"]["5060/udp"][0]["HostPort"])
        assert f"advertises {links.advertised}" in agent.log()
        calls, _ = calls_from_outside((links.advertised, sip_port), links, tmp_path)
        print(f"\nsip through a Compose replica at {links.advertised}:{sip_port} from peers outside: {calls.text()}")
        played = pcap_packets(PCAP)
        calls.check(played, played)
        wait_for(lambda: numsessions(container.name) == 0, timeout=10, what="no rtpengine session left")
