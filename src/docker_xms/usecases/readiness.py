"""Is a media server ready? systemd's state, its required units, and the profile's own check."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from docker_xms.domain.profiles import Profile
from docker_xms.errors import XmsError
from docker_xms.usecases.boundaries import EngineApi

# A bencoded ng ping through bash's /dev/udp, so the image needs no client of its own.
NG_PING = (
    "exec 3<>/dev/udp/127.0.0.1/{port}; printf 'rdy d7:command4:pinge' >&3; "
    "timeout 2 dd bs=4096 count=1 status=none <&3"
)
# The XMS management API answers on 127.0.0.1:10080 inside the server.
OAM_GET = (
    "exec 3<>/dev/tcp/127.0.0.1/10080; "
    "printf 'GET /services HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nUserName: superadmin\\r\\n\\r\\n' >&3; "
    "timeout 5 cat <&3"
)
# A SIP OPTIONS through bash's /dev/udp: any SIP response means the proxy reads and answers requests.
# rport asks for the reply on the socket's own port, whatever the Via says. printf writes line by line;
# dd gathers the lines into the one datagram a SIP message must be.
SIP_OPTIONS = (
    "exec 3<>/dev/udp/127.0.0.1/{port}; "
    "printf 'OPTIONS sip:127.0.0.1:{port} SIP/2.0\\r\\n"
    "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-docker-xms-%s;rport\\r\\n"
    "Max-Forwards: 70\\r\\nFrom: <sip:ready@127.0.0.1>;tag=docker-xms\\r\\nTo: <sip:127.0.0.1:{port}>\\r\\n"
    "Call-ID: docker-xms-ready-%s\\r\\nCSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n' $$ $$ | dd bs=4096 count=1 iflag=fullblock status=none >&3; "
    "timeout 2 dd bs=4096 count=1 status=none <&3"
)
# Janus's info request on its HTTP API (bash's /dev/tcp, so the image needs no HTTP client); it answers with a
# JSON object whose "janus" is "server_info" once its transports and plugins are loaded.
JANUS_INFO = (
    "exec 3<>/dev/tcp/127.0.0.1/{port}; "
    "printf 'GET /janus/info HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3; "
    "timeout 2 cat <&3"
)
_SERVICE_RE = re.compile(r"<service\b[^>]*>", re.IGNORECASE)
_ATTR_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Check:
    ready: bool
    state: str
    detail: str = ""


def _sh(engine: EngineApi, container_id: str, script: str) -> tuple[int, str]:
    return engine.exec(container_id, ["/bin/bash", "-c", script])


def systemd_state(engine: EngineApi, container_id: str, allowed_down: tuple[str, ...]) -> Check:
    _code, out = engine.exec(container_id, ["systemctl", "is-system-running"])
    state = out.strip().splitlines()[-1] if out.strip() else "unknown"
    if state == "running":
        return Check(True, "systemd running")
    if state == "degraded":
        failed = failed_units(engine, container_id)
        blocking = [u for u in failed if _unit_base(u) not in allowed_down]
        if not blocking:
            return Check(True, "systemd degraded", f"failed but allowed: {', '.join(failed)}")
        return Check(False, "systemd degraded", f"failed units: {', '.join(blocking)}")
    return Check(False, f"systemd {state}")


def failed_units(engine: EngineApi, container_id: str) -> list[str]:
    _, out = engine.exec(container_id, ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _unit_base(unit: str) -> str:
    return unit.rsplit(".", 1)[0] if unit.endswith(".service") else unit


def units_active(engine: EngineApi, container_id: str, units: tuple[str, ...]) -> Check:
    if not units:
        return Check(True, "")
    _, out = engine.exec(container_id, ["systemctl", "is-active", *units])
    states = out.split()
    inactive = [f"{u} {s}" for u, s in zip(units, states, strict=False) if s != "active"]
    if inactive:
        return Check(False, "waiting for " + ", ".join(inactive))
    return Check(True, "units active")


def rtpengine_ng(engine: EngineApi, container_id: str, port: int = 2223) -> Check:
    _, out = _sh(engine, container_id, NG_PING.format(port=port))
    if "d6:result4:ponge" in out:
        return Check(True, "ng ping answered pong")
    return Check(False, "waiting for rtpengine's ng ping")


def _sip_port(profile: Profile) -> int:
    return next((p.start for p in profile.ports if p.name == "sip" and p.protocol == "udp"), 5060)


def sip_options(engine: EngineApi, container_id: str, port: int = 5060) -> Check:
    _, out = _sh(engine, container_id, SIP_OPTIONS.format(port=port))
    status = next((line for line in out.splitlines() if line.startswith("SIP/2.0 ")), "")
    if status:
        return Check(True, f"SIP OPTIONS answered {status[len('SIP/2.0 ') :].strip()}")
    return Check(False, "waiting for a SIP answer to OPTIONS")


def _janus_port(profile: Profile) -> int:
    return next((p.start for p in profile.ports if p.name == "http" and p.protocol == "tcp"), 8088)


def janus_info(engine: EngineApi, container_id: str, port: int = 8088) -> Check:
    _, out = _sh(engine, container_id, JANUS_INFO.format(port=port))
    if '"server_info"' in out:
        return Check(True, "Janus answered its info request")
    return Check(False, "waiting for Janus's info on its HTTP API")


def parse_oam_services(text: str) -> dict[str, str]:
    """Service name -> state from the XMS management API's /services answer."""
    services: dict[str, str] = {}
    for tag in _SERVICE_RE.findall(text):
        attrs = dict(_ATTR_RE.findall(tag))
        name = attrs.get("id") or attrs.get("name")
        if name:
            services[name] = attrs.get("state", "")
    return services


def xms_oam(engine: EngineApi, container_id: str, allowed_down: tuple[str, ...]) -> Check:
    _, out = _sh(engine, container_id, OAM_GET)
    services = parse_oam_services(out)
    if not services:
        return Check(False, "waiting for the XMS management API")
    down = sorted(n for n, s in services.items() if s.upper() != "RUNNING" and n not in allowed_down)
    if down:
        return Check(False, "XMS services starting", "not running: " + ", ".join(down))
    return Check(True, f"XMS services running ({len(services)})")


def health_script(profile: Profile) -> str:
    """The profile's readiness as one shell script, for the engine's healthcheck (read by `ps`)."""
    parts = []
    if profile.readiness.systemd:
        parts.append('state=$(systemctl is-system-running); [ "$state" = running ] || [ "$state" = degraded ]')
        if profile.readiness.required_units:
            parts.append("systemctl is-active --quiet " + " ".join(profile.readiness.required_units))
    if profile.readiness.check == "rtpengine-ng":
        port = next((p.start for p in profile.ports if p.name == "ng"), 2223)
        parts.append("(" + NG_PING.format(port=port) + ") | grep -q ponge")
    elif profile.readiness.check == "sip-options":
        parts.append("(" + SIP_OPTIONS.format(port=_sip_port(profile)) + ") | grep -q '^SIP/2.0 '")
    elif profile.readiness.check == "janus-info":
        parts.append("(" + JANUS_INFO.format(port=_janus_port(profile)) + ") | grep -q server_info")
    elif profile.readiness.check == "xms-oam":
        allowed = "|".join(profile.readiness.allowed_down) or "-"
        parts.append(
            "(" + OAM_GET + ") | grep -o '<service[^>]*>' | grep -Ev 'id=\"(" + allowed + ")\"' "
            "| grep -v 'state=\"RUNNING\"' | grep -q . && exit 1 || true"
        )
    return " && ".join(parts)


def check_once(engine: EngineApi, container_id: str, profile: Profile) -> Check:
    info = engine.get_container(container_id)
    if not info.running:
        raise XmsError(f"Container {info.name} stopped while starting (status {info.status}, exit {info.exit_code}).")
    readiness = profile.readiness
    if readiness.systemd:
        state = systemd_state(engine, container_id, readiness.allowed_down)
        if not state.ready:
            return state
        units = units_active(engine, container_id, readiness.required_units)
        if not units.ready:
            return units
    if readiness.check == "rtpengine-ng":
        port = next((p.start for p in profile.ports if p.name == "ng"), 2223)
        return rtpengine_ng(engine, container_id, port)
    if readiness.check == "xms-oam":
        return xms_oam(engine, container_id, readiness.allowed_down)
    if readiness.check == "sip-options":
        return sip_options(engine, container_id, _sip_port(profile))
    if readiness.check == "janus-info":
        return janus_info(engine, container_id, _janus_port(profile))
    return Check(True, "ready")


def wait_ready(
    engine: EngineApi,
    container_id: str,
    profile: Profile,
    timeout: float,
    on_state: Callable[[Check], None] = lambda _: None,
    interval: float = 0.5,
) -> Check:
    """Poll until ready; raises XmsError naming what was still missing when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    last = Check(False, "starting")
    while True:
        last = check_once(engine, container_id, profile)
        on_state(last)
        if last.ready:
            return last
        if time.monotonic() >= deadline:
            detail = f" ({last.detail})" if last.detail else ""
            raise XmsError(f"Not ready after {timeout:.0f} s: {last.state}{detail}.")
        # Never past the deadline: the last look comes when the time given is up, not up to a poll later.
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
