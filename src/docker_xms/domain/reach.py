"""How a started media server is reached: one row per port and media range, the addresses its summary and
`run --json` give, and the warnings for control ports that every address of the host reaches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from docker_xms.domain import ports as port_plans
from docker_xms.domain.labels import ADVERTISE_OWN
from docker_xms.domain.profiles import Profile


@dataclass(frozen=True)
class PortRow:
    """A profile port or media range: where it is in the container and on the host."""

    name: str
    protocol: str
    role: str
    # The container's port ("2223") or range ("30000-30999").
    container: str
    # The host's port or range, "" when the port is not published.
    host: str
    # The host address it is published on, as the engine reports it ("0.0.0.0": every one; "": none).
    bind: str
    authenticated: bool


class MediaRow(TypedDict):
    """A media range as `run --json` shows it (and callers of `run` read it, by key)."""

    name: str
    protocol: str
    start: int
    end: int
    host_start: int
    host_end: int


@dataclass(frozen=True)
class Addresses:
    # The container's own address (the host's with host networking).
    container: str
    # The address of the host's default-route interface.
    host: str
    # The advertise label's value: an address, or ADVERTISE_OWN.
    advertised: str


@dataclass(frozen=True)
class Reach:
    summary: str
    # Port name -> host address:port, for the published ports.
    urls: dict[str, str]
    notes: list[str]
    warnings: list[str]
    # The address the server advertises, and how it was chosen: "host", "container" or "address".
    advertise: str
    advertise_choice: str


def port_rows(
    profile: Profile, published: Mapping[str, Sequence[Mapping[str, str]]], plan: port_plans.PortPlan
) -> list[PortRow]:
    """One row per profile port and media range; `published` is the engine's port map of the container."""
    rows = []
    for spec in profile.ports:
        bindings = published.get(f"{spec.start}/{spec.protocol}") or []
        host = bindings[0]["HostPort"] if bindings else (str(spec.start) if plan.network_mode == "host" else "")
        bind = (bindings[0]["HostIp"] if bindings else "") or (port_plans.ALL_ADDRESSES if host else "")
        rows.append(PortRow(spec.name, spec.protocol, spec.role, str(spec.start), host, bind, spec.authenticated))
    for m in plan.media:
        rows.append(
            PortRow(
                m.name,
                m.protocol,
                "media",
                f"{m.start}-{m.end}",
                f"{m.host_start}-{m.host_end}",
                port_plans.ALL_ADDRESSES,
                True,
            )
        )
    return rows


def media_rows(plan: port_plans.PortPlan) -> list[MediaRow]:
    return [
        MediaRow(
            name=m.name, protocol=m.protocol, start=m.start, end=m.end, host_start=m.host_start, host_end=m.host_end
        )
        for m in plan.media
    ]


def media_text(plan: port_plans.PortPlan) -> str:
    return ", ".join(f"{m.start}-{m.end}/{m.protocol}" for m in plan.media)


def reach(profile: Profile, plan: port_plans.PortPlan, rows: Sequence[PortRow], name: str, at: Addresses) -> Reach:
    """The profile's summary filled in, the published ports' addresses, and what the user should know."""
    values = {"address": at.container, "name": name, "media_ports": media_text(plan)}
    urls: dict[str, str] = {}
    for row in rows:
        values[row.name] = f"{at.container}:{row.container}"
        values[f"{row.name}_host"] = at.container
        values[f"{row.name}_port"] = row.container
        # Where a person on another machine reaches the port: the advertised address (else the host's) and the
        # host port, or the container's own address when the port is not published.
        values[f"{row.name}_public"] = values[row.name]
        if row.host:
            everywhere = row.bind in port_plans.EVERY_ADDRESS
            host = at.host if everywhere else row.bind
            urls[row.name] = f"{host}:{row.host}"
            public = at.advertised if at.advertised != ADVERTISE_OWN and everywhere else host
            values[f"{row.name}_public"] = f"{public}:{row.host}"
    try:
        summary = profile.summary.format(**values).strip()
    except (KeyError, IndexError, ValueError):
        summary = profile.summary.strip()
    notes = list(plan.notes)
    if at.advertised != ADVERTISE_OWN and not profile.takes_advertise:
        notes.append(
            f"The {profile.name} profile cannot tell the media server the address it advertises: configure it "
            f"as behind NAT with {at.advertised} as its public address (XMS: System > Network > Behind NAT)."
        )
    if at.advertised == ADVERTISE_OWN:
        advertise, choice = at.container, "container"
    else:
        advertise, choice = at.advertised, "host" if at.advertised == at.host else "address"
    return Reach(
        summary=summary,
        urls=urls,
        notes=notes,
        warnings=[
            port_plans.open_everywhere(row.name, f"{row.container}/{row.protocol}", plan.network_mode == "host")
            for row in rows
            if not row.authenticated and row.host and row.bind in port_plans.EVERY_ADDRESS
        ],
        advertise=advertise,
        advertise_choice=choice,
    )
