"""RTP over UDP on a 20 ms schedule, a receiver that timestamps arrivals, and a client for rtpengine's ng protocol.

Times come from time.perf_counter_ns, the one monotonic clock sender and receiver share in a process, so a
receiver's arrival times can be compared with a sender's schedule.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from docker_xms.adapters.rtp_wire import (
    PTIME_MS,
    Arrival,
    Bencodable,
    MalformedMessage,
    NgMessage,
    build_ng,
    build_rtp,
    parse_ng,
    parse_rtp,
    pcmu_packet,
    sdp_audio_address,
    sdp_offer,
)
from docker_xms.errors import XmsError

__all__ = [
    "NgClient",
    "NgError",
    "RtpReceiver",
    "SendReport",
    "local_address_towards",
    "sdp_audio_address",
    "sdp_offer",
    "send_stream",
    "udp_socket",
]

# Sleeping to within this much of a deadline, then spinning, keeps sends within a few microseconds of schedule
# without burning a core: the scheduler wakes a sleeper up to a timer slack (50 us by default) late, more under load.
_SPIN_NS = 1_000_000
_MAX_DATAGRAM = 65_535


class NgError(XmsError):
    """rtpengine did not answer, or answered a request with an error."""


def udp_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound UDP socket with a receive buffer deep enough that a slow reader does not drop packets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, port))
    return sock


def local_address_towards(host: str) -> str:
    """The local address the kernel would use to reach `host`; connecting a UDP socket sends nothing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return str(probe.getsockname()[0])


# --- sending -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendReport:
    """When a stream's packets were due and how late each send call started, in ns of perf_counter."""

    start_ns: int
    interval_ns: int
    first_seq: int
    first_timestamp: int
    ssrc: int
    send_lateness_ns: tuple[int, ...]

    @property
    def sent(self) -> int:
        return len(self.send_lateness_ns)

    @property
    def origin(self) -> tuple[int, int]:
        """(ns, RTP timestamp) of the first packet's deadline: the origin of `stream_stats` for this stream."""
        return self.start_ns, self.first_timestamp


def _sleep_until(deadline_ns: int) -> int:
    remaining = deadline_ns - time.perf_counter_ns()
    if remaining > _SPIN_NS:
        time.sleep((remaining - _SPIN_NS) / 1e9)
    now = time.perf_counter_ns()
    while now < deadline_ns:
        now = time.perf_counter_ns()
    return now


def send_stream(
    sock: socket.socket,
    destination: tuple[str, int],
    count: int,
    ssrc: int | None = None,
    interval_ms: float = PTIME_MS,
    first_seq: int | None = None,
    first_timestamp: int | None = None,
    start_ns: int | None = None,
) -> SendReport:
    """Send `count` PCMU packets, one every `interval_ms`, each at an absolute deadline.

    Deadlines are start + i * interval rather than "interval after the last send", so one late wake-up delays
    one packet instead of shifting every packet after it.
    """
    ssrc = secrets.randbits(32) if ssrc is None else ssrc
    # Random starting points, as RFC 3550 asks, also exercise the receivers' wrap handling.
    first_seq = secrets.randbits(16) if first_seq is None else first_seq
    first_timestamp = secrets.randbits(32) if first_timestamp is None else first_timestamp
    interval_ns = round(interval_ms * 1_000_000)
    start = time.perf_counter_ns() + 2 * _SPIN_NS if start_ns is None else start_ns
    lateness: list[int] = []
    for index in range(count):
        datagram = build_rtp(pcmu_packet(index, ssrc, first_seq, first_timestamp))
        deadline = start + index * interval_ns
        now = _sleep_until(deadline)
        sock.sendto(datagram, destination)
        lateness.append(now - deadline)
    return SendReport(start, interval_ns, first_seq, first_timestamp, ssrc, tuple(lateness))


# --- receiving ---------------------------------------------------------------------------------------


@dataclass
class RtpReceiver:
    """A thread that reads RTP from a socket and records each packet's arrival time.

    Packets that do not parse as RTP are counted, not recorded, so a stray datagram cannot fail a measurement.
    """

    sock: socket.socket
    ssrc: int | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    sources: set[tuple[str, int]] = field(default_factory=set)
    malformed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RtpReceiver:
        self.sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, name="rtp-receiver", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.perf_counter_ns()
            try:
                packet = parse_rtp(data)
            except MalformedMessage:
                self.malformed += 1
                continue
            if self.ssrc is not None and packet.ssrc != self.ssrc:
                continue
            self.sources.add((str(source[0]), int(source[1])))
            self.arrivals.append(Arrival(packet.seq, packet.timestamp, now))

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until `count` packets arrived or `timeout` seconds passed; True when they all arrived."""
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.arrivals) >= count

    def stop(self) -> list[Arrival]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        return list(self.arrivals)

    def __enter__(self) -> RtpReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- ng control protocol -----------------------------------------------------------------------------


class NgClient:
    """A client for rtpengine's ng protocol: one bencoded dictionary per UDP datagram, matched by cookie.

    A retry reuses the request's cookie: rtpengine caches answers by cookie, so a retried offer whose first
    answer was lost gets that same answer back instead of being processed twice.
    """

    def __init__(self, host: str, port: int = 2223, timeout: float = 1.0, attempts: int = 3) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.attempts = attempts
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.connect(self.address)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NgClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, body: Mapping[str, Bencodable]) -> NgMessage:
        """Send one command and return rtpengine's answer; an answer with result "error" raises NgError."""
        cookie = secrets.token_hex(6)
        datagram = build_ng(cookie, body)
        command = str(body.get("command", "?"))
        where = f"{self.address[0]}:{self.address[1]}"
        for _ in range(self.attempts):
            try:
                self._sock.send(datagram)
            except OSError as exc:
                raise NgError(f"Could not send the ng {command} to {where}: {exc.strerror or exc}.") from exc
            reply = self._await(cookie)
            if reply is None:
                continue
            if reply.result == "error":
                reason = reply.text("error-reason") or "no reason given"
                raise NgError(f"rtpengine at {where} refused the ng {command}: {reason}.")
            return reply
        raise NgError(
            f"rtpengine did not answer the ng {command} at {where} within {self.attempts} x {self.timeout:g} s: "
            "check that it runs and that listen-ng is bound to that address."
        )

    def _await(self, cookie: str) -> NgMessage | None:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                return None
            except ConnectionRefusedError:
                # ICMP port unreachable: nothing listens yet; the caller's next attempt may find it.
                time.sleep(min(left, 0.1))
                return None
            try:
                reply = parse_ng(data)
            except MalformedMessage:
                continue
            # Late answers to earlier requests share the socket; only ours counts.
            if reply.cookie == cookie:
                return reply
        return None

    def ping(self) -> bool:
        return self.request({"command": "ping"}).result == "pong"

    def offer(self, call_id: str, from_tag: str, sdp: str, **options: Bencodable) -> NgMessage:
        return self.request({"command": "offer", "call-id": call_id, "from-tag": from_tag, "sdp": sdp, **options})

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, **options: Bencodable) -> NgMessage:
        body = {"command": "answer", "call-id": call_id, "from-tag": from_tag, "to-tag": to_tag, "sdp": sdp}
        return self.request({**body, **options})

    def query(self, call_id: str) -> NgMessage:
        return self.request({"command": "query", "call-id": call_id})

    def delete(self, call_id: str, from_tag: str = "", **options: Bencodable) -> NgMessage:
        body: dict[str, Bencodable] = {"command": "delete", "call-id": call_id}
        if from_tag:
            body["from-tag"] = from_tag
        return self.request({**body, **options})


@dataclass(frozen=True)
class Exchange:
    """Two streams sent at once, A to B and B to A: what each sender did and what each leg received."""

    sent_by_a: SendReport
    sent_by_b: SendReport
    at_a: list[Arrival]
    at_b: list[Arrival]
    sources_at_a: set[tuple[str, int]]
    sources_at_b: set[tuple[str, int]]


def exchange(
    leg_a: socket.socket,
    leg_b: socket.socket,
    a_sends_to: tuple[str, int],
    b_sends_to: tuple[str, int],
    count: int,
    start_ns: int | None = None,
    b_after_ns: int = 0,
) -> Exchange:
    """Send `count` packets each way at once, each leg receiving on the socket it sends from."""
    reports: dict[str, SendReport] = {}
    with RtpReceiver(leg_a) as at_a, RtpReceiver(leg_b) as at_b:
        b_start = None if start_ns is None else start_ns + b_after_ns
        threads = [
            threading.Thread(
                target=lambda: reports.__setitem__("a", send_stream(leg_a, a_sends_to, count, start_ns=start_ns))
            ),
            threading.Thread(
                target=lambda: reports.__setitem__("b", send_stream(leg_b, b_sends_to, count, start_ns=b_start))
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        at_a.wait_for(count, timeout=2)
        at_b.wait_for(count, timeout=2)
        arrivals_a, arrivals_b = list(at_a.arrivals), list(at_b.arrivals)
        sources_a, sources_b = set(at_a.sources), set(at_b.sources)
    return Exchange(reports["a"], reports["b"], arrivals_a, arrivals_b, sources_a, sources_b)


@dataclass(frozen=True)
class RelayCall:
    """A two-leg call set up through rtpengine: where each leg must send its media."""

    call_id: str
    from_tag: str
    a_sends_to: tuple[str, int]
    b_sends_to: tuple[str, int]


def open_call(
    ng: NgClient, leg_a: socket.socket, leg_b: socket.socket, sdp_ip: str | None = None, **offer_options: Bencodable
) -> RelayCall:
    """Offer from leg A and answer from leg B; each leg's SDP names `sdp_ip` (default: its own address)."""
    call_id, tag_a, tag_b = f"docker-xms-{time.monotonic_ns()}", "leg-a", "leg-b"
    a_host, a_port = leg_a.getsockname()[:2]
    b_host, b_port = leg_b.getsockname()[:2]
    offer = ng.offer(call_id, tag_a, sdp_offer(sdp_ip or a_host, a_port), **offer_options)
    answer = ng.answer(call_id, tag_a, tag_b, sdp_offer(sdp_ip or b_host, b_port))
    # The offer's rewritten SDP goes to B: where B sends. The answer's goes to A: where A sends.
    return RelayCall(call_id, tag_a, sdp_audio_address(answer.text("sdp")), sdp_audio_address(offer.text("sdp")))
