"""SIP calls for the tests: SIPp's scenarios and recording, what a call's statistics and a peer's counters say,
and ten calls at once from peers outside a host or node, as the kernel counts them in the peers' namespaces."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from lab.peer_links import LinkPeer, Peer

import docker_xms
from tests.helpers import conntrack_drops

T = TypeVar("T")

SCENARIO = Path(docker_xms.__file__).parent / "assets" / "sipp" / "uac_g711a.xml"
UAS_SCENARIO = SCENARIO.with_name("uas_g711a.xml")
PCAP = Path("/usr/share/sip-tester/g711a.pcap")
MEDIA_PORT = 6000
CALLS = 10


class PeerMaker(Protocol):
    """lab/peer_links.py's Links or ToAddress: each peer's INPUT counts RTP from the advertised address, then
    all RTP; its OUTPUT, RTP sent."""

    def add(self, role: str) -> LinkPeer: ...


def pcap_packets(path: Path) -> int:
    """Packets in a classic pcap file: what the caller plays, so what must come back."""
    data = path.read_bytes()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset, count = 24, 0
    while offset + 16 <= len(data):
        (included,) = struct.unpack(endian + "I", data[offset + 8 : offset + 12])
        offset += 16 + included
        count += 1
    return count


def sipp_stats(path: Path) -> dict[str, int]:
    """The last row of SIPp's -trace_stat file, cumulative counters only."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header, last = lines[0].split(";"), lines[-1].split(";")
    return {k: int(v) for k, v in zip(header, last, strict=False) if k.endswith("(C)") and v.strip().isdigit()}


def counters(peer: Peer, chain: str) -> list[int]:
    """The packet counts of the namespace's counting rules in `chain`, in order."""
    out = peer.run("iptables", "-w", "-nvxL", chain).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "udp" in line.split()]


@dataclass(frozen=True)
class OutsideCalls:
    """Ten SIPp calls from peers outside a host or node, as the kernel counted them in the peers' namespaces."""

    codes: tuple[int, int]
    stats: dict[str, int]
    errors: str
    ended: float
    # RTP packets: sent by each side, received by each side, and of those, received from the advertised address.
    caller_out: int
    callee_out: int
    caller_in: int
    callee_in: int
    caller_from_advertised: int
    callee_from_advertised: int
    # Packets connection tracking dropped meanwhile (where `drops` looks).
    clashes: int

    def text(self) -> str:
        return (
            f"calls {self.stats.get('SuccessfulCall(C)')} of {self.stats.get('OutgoingCall(C)')}, failed "
            f"{self.stats.get('FailedCall(C)')}; RTP packets: caller sent {self.caller_out}, callee received "
            f"{self.callee_in} ({self.callee_from_advertised} from the advertised address); callee sent {self.callee_out}, "
            f"caller received {self.caller_in} ({self.caller_from_advertised} from it); {self.clashes} dropped by "
            "connection tracking"
        )

    def check(self, caller_plays: int, callee_plays: int) -> None:
        """Every call answered and ended without error, every packet both ways, from the advertised address only:
        an SDP that named the container's own address would have reached no peer (their only way out
        is the advertised address). A loss only where connection tracking counted a clash (both ends' first packets of a flow at
        the same instant)."""
        seen = self.text()
        assert self.codes == (0, 0), self.errors
        assert (self.stats["OutgoingCall(C)"], self.stats["SuccessfulCall(C)"], self.stats["FailedCall(C)"]) == (
            CALLS,
            CALLS,
            0,
        ), seen
        assert (self.caller_out, self.callee_out) == (CALLS * caller_plays, CALLS * callee_plays), seen
        assert CALLS * (caller_plays + callee_plays) - (self.callee_in + self.caller_in) <= self.clashes, seen
        assert (self.callee_from_advertised, self.caller_from_advertised) == (self.callee_in, self.caller_in), seen


def calls_from_outside(
    proxy: tuple[str, int],
    peers: PeerMaker,
    tmp_path: Path,
    scenario: Path = SCENARIO,
    during: Callable[[], T] = lambda: None,  # type: ignore[assignment,return-value]
    drops: Callable[[], int] = conntrack_drops,
) -> tuple[OutsideCalls, T]:
    """CALLS SIPp calls at once from a caller to a callee, both in new namespaces of `peers` (whose only way
    out is the address peers reach the server at), through the proxy at `proxy` (that address and the
    signalling's host port); the callee sends its own recording from the ACK on. What `during` gives while
    they run; `drops` counts the packets connection tracking dropped where the calls pass."""
    caller, callee = peers.add("a"), peers.add("b")
    dropped_before = drops()
    common = ["-m", str(CALLS), "-nostdin", "-timeout", "150s", "-trace_err"]
    quiet = subprocess.DEVNULL
    sipps = [
        callee.popen(
            "sipp", "-sf", str(UAS_SCENARIO), "-i", callee.address, "-p", "5060", "-mi", callee.address,
            "-mp", str(MEDIA_PORT), *common, "-error_file", str(tmp_path / "uas-errors.log"),
            stdout=quiet, stderr=quiet,
        )
    ]  # fmt: skip
    stats_file = tmp_path / "uac-stats.csv"
    try:
        time.sleep(0.5)
        # All ten at once: a rate of 10 a second, at most 10 under way.
        sipps.append(
            caller.popen(
                "sipp", f"{callee.address}:5060", "-rsa", f"{proxy[0]}:{proxy[1]}", "-sf", str(scenario),
                "-i", caller.address, "-p", "5060", "-mi", caller.address, "-mp", str(MEDIA_PORT),
                "-l", str(CALLS), "-r", str(CALLS), "-rp", "1000", *common, "-trace_stat", "-stf",
                str(stats_file), "-error_file", str(tmp_path / "uac-errors.log"), stdout=quiet, stderr=quiet,
            )
        )  # fmt: skip
        seen = during()
        uac_code = sipps[1].wait(timeout=150)
        ended = time.time()
        codes = (uac_code, sipps[0].wait(timeout=30))
    finally:
        for sipp in sipps:
            if sipp.poll() is None:
                sipp.kill()
            sipp.wait()
    time.sleep(0.3)  # the last packets still on their way
    (caller_from_advertised, caller_in), (callee_from_advertised, callee_in) = (
        counters(caller, "INPUT"),
        counters(callee, "INPUT"),
    )
    calls = OutsideCalls(
        codes=codes,
        stats=sipp_stats(stats_file),
        errors="".join(p.read_text(errors="replace") for p in tmp_path.glob("*-errors.log")),
        ended=ended,
        caller_out=counters(caller, "OUTPUT")[0],
        callee_out=counters(callee, "OUTPUT")[0],
        caller_in=caller_in,
        callee_in=callee_in,
        caller_from_advertised=caller_from_advertised,
        callee_from_advertised=callee_from_advertised,
        clashes=drops() - dropped_before,
    )
    return calls, seen
