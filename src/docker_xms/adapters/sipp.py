"""SIPp (Debian sip-tester) as both ends of a test call through a SIP proxy, and a count of the call's RTP.

The callee is SIPp's built-in `uas` with -rtp_echo; the caller plays the shipped scenario (7 s of G.711 A-law
from sip-tester's own recording). SIPp keeps its media sockets to itself, so the packets are counted as they
cross the host's interface towards the media server, from a packet socket (AF_PACKET) that only reads copies:
sent = leaving this host from a leg's media port, received = arriving at it.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker_xms
from docker_xms.errors import XmsError

SCENARIO = Path(docker_xms.__file__).parent / "assets" / "sipp" / "uac_g711a.xml"
# The scenario's recording (7 s) and its pause: how long the caller's media lasts.
CALL_SECONDS = 8.0

_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4
_ETH_HEADER = 14


class SippMissing(XmsError):
    """SIPp is not installed on this host."""


def sipp_path() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise SippMissing("SIPp is not installed: install the Debian package sip-tester (apt-get install sip-tester).")
    return found


def free_udp_port(host: str) -> int:
    """A UDP port on `host` that nothing holds now (bound and released; SIPp binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def route_device(address: str) -> str:
    """The interface the kernel sends to `address` through."""
    out = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True, timeout=5)
    words = out.stdout.split()
    if out.returncode != 0 or "dev" not in words:
        raise XmsError(f"This host has no route to {address}: {out.stderr.strip() or 'ip route get found none'}.")
    return words[words.index("dev") + 1]


@dataclass
class PortTraffic:
    """RTP seen at one local UDP port: packets sent from it, and (RTP timestamp, arrival ns) of those it received."""

    sent: int = 0
    received: list[tuple[int, int]] = field(default_factory=list)


class UdpCounter:
    """Counts UDP packets from and to local ports on one interface, reading copies from a packet socket."""

    def __init__(self, interface: str, ports: set[int]) -> None:
        self.interface = interface
        self.traffic = {port: PortTraffic() for port in ports}
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((interface, 0))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-counter", daemon=True)

    def __enter__(self) -> UdpCounter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self._sock.recvfrom(65_535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._count(frame, where[2] == _PACKET_OUTGOING, time.perf_counter_ns())

    def _count(self, frame: bytes, outgoing: bool, now_ns: int) -> None:
        if len(frame) < _ETH_HEADER + 28 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[_ETH_HEADER:]
        header = (ip[0] & 0x0F) * 4
        # UDP only, and only a first fragment carries the ports.
        if ip[9] != 17 or struct.unpack("!H", ip[6:8])[0] & 0x1FFF:
            return
        source_port, dest_port = struct.unpack("!HH", ip[header : header + 4])
        payload = ip[header + 8 :]
        # On the loopback interface a packet shows up twice, leaving and arriving: each side is counted once.
        if outgoing and source_port in self.traffic:
            self.traffic[source_port].sent += 1
        elif not outgoing and dest_port in self.traffic and len(payload) >= 12 and payload[0] >> 6 == 2:
            (timestamp,) = struct.unpack("!I", payload[4:8])
            self.traffic[dest_port].received.append((timestamp, now_ns))


@dataclass(frozen=True)
class SippCall:
    """One call placed by SIPp: how it ended, and the RTP at the caller's and the callee's media ports."""

    answered: bool
    failed_reason: str
    setup_ms: float | None
    caller: PortTraffic
    callee: PortTraffic
    interface: str


def _stat_row(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


def _duration_ms(text: str) -> float | None:
    """SIPp's HH:MM:SS:mmm[uuu] durations in ms."""
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, seconds, fraction = parts
    frac_ms = int(fraction) / float(10 ** (len(fraction) - 3))
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + frac_ms


def _last_error(path: Path) -> str:
    if not path.exists():
        return ""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.strip().startswith("SIP/2.0 "):
            return line.strip()
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def call_through_proxy(proxy: tuple[str, int], local: str, media_interface: str, timeout_s: float = 30) -> SippCall:
    """Place one call from a SIPp caller to a SIPp echoing callee, both on `local`, through the proxy."""
    sipp = sipp_path()
    ports = {name: free_udp_port(local) for name in ("uas_sip", "uas_media", "uac_sip", "uac_media")}
    with tempfile.TemporaryDirectory(prefix="docker-xms-test-call-") as tmp:
        work = Path(tmp)
        common = ["-i", local, "-mi", local, "-m", "1", "-nostdin", "-timeout", f"{int(timeout_s)}s"]
        uas_cmd = [sipp, "-sn", "uas", "-rtp_echo", "-p", str(ports["uas_sip"]), "-mp", str(ports["uas_media"])]
        uac_cmd = [
            sipp, f"{local}:{ports['uas_sip']}", "-rsa", f"{proxy[0]}:{proxy[1]}", "-sf", str(SCENARIO),
            "-p", str(ports["uac_sip"]), "-mp", str(ports["uac_media"]), "-trace_stat", "-stf", str(work / "stat.csv"),
            "-trace_err", "-error_file", str(work / "errors.log"),
        ]  # fmt: skip
        processes: list[subprocess.Popen[bytes]] = []
        media = {ports["uac_media"], ports["uas_media"]}
        try:
            with UdpCounter(media_interface, media) as counter:
                out = subprocess.DEVNULL
                processes.append(subprocess.Popen([*uas_cmd, *common], stdout=out, stderr=out, cwd=work))
                # The callee must listen before the proxy relays the INVITE to it.
                time.sleep(0.3)
                processes.append(subprocess.Popen([*uac_cmd, *common], stdout=out, stderr=out, cwd=work))
                code = processes[1].wait(timeout=timeout_s + 10)
                # Echoes still on their way back.
                time.sleep(0.2)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
        stats = _stat_row(work / "stat.csv")
        successful = stats.get("SuccessfulCall(C)", "0").strip() == "1"
        reason = "" if code == 0 and successful else (_last_error(work / "errors.log") or f"SIPp exited with {code}")
        return SippCall(
            answered=successful,
            failed_reason=reason,
            setup_ms=_duration_ms(stats.get("ResponseTime1(C)", "")),
            caller=counter.traffic[ports["uac_media"]],
            callee=counter.traffic[ports["uas_media"]],
            interface=media_interface,
        )
