"""Media-server profiles: data that tells docker-xms how to build, start, check and describe a server.

A profile is a TOML file (found and read by `docker_xms.adapters.profile_store`). A malformed file is
refused with its path, the line and the field at fault.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from docker_xms.domain.drain_unit import DRAIN_SCRIPT, DRAIN_UNIT, Drain, drain_script, drain_unit
from docker_xms.domain.plan_unit import PLAN_SCRIPT, PLAN_UNIT, plan_script, plan_unit
from docker_xms.domain.watchdog import DEFAULT_WATCHDOG_MS, MAX_WATCHDOG_MS
from docker_xms.errors import BadInput

PORT_ROLES = ("signalling", "media", "web", "ssh", "control", "other")
# Ports that control or manage the server: `run --bind` chooses the host address they are published on.
MANAGEMENT_ROLES = ("control", "web", "ssh")
PROTOCOLS = ("tcp", "udp")
# How a media server learns its media range: rendered into its instance files, from its environment
# (DOCKER_XMS_MEDIA_START / _END), or not at all (it always uses the profile's full range).
MediaConfig = Literal["instance-file", "env", "none"]
MEDIA_INSTANCE_FILE: MediaConfig = "instance-file"
MEDIA_ENV: MediaConfig = "env"
MEDIA_NONE: MediaConfig = "none"
MEDIA_CONFIGS: tuple[MediaConfig, ...] = (MEDIA_INSTANCE_FILE, MEDIA_ENV, MEDIA_NONE)
CHECKS = ("none", "rtpengine-ng", "xms-oam", "sip-options", "janus-info")
# The clients `docker-xms test-call` places a call with: ng offer/answer + RTP, SIPp through the proxy, or a
# headless browser's echo call through Janus.
TEST_CALL_CLIENTS = ("rtpengine-ng", "sipp", "janus-echo")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# What the port-rule label (io.docker-xms.dnat) can hold as a media range's name.
MEDIA_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class PortSpec:
    """One port or a contiguous range of ports the media server listens on."""

    name: str
    protocol: str
    start: int
    end: int
    role: str
    # In 1:1 mode the host port; by default the same as the container port.
    host_port: int | None = None
    # False for a control port that obeys whoever reaches it (rtpengine's ng): published on 127.0.0.1
    # unless `run --bind` says otherwise.
    authenticated: bool = True

    @property
    def count(self) -> int:
        return self.end - self.start + 1

    @property
    def is_range(self) -> bool:
        return self.end > self.start

    def label(self) -> str:
        span = f"{self.start}" if not self.is_range else f"{self.start}-{self.end}"
        return f"{span}/{self.protocol}"


@dataclass(frozen=True)
class InstanceFile:
    """A file written into each container before it starts, rendered from a template.

    Placeholders: {media_start}, {media_end}, {name}, {profile}, {advertise_address} (empty: the
    container's own address), {advertised} (the profile's [media] advertise form with the address in
    it, such as rtpengine's "!203.0.113.10"; empty when none is advertised), {<port name>_port} for each
    single port (its host port; '-' and '.' in the name become '_'), and the names in the profile's
    [vars]. A verbatim file is written as it is, for files such as scripts whose own braces are not
    placeholders.
    """

    path: str
    template: str
    mode: int = 0o644
    verbatim: bool = False

    def render(self, values: dict[str, Any]) -> str:
        return self.template if self.verbatim else self.template.format(**values)


@dataclass(frozen=True)
class BuildRecipe:
    distro: str = "debian12"
    packages: tuple[str, ...] = ()
    enable_units: tuple[str, ...] = ()
    mask_units: tuple[str, ...] = ()
    files: tuple[InstanceFile, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    default_tag: str = ""


@dataclass(frozen=True)
class Readiness:
    systemd: bool = True
    # Units allowed to be down (failed or inactive) when the server is otherwise ready.
    allowed_down: tuple[str, ...] = ()
    # Units that must be active.
    required_units: tuple[str, ...] = ()
    check: str = "none"
    timeout: float = 120.0


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    image: str
    docs_url: str
    ports: tuple[PortSpec, ...]
    media: PortSpec | None
    media_ranges: tuple[PortSpec, ...]
    tmpfs: tuple[str, ...]
    env: dict[str, str]
    readiness: Readiness
    build: BuildRecipe
    instance_files: tuple[InstanceFile, ...]
    summary: str
    logins: dict[str, str]
    media_config: MediaConfig
    # Real-time priority the media server runs its workers at (used by the probe).
    rt_priority: int
    source: str
    # Values for instance-file placeholders of the profile's own ([vars]), which a copy of it can change.
    variables: dict[str, str] = field(default_factory=dict)
    # The client of `docker-xms test-call` ([test_call] client); empty when the profile names none.
    test_call: str = ""
    # Threads (by name) the server itself runs at rt_priority when it has a budget. A container started
    # before the agent could grant one (a node's engine up before its agent) runs them SCHED_OTHER: the
    # agent raises these when it adopts it, as the server would have done.
    rt_threads: tuple[str, ...] = ()

    # How {advertised} writes an advertised address into an instance file ([media] advertise, "{address}"
    # in it); empty: the profile has no such place.
    advertise_form: str = ""
    # Draining at stop ([drain]); a profile without one stops at once.
    drain: Drain = field(default_factory=Drain)
    # How long a real-time thread may run without blocking before the kernel stops the server
    # ([realtime] watchdog_ms, domain/watchdog.py); 0: no watchdog.
    watchdog_ms: int = DEFAULT_WATCHDOG_MS

    @property
    def media_port_count(self) -> int:
        return sum(r.count for r in self.media_ranges)

    @property
    def takes_advertise(self) -> bool:
        """Whether an instance file tells the server the address it advertises.

        Environment variables are no such way: a server such as XMS is given DOCKER_XMS_ADVERTISE_ADDRESS
        but reads its own settings, so its summary says what to set by hand.
        """
        return any(
            not f.verbatim and ("{advertise_address}" in f.template or "{advertised}" in f.template)
            for f in self.instance_files
        )

    @property
    def waits_for_plan(self) -> bool:
        """Whether images built from it hold the server until the host hands the container its plan."""
        return PLAN_UNIT in self.build.enable_units

    def host_port_placeholders(self) -> tuple[PortSpec, ...]:
        """The single ports whose host port an instance file names, so a run must know it before start."""
        return tuple(
            p
            for p in self.ports
            if not p.is_range
            and any(not f.verbatim and "{" + port_placeholder(p) + "}" in f.template for f in self.instance_files)
        )

    def advertised(self, address: str) -> str:
        """The {advertised} placeholder's text for an address ("" when none is advertised)."""
        return self.advertise_form.format(address=address) if address and self.advertise_form else ""


def _fail(source: str, where: str, message: str, text: str | None = None) -> BadInput:
    line = _line_of(text, where) if text else None
    at = f" line {line}," if line else ""
    return BadInput(f"Profile {source}:{at} field '{where}' {message}.")


def _line_of(text: str, where: str) -> int | None:
    """The line of a dotted field path such as `ports[1].protocol` in the TOML text, if it can be found."""
    lines = text.splitlines()
    segments = where.split(".")
    position = 0
    found = False
    dotted: list[str] = []
    for segment in segments[:-1]:
        match = re.fullmatch(r"(.+)\[(\d+)\]", segment)
        dotted.append(match.group(1) if match else segment)
        name = re.escape(".".join(dotted))
        if match:
            header = re.compile(rf"^\s*\[\[\s*{name}\s*\]\]")
            hits = [i for i, line in enumerate(lines) if header.match(line)]
            index = int(match.group(2))
            if index < len(hits):
                position, found = hits[index], True
        else:
            header = re.compile(rf"^\s*\[\s*{name}\s*\]")
            hits = [i for i, line in enumerate(lines) if header.match(line)]
            if hits:
                position, found = hits[0], True
    key = re.compile(rf"^\s*\"?{re.escape(segments[-1])}\"?\s*=")
    quoted = False
    for i in range(position + 1 if found else 0, len(lines)):
        # A line such as `[rtpengine]` inside a multi-line string is text, not the next table.
        if not quoted and lines[i].lstrip().startswith("["):
            break
        if not quoted and key.match(lines[i]):
            return i + 1
        quoted ^= (lines[i].count('"""') + lines[i].count("'''")) % 2 == 1
    # A missing field: the line of the table that lacks it.
    return position + 1 if found else None


class _Reader:
    """Typed access to a parsed TOML table that names the field at fault."""

    def __init__(self, data: dict[str, Any], source: str, text: str, prefix: str = "") -> None:
        self.data = data
        self.source = source
        self.text = text
        self.prefix = prefix

    def _where(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, message: str) -> BadInput:
        return _fail(self.source, self._where(key), message, self.text)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        if key not in self.data:
            if required or default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, (int,)):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, default=[])
        for value in values:
            if not isinstance(value, str):
                raise self.fail(key, f"must be a list of strings, not contain {value!r}")
        return tuple(values)

    def table(self, key: str) -> _Reader:
        value = self.get(key, dict, default={})
        return _Reader(value, self.source, self.text, f"{self.prefix}{key}.")

    def tables(self, key: str) -> list[_Reader]:
        values = self.get(key, list, default=[])
        out = []
        for i, value in enumerate(values):
            if not isinstance(value, dict):
                raise self.fail(key, f"entry {i + 1} must be a table")
            out.append(_Reader(value, self.source, self.text, f"{self.prefix}{key}[{i}]."))
        return out

    def unknown(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(key, "is not a known setting")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _port(reader: _Reader, default_role: str | None = None) -> PortSpec:
    reader.unknown({"name", "protocol", "port", "range", "role", "host_port", "authenticated"})
    name = reader.get("name", str, default="")
    protocol = reader.get("protocol", str, default="udp")
    if protocol not in PROTOCOLS:
        raise reader.fail("protocol", f"must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if "range" in reader.data:
        span = reader.get("range", str)
        match = re.fullmatch(r"(\d+)-(\d+)", span.strip())
        if not match:
            raise reader.fail("range", f"must look like '49152-53152', not {span!r}")
        start, end = int(match.group(1)), int(match.group(2))
    else:
        start = end = reader.get("port", int, required=True)
    if not (1 <= start <= end <= 65535):
        raise reader.fail("range" if "range" in reader.data else "port", "must lie within 1-65535, low to high")
    role = reader.get("role", str, default=default_role or "other")
    if role not in PORT_ROLES:
        raise reader.fail("role", f"must be one of {', '.join(PORT_ROLES)}, not {role!r}")
    if default_role == "media" and not name:
        # The name goes into the container's port-rule label, which is read back on every reconcile.
        raise reader.fail("name", "is missing; every media range needs one")
    if name and default_role == "media" and not MEDIA_NAME_RE.match(name):
        raise reader.fail("name", f"must be letters, digits, '.', '_' or '-', not {name!r}")
    host_port = reader.get("host_port", int, default=None)
    if host_port is not None and not 1 <= host_port <= 65535:
        raise reader.fail("host_port", "must lie within 1-65535")
    if host_port is not None and host_port + end - start > 65535:
        raise reader.fail("host_port", f"leaves no room for the {end - start + 1} ports of the range below 65536")
    authenticated = reader.get("authenticated", bool, default=True)
    if not authenticated and role not in MANAGEMENT_ROLES:
        raise reader.fail("authenticated", f"can be false only on a {', '.join(MANAGEMENT_ROLES)} port")
    return PortSpec(name or f"{start}/{protocol}", protocol, start, end, role, host_port, authenticated)


def port_placeholder(port: PortSpec) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", port.name) + "_port"


def template_defaults(ports: Sequence[PortSpec], variables: dict[str, str]) -> dict[str, Any]:
    """What an instance file's placeholders stand for when a run gives no value of its own."""
    values: dict[str, Any] = {
        "media_start": 0,
        "media_end": 0,
        "name": "",
        "profile": "",
        "advertise_address": "",
        "advertised": "",
    }
    for port in ports:
        if not port.is_range:
            values[port_placeholder(port)] = port.host_port or port.start
    return {**values, **variables}


def _instance_file(reader: _Reader, known: dict[str, Any]) -> InstanceFile:
    reader.unknown({"path", "template", "mode", "verbatim"})
    path = reader.get("path", str, required=True)
    if not path.startswith("/"):
        raise reader.fail("path", "must be an absolute path")
    template = reader.get("template", str, required=True)
    mode = reader.get("mode", str, default="0644")
    try:
        mode_value = int(mode, 8)
    except ValueError:
        raise reader.fail("mode", f"must be an octal string such as '0644', not {mode!r}") from None
    verbatim = reader.get("verbatim", bool, default=False)
    if not verbatim:
        try:
            template.format(**known)
        except (KeyError, IndexError, ValueError) as exc:
            raise reader.fail("template", f"has a placeholder that is not known: {exc}") from None
    return InstanceFile(path, template, mode_value, verbatim)


# The tables a profile may hold, each read by its own reader below.
_TABLES = {
    "profile",
    "ports",
    "media",
    "readiness",
    "build",
    "instance_files",
    "summary",
    "run",
    "vars",
    "test_call",
    "drain",
    "realtime",
}


def parse_profile(text: str, source: str) -> Profile:
    """Parse and validate one profile's TOML text; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"Profile {source} is not valid TOML: {exc}.") from None
    root = _Reader(data, source, text)
    root.unknown(_TABLES)
    head = _head(root.table("profile"))
    ports = tuple(_port(r) for r in root.tables("ports"))
    media = _media(root.table("media"))
    _check_overlaps(ports + media.ranges, root)
    readiness = _readiness(root.table("readiness"))
    variables = _variables(root)
    known = template_defaults(ports, variables)
    build = _build(root.table("build"), known, head.image)
    tmpfs, run_env = _run(root.table("run"))
    test_call = _test_call(root.table("test_call"), ports)
    drain = _drain(root.table("drain"), readiness)
    watchdog_ms = _realtime(root.table("realtime"))
    if drain.command:
        build = _with_drain(build, drain)
    if media.config == MEDIA_INSTANCE_FILE and build.packages and readiness.required_units:
        build = _with_plan(build, readiness.required_units)
    summary = _summary(root)

    return Profile(
        name=head.name,
        description=head.description,
        image=head.image,
        docs_url=head.docs_url,
        ports=ports,
        media=media.ranges[0] if media.ranges else None,
        media_ranges=media.ranges,
        tmpfs=tmpfs,
        env=run_env,
        readiness=readiness,
        build=build,
        instance_files=tuple(_instance_file(r, known) for r in root.tables("instance_files")),
        summary=summary,
        logins=head.logins,
        media_config=media.config,
        rt_priority=head.rt_priority,
        source=source,
        variables=variables,
        advertise_form=media.advertise_form,
        test_call=test_call,
        drain=drain,
        rt_threads=head.rt_threads,
        watchdog_ms=watchdog_ms,
    )


@dataclass(frozen=True)
class _Head:
    """What the [profile] table says about the server."""

    name: str
    description: str
    image: str
    docs_url: str
    logins: dict[str, str]
    rt_priority: int
    rt_threads: tuple[str, ...]


def _head(reader: _Reader) -> _Head:
    reader.unknown({"name", "description", "image", "docs_url", "logins", "rt_priority", "rt_threads"})
    name = reader.get("name", str, required=True)
    if not NAME_RE.match(name):
        raise reader.fail("name", f"must be lower-case letters, digits, '.', '_' or '-', not {name!r}")
    logins = reader.get("logins", dict, default={})
    for key, value in logins.items():
        if not isinstance(value, str):
            raise reader.fail("logins", f"entry {key!r} must be a string")
    rt_priority = reader.get("rt_priority", int, default=50)
    if not 1 <= rt_priority <= 99:
        raise reader.fail("rt_priority", "must lie within 1-99")
    return _Head(
        name=name,
        description=reader.get("description", str, default=""),
        image=reader.get("image", str, default=""),
        docs_url=reader.get("docs_url", str, default=""),
        logins={str(k): str(v) for k, v in logins.items()},
        rt_priority=rt_priority,
        rt_threads=reader.strings("rt_threads"),
    )


@dataclass(frozen=True)
class _Media:
    """What the [media] table says: the media ranges, how the server learns them, how it advertises an address."""

    ranges: tuple[PortSpec, ...]
    config: MediaConfig
    advertise_form: str


def _media(reader: _Reader) -> _Media:
    reader.unknown({"ranges", "config", "advertise"})
    ranges = tuple(_port(r, "media") for r in reader.tables("ranges"))
    config_text = reader.get("config", str, default=MEDIA_NONE)
    config = next((c for c in MEDIA_CONFIGS if c == config_text), None)
    if config is None:
        raise reader.fail("config", f"must be instance-file, env or none, not {config_text!r}")
    advertise_form = reader.get("advertise", str, default="")
    if advertise_form:
        try:
            advertise_form.format(address="192.0.2.1")
        except (KeyError, IndexError, ValueError):
            raise reader.fail("advertise", "may hold only the placeholder {address}") from None
    return _Media(ranges, config, advertise_form)


def _readiness(reader: _Reader) -> Readiness:
    reader.unknown({"systemd", "allowed_down", "required_units", "check", "timeout"})
    check = reader.get("check", str, default="none")
    if check not in CHECKS:
        raise reader.fail("check", f"must be one of {', '.join(CHECKS)}, not {check!r}")
    timeout = reader.get("timeout", (int, float), default=120)
    if timeout <= 0:
        raise reader.fail("timeout", "must be above 0")
    return Readiness(
        systemd=reader.get("systemd", bool, default=True),
        allowed_down=reader.strings("allowed_down"),
        required_units=reader.strings("required_units"),
        check=check,
        timeout=float(timeout),
    )


def _variables(root: _Reader) -> dict[str, str]:
    """The profile's own placeholders ([vars]), each a string."""
    variables = root.get("vars", dict, default={})
    for key, value in variables.items():
        if not isinstance(value, str):
            raise _fail(root.source, f"vars.{key}", "must be a string", root.text)
    return {str(k): str(v) for k, v in variables.items()}


def _build(reader: _Reader, known: dict[str, Any], image: str) -> BuildRecipe:
    """The image recipe ([build]); its tag is the profile's image unless it names one."""
    reader.unknown({"distro", "packages", "enable_units", "mask_units", "files", "env", "tag"})
    env = reader.get("env", dict, default={})
    return BuildRecipe(
        distro=reader.get("distro", str, default="debian12"),
        packages=reader.strings("packages"),
        enable_units=reader.strings("enable_units"),
        mask_units=reader.strings("mask_units"),
        files=tuple(_instance_file(r, known) for r in reader.tables("files")),
        env={str(k): str(v) for k, v in env.items()},
        default_tag=reader.get("tag", str, default=image),
    )


def _run(reader: _Reader) -> tuple[tuple[str, ...], dict[str, str]]:
    """The tmpfs mounts and environment every container of the profile runs with ([run])."""
    reader.unknown({"tmpfs", "env"})
    env = reader.get("env", dict, default={})
    return reader.strings("tmpfs"), {str(k): str(v) for k, v in env.items()}


def _summary(root: _Reader) -> str:
    """The post-start summary's text ([summary] text)."""
    summary = root.get("summary", dict, default={})
    text = summary.get("text", "")
    if not isinstance(text, str):
        raise _fail(root.source, "summary.text", "must be a string", root.text)
    return text


def _drain(reader: _Reader, readiness: Readiness) -> Drain:
    reader.unknown({"grace", "command", "before"})
    grace = reader.get("grace", int, default=0)
    if not 0 <= grace <= 3600:
        raise reader.fail("grace", "must lie within 0-3600 seconds")
    command = reader.get("command", str, default="")
    if command and grace == 0:
        raise reader.fail("grace", "must be above 0 when a drain command is given")
    before = reader.strings("before") or readiness.required_units
    if command and not before:
        raise reader.fail("before", "must name the server's units the drain runs before (the readiness names none)")
    return Drain(grace_s=grace, command=command.strip(), before=before)


def _realtime(reader: _Reader) -> int:
    reader.unknown({"watchdog_ms"})
    watchdog_ms: int = reader.get("watchdog_ms", int, default=DEFAULT_WATCHDOG_MS)
    if not 0 <= watchdog_ms <= MAX_WATCHDOG_MS:
        raise reader.fail("watchdog_ms", f"must lie within 0-{MAX_WATCHDOG_MS} (0: no watchdog)")
    return watchdog_ms


def drain_files(drain: Drain) -> tuple[InstanceFile, InstanceFile]:
    """The drain's unit and script, as an image holds them."""
    return (
        InstanceFile("/etc/systemd/system/" + DRAIN_UNIT, drain_unit(drain), 0o644, verbatim=True),
        InstanceFile(DRAIN_SCRIPT, drain_script(drain), 0o755, verbatim=True),
    )


def _with_drain(build: BuildRecipe, drain: Drain) -> BuildRecipe:
    """The image recipe with the drain's unit and script, so that every image built from it drains."""
    return dataclasses.replace(
        build, enable_units=(*build.enable_units, DRAIN_UNIT), files=(*build.files, *drain_files(drain))
    )


def plan_files(units: tuple[str, ...]) -> tuple[InstanceFile, InstanceFile]:
    """The plan's unit and script, as an image holds them (domain/plan_unit.py)."""
    return (
        InstanceFile("/etc/systemd/system/" + PLAN_UNIT, plan_unit(units), 0o644, verbatim=True),
        InstanceFile(PLAN_SCRIPT, plan_script(), 0o755, verbatim=True),
    )


def _with_plan(build: BuildRecipe, units: tuple[str, ...]) -> BuildRecipe:
    """The image recipe whose server `units` wait for the container's plan."""
    return dataclasses.replace(
        build, enable_units=(*build.enable_units, PLAN_UNIT), files=(*build.files, *plan_files(units))
    )


def _test_call(reader: _Reader, ports: tuple[PortSpec, ...]) -> str:
    """The test-call client, refused at load when the profile lacks the port that client talks to."""
    reader.unknown({"client"})
    client: str = reader.get("client", str, default="")
    if client and client not in TEST_CALL_CLIENTS:
        raise reader.fail("client", f"must be one of {', '.join(TEST_CALL_CLIENTS)}, not {client!r}")
    role = {"rtpengine-ng": "control", "sipp": "signalling"}.get(client)
    if role and not any(p.role == role and p.protocol == "udp" and not p.is_range for p in ports):
        raise reader.fail("client", f"{client} needs a single udp port with role {role!r} in [[ports]]")
    return client


def _check_overlaps(specs: tuple[PortSpec, ...], root: _Reader) -> None:
    taken: list[PortSpec] = []
    for spec in specs:
        for other in taken:
            if other.protocol == spec.protocol and spec.start <= other.end and other.start <= spec.end:
                raise BadInput(
                    f"Profile {root.source}: ports {spec.label()} ({spec.name}) overlap {other.label()} ({other.name})."
                )
        taken.append(spec)
