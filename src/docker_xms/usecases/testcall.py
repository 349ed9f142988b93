"""A short test call against a running managed container, with the client its profile names.

rtpengine-ng: an ng offer/answer for two local UDP legs, then 20 ms PCMU packets both ways through the addresses
and ports of the SDP rtpengine answers. sipp: SIPp as caller and echoing callee, both on this host, through the
profile's SIP proxy. janus-echo: headless Chromium with fake camera and microphone opens the server's echo page and
reads its own WebRTC statistics (getStats) for the echoed audio and video. Each way media flows when each direction
receives at least 90% of what was sent.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docker_xms.adapters import browser, rtp, sipp
from docker_xms.domain import webrtc
from docker_xms.domain.engine_types import ContainerInfo
from docker_xms.domain.labels import ADVERTISE_LABEL, ADVERTISE_OWN, PROFILE_LABEL, forwards_from_labels, profile_of
from docker_xms.domain.profiles import PortSpec, Profile
from docker_xms.domain.stats import interarrival_jitter_ms
from docker_xms.errors import BadInput, NotFound, XmsError
from docker_xms.usecases.boundaries import EngineApi

# Below this share of the packets sent, a direction counts as media that does not flow.
MIN_RECEIVED = 0.9
PCMU_CLOCK_RATE = 8000
PACKET_MS = 20
_EVERY_ADDRESS = ("", "0.0.0.0", "::")  # noqa: S104 - read from the engine's bindings, not bound


class CallFailed(XmsError):
    """The call was not answered or its media did not flow."""


@dataclass(frozen=True)
class TestCallRequest:
    name: str
    from_address: str | None = None
    seconds: float = 3.0
    # Where a browser call saves its screenshot (default: NAME-test-call.png in the working directory).
    screenshot: str | None = None
    # Where the server's control port (rtpengine's ng) is reached, "ADDR" or "ADDR:PORT" (None: where this
    # host reaches its published port). From another network namespace, the host's loopback is not there.
    control: str | None = None


@dataclass(frozen=True)
class Direction:
    """One direction of the call's media: what its sender sent and its receiver received."""

    name: str
    sent: int
    received: int
    jitter_ms: float | None
    # What a browser reports beside the packets (janus-echo); None for the other clients.
    bytes_received: int | None = None
    packets_lost: int | None = None
    frames_dropped: int | None = None

    @property
    def flows(self) -> bool:
        return self.sent > 0 and self.received >= MIN_RECEIVED * self.sent


@dataclass(frozen=True)
class TestCallResult:
    name: str
    profile: str
    client: str
    # Where the call was set up (the ng or SIP address) and the local address both legs used.
    server: str
    local: str
    answered: bool
    directions: tuple[Direction, ...]
    # How the packets were counted, in a user's words.
    measured: str
    setup_ms: float | None = None
    failed_reason: str = ""
    # A browser call's round-trip time, its selected ICE candidate pair and its screenshot (janus-echo).
    rtt_ms: float | None = None
    local_candidate: str = ""
    remote_candidate: str = ""
    screenshot: str = ""

    @property
    def media_flows(self) -> bool:
        return bool(self.directions) and all(d.flows for d in self.directions)

    @property
    def ok(self) -> bool:
        return self.answered and self.media_flows

    def problem(self) -> str:
        """One sentence saying why the call failed; empty when it did not."""
        if not self.answered:
            why = f": {self.failed_reason}" if self.failed_reason else ""
            return f"The test call through {self.name} was not answered{why}."
        short = [d for d in self.directions if not d.flows]
        if short:
            parts = ", ".join(f"{d.name} received {d.received} of {d.sent}" for d in short)
            return f"Media did not flow through {self.name}: {parts} packets (at least 90% must arrive)."
        return ""


def _container(engine: EngineApi, name: str) -> ContainerInfo:
    info = engine.find_container(name)
    if info is None:
        raise NotFound(f"There is no container {name}.")
    if not info.managed:
        raise BadInput(f"Container {name} is not managed by docker-xms: test-call places calls only to its own.")
    if not info.running:
        raise BadInput(f"Container {name} is not running: start it with `docker-xms start {name}`.")
    return info


def _single_port(profile: Profile, role: str) -> PortSpec:
    return next(p for p in profile.ports if p.role == role and p.protocol == "udp" and not p.is_range)


def published_endpoint(info: ContainerInfo, port: PortSpec) -> tuple[str, int]:
    """Where this host reaches a container port: its published host port (127.0.0.1 for every address), else the
    container's own address, else (host networking) 127.0.0.1 and the port itself."""
    bindings = info.ports.get(f"{port.start}/{port.protocol}") or []
    if bindings and bindings[0].get("HostPort"):
        host = bindings[0].get("HostIp", "")
        return ("127.0.0.1" if host in _EVERY_ADDRESS else host), int(bindings[0]["HostPort"])
    if info.ip_address:
        return info.ip_address, port.start
    return "127.0.0.1", port.start


def direct_target(info: ContainerInfo, target: tuple[str, int], local_target: bool) -> tuple[str, int]:
    """Where this host sends media the server told it to send to `target`.

    A remote peer sends to the advertised host address and port; the host's DNAT forward (or the engine's
    published port) carries it to the container, and the container's replies go back through the same
    connection-tracking entry. From the host itself that path breaks: the server's first packet to a local leg is
    not source-translated, and its tracking entry then clashes with the leg's own packets to the host port. So
    for a host address, the test call sends to the container's address and the port the host port maps to.
    """
    port = target[1]
    if not local_target or not info.ip_address:
        return target
    for forward in forwards_from_labels(info.labels):
        if forward.protocol == "udp" and forward.host_start <= port <= forward.host_end:
            return info.ip_address, forward.container_start + port - forward.host_start
    for key, bindings in info.ports.items():
        number, _, protocol = key.partition("/")
        if protocol == "udp" and any(b.get("HostPort") == str(port) for b in bindings or []):
            return info.ip_address, int(number)
    return target


def test_call(engine: EngineApi, load_profile: Callable[[str], Profile], request: TestCallRequest) -> TestCallResult:
    if request.seconds <= 0 or request.seconds > 600:
        raise BadInput(f"--seconds must lie within 0-600, not {request.seconds:g}.")
    info = _container(engine, request.name)
    profile_name = info.labels.get(PROFILE_LABEL, "")
    if not profile_name:
        raise BadInput(f"Container {request.name} has no profile label: test-call does not know how to call it.")
    # The label's value is the container's word: a name of an installed profile, never a file to read.
    profile = load_profile(profile_of(info.labels) or profile_name)
    if request.control is not None and profile.test_call != "rtpengine-ng":
        raise BadInput(f"--control names rtpengine's ng port; profile {profile.name}'s test call does not use one.")
    if profile.test_call == "rtpengine-ng":
        return _rtpengine(info, profile, request)
    if profile.test_call == "sipp":
        return _sipp(info, profile, request)
    if profile.test_call == "janus-echo":
        return _janus(info, profile, request)
    raise BadInput(
        f'Profile {profile.name} names no test-call client: add [test_call] client = "rtpengine-ng", "sipp" or "janus-echo".'
    )


def control_endpoint(given: str | None, published: tuple[str, int]) -> tuple[str, int]:
    """`--control` ("ADDR" or "ADDR:PORT", an IPv4 address) over the published endpoint; bad input is refused."""
    if given is None:
        return published
    host, _, port = given.partition(":")
    try:
        address = str(ipaddress.IPv4Address(host))
        number = int(port) if port else published[1]
    except ValueError:
        raise BadInput(f"--control must be an IPv4 address with an optional :PORT, not {given!r}.") from None
    if not 1 <= number <= 65535:
        raise BadInput(f"--control's port must lie within 1-65535, not {number}.")
    return address, number


def _rtpengine(info: ContainerInfo, profile: Profile, request: TestCallRequest) -> TestCallResult:
    ng_host, ng_port = control_endpoint(request.control, published_endpoint(info, _single_port(profile, "control")))
    count = max(1, round(request.seconds * 1000 / PACKET_MS))
    with rtp.NgClient(ng_host, ng_port, timeout=1.0) as ng:
        local = request.from_address or rtp.local_address_towards(info.ip_address or ng_host)
        legs = rtp.udp_socket(local), rtp.udp_socket(local)
        try:
            call = rtp.open_call(ng, *legs)
            media_host = call.a_sends_to[0]
            better = rtp.local_address_towards(media_host)
            if request.from_address is None and better != local:
                # The server advertises an address this host reaches from another of its addresses: call again
                # from that one, so that each leg's SDP names where it really sends from.
                ng.delete(call.call_id, call.from_tag)
                for leg in legs:
                    leg.close()
                local = better
                legs = rtp.udp_socket(local), rtp.udp_socket(local)
                call = rtp.open_call(ng, *legs)
            targets = [
                direct_target(info, t, rtp.local_address_towards(t[0]) == t[0])
                for t in (call.a_sends_to, call.b_sends_to)
            ]
            try:
                done = rtp.exchange(legs[0], legs[1], targets[0], targets[1], count)
            finally:
                ng.delete(call.call_id, call.from_tag)
        finally:
            for leg in legs:
                leg.close()

    return TestCallResult(
        name=info.name,
        profile=profile.name,
        client=profile.test_call,
        server=f"{ng_host}:{ng_port}",
        local=local,
        answered=True,
        directions=(
            _direction("a -> b", done.sent_by_a.sent, [(a.timestamp, a.arrival_ns) for a in done.at_b]),
            _direction("b -> a", done.sent_by_b.sent, [(a.timestamp, a.arrival_ns) for a in done.at_a]),
        ),
        measured=_relay_text(call.a_sends_to, call.b_sends_to, targets),
    )


def _relay_text(a_to: tuple[str, int], b_to: tuple[str, int], targets: list[tuple[str, int]]) -> str:
    said = f"{a_to[0]}:{a_to[1]} and {b_to[0]}:{b_to[1]}"
    text = f"packets sent by each leg and received by the other; rtpengine's SDP named {said}"
    if targets != [a_to, b_to]:
        sent = " and ".join(f"{h}:{p}" for h, p in targets)
        text += f", which from this host itself are reached at {sent}"
    return text


def _sipp(info: ContainerInfo, profile: Profile, request: TestCallRequest) -> TestCallResult:
    signalling = _single_port(profile, "signalling")
    # The proxy at the container's own address when this host routes to it (every bridge mode), else where its
    # signalling is published.
    proxy = (info.ip_address, signalling.start) if info.ip_address else published_endpoint(info, signalling)
    local = request.from_address or rtp.local_address_towards(proxy[0])
    interface = sipp.route_device(info.ip_address or proxy[0])
    call = sipp.call_through_proxy(proxy, local, interface)

    return TestCallResult(
        name=info.name,
        profile=profile.name,
        client=profile.test_call,
        server=f"{proxy[0]}:{proxy[1]}",
        local=local,
        answered=call.answered,
        directions=(
            _direction("caller -> callee", call.caller.sent, call.callee.received),
            _direction("callee echo -> caller", call.callee.sent, call.caller.received),
        ),
        measured=(
            f"RTP packets counted on {call.interface} as they left and reached the SIPp legs' media ports "
            "(SIPp plays a 7 s G.711 recording; the callee echoes what reaches it)"
        ),
        setup_ms=call.setup_ms,
        failed_reason=call.failed_reason,
    )


def _direction(name: str, sent: int, received: list[tuple[int, int]]) -> Direction:
    """One direction of a call from its (RTP timestamp, arrival ns) pairs."""
    jitter = interarrival_jitter_ms(received, PCMU_CLOCK_RATE) if len(received) > 1 else None
    return Direction(name, sent, len(received), jitter)


# How long a browser call may take from opening the page to media flowing over DTLS-SRTP (measured: 1.3 s from this
# host, 27 s from a namespace that calls the container's own address, whose first checks Docker masquerades).
CONNECT_TIMEOUT_S = 45.0


def echo_page_url(info: ContainerInfo, profile: Profile) -> str:
    """The echo page a browser opens: at the address the server advertises, through the host port of its web
    server; at the container's own address and port when it advertises that one (or the port is not published)."""
    web = next((p for p in profile.ports if p.role == "web" and p.protocol == "tcp" and not p.is_range), None)
    if web is None:
        raise BadInput(f"Profile {profile.name} has no web port for a browser to open its echo page on.")
    advertised = info.labels.get(ADVERTISE_LABEL, ADVERTISE_OWN)
    bindings = info.ports.get(f"{web.start}/tcp") or []
    host_port = bindings[0].get("HostPort") if bindings else None
    if advertised != ADVERTISE_OWN and host_port:
        return f"http://{advertised}:{host_port}/docker-xms-echo.html"
    if info.ip_address:
        return f"http://{info.ip_address}:{web.start}/docker-xms-echo.html"
    host, port = published_endpoint(info, web)
    return f"http://{host}:{port}/docker-xms-echo.html"


def _janus(info: ContainerInfo, profile: Profile, request: TestCallRequest) -> TestCallResult:
    url = echo_page_url(info, profile)
    shot = request.screenshot or f"{info.name}-test-call.png"
    browser.check_installed()
    with browser.chromium(url) as chromium:
        started = time.monotonic()
        tab = chromium.open(url)
        state = chromium.wait_connected(tab, CONNECT_TIMEOUT_S)
        setup_ms = (time.monotonic() - started) * 1000
        if not state.stats.connected:
            chromium.screenshot(tab, Path(shot))
            why = state.error or f"the page's state is {state.state!r}, DTLS {state.stats.dtls or 'not started'}"
            return _browser_result(info, profile, url, state, (), None, shot, f"no DTLS-SRTP connection ({why})")
        first, last = browser.sample(chromium, [tab], request.seconds)
        chromium.screenshot(tab, Path(shot))
    return _browser_result(info, profile, url, last[0], echoed(first[0].stats, last[0].stats), setup_ms, shot, "")


def echoed(first: webrtc.Snapshot, last: webrtc.Snapshot) -> tuple[Direction, ...]:
    """Each kind's echo between two readings: sent by the browser, and received back from the server."""
    out = []
    for kind in webrtc.KINDS:
        before, after = first.stream(kind), last.stream(kind)
        if after is None:
            continue
        d = webrtc.during(before, after) if before else after
        out.append(
            Direction(
                f"{kind} echoed",
                d.packets_sent,
                d.packets_received,
                d.jitter_ms,
                bytes_received=d.bytes_received,
                packets_lost=d.packets_lost,
                frames_dropped=d.frames_dropped,
            )
        )
    return tuple(out)


def _browser_result(
    info: ContainerInfo,
    profile: Profile,
    url: str,
    state: browser.PageState,
    directions: tuple[Direction, ...],
    setup_ms: float | None,
    shot: str,
    failed: str,
) -> TestCallResult:
    return TestCallResult(
        name=info.name,
        profile=profile.name,
        client=profile.test_call,
        server=url,
        local=state.stats.local_candidate or "-",
        answered=state.stats.connected,
        directions=directions,
        measured=(
            "the browser's own WebRTC statistics (getStats): RTP packets it sent and received back from the echo "
            "while the call was connected over DTLS-SRTP"
        ),
        setup_ms=setup_ms,
        failed_reason=failed,
        rtt_ms=state.stats.rtt_ms,
        local_candidate=state.stats.local_candidate,
        remote_candidate=state.stats.remote_candidate,
        screenshot=shot,
    )
