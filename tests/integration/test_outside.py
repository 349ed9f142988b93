"""Calls from outside: peers that reach only the host's own address, as a remote machine does.

Each peer is a network namespace the test creates, joined by a veth pair to a bridge of the host's that
holds one host address on a private /29 (the peers' LAN): its default route goes to that address, and the
container network is unreachable from it (an `unreachable` route), so whatever reaches the media server
went to the host's address and through the host's forwarding (DNAT in PREROUTING, as for a packet from
another machine). The media server advertises that address (`run --advertise ADDR`).

One host address for both peers, as a remote peer sees one: with a /30 per peer, the host masquerades the
server's media towards each peer from that peer's own link address, which is then not the advertised one,
and the peer's answering stream, sent to the advertised address, is a second flow that conntrack moves
to the next port (measured: the callee's RTP arrived on the RTCP port, 0 of 50 relayed).

The clients are rtpengine's own ng client (Debian rtpengine-utils) and SIPp (Debian sip-tester); RTP is
counted by netfilter counters inside each namespace.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab.peer_links import LinkPeer, Outside, json_outputs

from docker_xms.adapters import hostnet
from tests.helpers import conntrack_drops, run_cli
from tests.integration.test_media_ports import port_row, run_json
from tests.integration.test_sip_profile import MEDIA_PORT, sip_call

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PACKETS = 50

# Run inside a namespace: bind the port the SDP names, send PACKETS RTP packets (PCMU, 20 ms apart) to
# the address and port the media server gave, and count what arrives until 2 s after the last one.
SENDER = r"""
import json, socket, struct, sys, time
bind, port, target, tport, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, port))
s.setblocking(False)
# Both peers listen before either sends.
time.sleep(max(0.0, float(sys.argv[6]) - time.time()))
ssrc, got, sent = int(time.time() * 1000) & 0xFFFFFFFF, 0, 0
end = None
while True:
    now = time.monotonic()
    if sent < count:
        s.sendto(struct.pack("!BBHII", 0x80, 0, sent, sent * 160, ssrc) + bytes(160), (target, tport))
        sent += 1
        if sent == count:
            end = now + 2.0
    stop = time.monotonic() + 0.02
    while time.monotonic() < stop:
        try:
            s.recvfrom(2048)
            got += 1
        except BlockingIOError:
            time.sleep(0.001)
    if end is not None and (time.monotonic() > end or got >= count):
        break
print(json.dumps({"sent": sent, "received": got}))
"""


def _name(kind: str) -> str:
    # "rtp-": a prefix the suite knows as its own when it looks for a 1:1 container it did not start.
    return f"rtp-out-{kind}-{secrets.token_hex(3)}"


# --- rtpengine: ng offer/answer from the host, RTP between the namespaces ---------------------------------


def ng_client(ng_port: int, command: str, *args: str, host: str = "127.0.0.1") -> str:
    """rtpengine-ng-client's command against the ng port published on 127.0.0.1 (or at `host`); the SDP it
    gives back."""
    result = subprocess.run(
        ["rtpengine-ng-client", "--proxy-address", host, "--proxy-port", str(ng_port), command, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout.split("New SDP:", 1)[-1]


def sdp_for(address: str, port: int = MEDIA_PORT) -> str:
    return f"v=0\no=- 1 1 IN IP4 {address}\ns=-\nc=IN IP4 {address}\nt=0 0\nm=audio {port} RTP/AVP 0\n"


def media_of(sdp: str) -> tuple[str, int]:
    connection = re.search(r"^c=IN IP4 (\S+)", sdp, re.M)
    media = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert connection, sdp
    assert media, sdp
    return connection.group(1), int(media.group(1))


@dataclass(frozen=True)
class NgCall:
    caller_sends_to: tuple[str, int]
    callee_sends_to: tuple[str, int]


def ng_call(ng_port: int, call_id: str, caller: LinkPeer, callee: LinkPeer) -> NgCall:
    offered = ng_client(
        ng_port, "offer", f"--call-id={call_id}", "--from-tag=caller", f"--sdp={sdp_for(caller.address)}"
    )
    answered = ng_client(
        ng_port,
        "answer",
        f"--call-id={call_id}",
        "--from-tag=caller",
        "--to-tag=callee",
        f"--sdp={sdp_for(callee.address)}",
    )
    return NgCall(caller_sends_to=media_of(answered), callee_sends_to=media_of(offered))


def rtp_both_ways(caller: LinkPeer, callee: LinkPeer, call: NgCall) -> tuple[dict[str, int], dict[str, int]]:
    at = time.time() + 1.0

    def start(peer: LinkPeer, to: tuple[str, int]) -> subprocess.Popen[str]:
        args = (peer.address, str(MEDIA_PORT), to[0], str(to[1]), str(PACKETS), str(at))
        return peer.popen(sys.executable, "-c", SENDER, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    at_caller, at_callee = json_outputs(
        start(caller, call.caller_sends_to), start(callee, call.callee_sends_to), timeout=30
    )
    return at_caller, at_callee


@pytest.mark.parametrize("mode", ["1:1", "-c"])
def test_rtpengine_relays_between_peers_that_reach_only_the_host(
    rtpengine_image: str, outside: Outside, names: list[str], mode: str
) -> None:
    if shutil.which("rtpengine-ng-client") is None:
        pytest.fail("rtpengine-ng-client is not installed: apt-get install rtpengine-utils")
    caller, callee = outside.add("a"), outside.add("b")
    advertised = caller.host_end
    name = _name("ng")
    names.append(name)
    args = ("-c",) if mode == "-c" else ()
    summary = run_json(
        *args, "--ports", "dnat", "--advertise", advertised, "--name", name, wait_one_to_one=180 if not args else 0
    )
    assert (summary["advertise"], summary["advertise_choice"]) == (advertised, "address")
    (media,) = summary["media"]
    # The server uses its host range: the forward changes the address only.
    assert (media["start"], media["end"]) == (media["host_start"], media["host_end"])
    ng_port = int(port_row(summary, "ng")["host"])

    call_id = f"out-{secrets.token_hex(4)}"
    call = ng_call(ng_port, call_id, caller, callee)
    try:
        for address, port in (call.caller_sends_to, call.callee_sends_to):
            assert address == advertised
            assert media["host_start"] <= port <= media["host_end"]
        dropped_before = conntrack_drops()
        at_caller, at_callee = rtp_both_ways(caller, callee, call)
        clashes = conntrack_drops() - dropped_before
        sent, echoed_in = caller.count("OUTPUT"), caller.count("INPUT")
        print(
            f"\nrtpengine {mode} dnat, advertised {advertised}: caller sent {at_caller['sent']} to "
            f"{call.caller_sends_to}, callee received {at_callee['received']}; callee sent {at_callee['sent']} to "
            f"{call.callee_sends_to}, caller received {at_caller['received']} (caller's counters: out {sent}, "
            f"in {echoed_in}; callee's: in {callee.count('INPUT')}, out {callee.count('OUTPUT')}); {clashes} "
            "dropped by the host's connection tracking meanwhile"
        )
        assert (at_caller["sent"], at_callee["sent"]) == (PACKETS, PACKETS)
        # Every packet both ways. The one loss a real network path has too is counted by the kernel, not
        # guessed: both ends' first packets of the flow at the same instant (the relay's to one leg and that
        # leg's to the relay) make one conntrack entry each way, and the second is dropped at insertion.
        received = (at_callee["received"], at_caller["received"])
        assert 2 * PACKETS - sum(received) <= clashes, (received, clashes)
        assert (callee.count("INPUT"), caller.count("INPUT")) == received
    finally:
        ng_client(ng_port, "delete", f"--call-id={call_id}", "--from-tag=caller")


def test_advertise_host_is_the_default_route_address_in_the_summary_and_the_sdp(
    rtpengine_image: str, names: list[str]
) -> None:
    name = _name("host")
    names.append(name)
    summary = run_json("-c", "--ports", "dnat", "--name", name)
    assert (summary["advertise"], summary["advertise_choice"]) == (hostnet.host_address(), "host")
    ng_port = int(port_row(summary, "ng")["host"])
    call_id = f"out-{secrets.token_hex(4)}"
    offered = ng_client(ng_port, "offer", f"--call-id={call_id}", "--from-tag=a", f"--sdp={sdp_for('192.0.2.7')}")
    ng_client(ng_port, "delete", f"--call-id={call_id}", "--from-tag=a")
    assert media_of(offered)[0] == hostnet.host_address()
    listed = run_cli("ps", "--json")
    assert listed.code == 0, listed.err
    assert {row["name"]: row["advertise"] for row in json.loads(listed.out)}[name] == hostnet.host_address()


# --- sip: SIPp caller and echoing callee through the proxy at the host's address --------------------------


@pytest.mark.parametrize("mode", ["1:1", "-c"])
def test_a_sip_call_from_outside_through_the_host_address(
    outside: Outside, names: list[str], tmp_path: Path, mode: str
) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    build = run_cli("build", "--profile", "sip", "--if-missing", timeout=900)
    assert build.code == 0, build.err + build.out
    caller, callee = outside.add("a"), outside.add("b")
    advertised = caller.host_end
    name = _name("sip")
    names.append(name)
    args = ("-c",) if mode == "-c" else ()
    summary = run_json(
        *args,
        "--profile",
        "sip",
        "--ports",
        "dnat",
        "--advertise",
        advertised,
        "--name",
        name,
        wait_one_to_one=180 if not args else 0,
    )
    assert summary["ready"] is True, summary["ready_state"]
    assert summary["advertise"] == advertised
    sip_port = int(port_row(summary, "sip")["host"])
    assert int(port_row(summary, "sip-tcp")["host"]) == sip_port
    if not args:
        assert sip_port == 5060
    sip_call(name, (advertised, sip_port), caller, callee, tmp_path, f"{mode}, advertised {advertised}:{sip_port}")
