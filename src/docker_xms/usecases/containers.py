"""Running media-server containers: start with a budget and ports, list, stop, remove.

State lives in the engine's container labels, never in files of our own: profile, mode, weight and
the port plan are read back from there by `ps`, `stop`, `rm` and the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from docker_xms.adapters import cgroupns, hostnet, hostproc
from docker_xms.adapters.engine import ContainerInfo, CreateSpec, Engine, Healthcheck
from docker_xms.adapters.engine_list import ContainerSummary
from docker_xms.adapters.netfilter import Netfilter
from docker_xms.adapters.profile_store import load_profile
from docker_xms.adapters.signals import deferred
from docker_xms.domain import ports as port_plans
from docker_xms.domain.compose import stop_timeout_s
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    MANAGED_LABEL,
    MODE_LABEL,
    PROFILE_LABEL,
    WEIGHT_LABEL,
    owner_labels,
    weight_of,
)
from docker_xms.domain.names import parse_ref
from docker_xms.domain.pool import holds
from docker_xms.domain.profiles import Profile, port_placeholder
from docker_xms.domain.recipes import GATE_ENTRYPOINT, STOP_SIGNAL, profile_files
from docker_xms.errors import BadInput, Interrupted, NotFound, XmsError
from docker_xms.settings import Settings
from docker_xms.usecases import adoption, images, readiness
from docker_xms.usecases.agent_install import ensure_agent
from docker_xms.usecases.boundaries import EngineApi, NetfilterApi
from docker_xms.usecases.images import Reporter
from docker_xms.usecases.reconcile import live_forwards, reconcile
from docker_xms.usecases.rt import RtHost, open_host, reserve, start_once_freed, start_with_budget, verify

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
SYSTEMD_PATHS = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")


@dataclass(frozen=True)
class RunRequest:
    profile: str = "rtpengine"
    image: str | None = None
    container_address: bool = False
    name: str | None = None
    media_ports: int | None = None
    rt_weight: int = 1
    ports: str = "auto"
    wait: bool = True
    timeout: float | None = None
    keep_on_failure: bool = False
    build_missing: bool = False
    # Host address of the control and management ports (None: loopback for those without authentication).
    bind: str | None = None
    # Make sure an agent runs on the host (the command line sets it unless told not to).
    start_agent: bool = False
    # The address the media server advertises: "host" (the default-route interface's), "container" (its
    # own, reached by a static route), or an IPv4 address in front of the host.
    advertise: str = "host"
    # The user's own labels, KEY=VALUE (`--label`), after those of the settings.
    labels: tuple[str, ...] = ()


@dataclass
class RunResult:
    id: str
    name: str
    image: str
    profile: str
    mode: str
    address: str
    host_address: str
    strategy: str
    strategy_reason: str
    ports: list[dict[str, Any]]
    media: list[dict[str, Any]]
    budget_us: int
    pool_us: int
    per_group: bool
    rt_verified: bool
    rt_detail: str
    ready: bool
    ready_state: str
    summary: str
    urls: dict[str, str]
    shell_command: str
    stop: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What `run` did about the agent: "" when one already ran or it was not asked to.
    agent: str = ""
    # The address the media server puts in its SDP (a SIP proxy in its Via and Record-Route), and how it
    # was chosen: host, container or address.
    advertise: str = ""
    advertise_choice: str = ""

    @property
    def share(self) -> float:
        return self.budget_us / self.pool_us if self.pool_us else 0.0


def require_root() -> None:
    if not hostproc.is_root():
        raise BadInput("docker-xms must run as root: it writes real-time budgets into the host's cgroups.")


def _mode(info: ContainerInfo | ContainerSummary) -> str:
    return info.label("mode", "container-address")


def _systemd_mounts(rt: RtHost, profile: Profile, image_command: tuple[str, ...]) -> dict[str, Any]:
    """The `CreateSpec` fields systemd needs to boot in the container, and no cgroup file of the host's."""
    tmpfs = {"/run": "", "/run/lock": "", **dict.fromkeys(profile.tmpfs, "")}
    if rt.host.cgroup_version == 2:
        # A private cgroup namespace, and no mount of ours: the engine mounts a cgroup2 file system at
        # /sys/fs/cgroup that shows the container's own subtree only. It is writable, as systemd >= 248
        # needs, where the engine remaps user namespaces (v2_systemd_refusal); the container's root is
        # then no root on the host, and CAP_SYS_NICE no longer grants SCHED_FIFO: the rtprio limit does.
        return {"tmpfs": tmpfs, "cgroupns": "private", "rtprio": 99}
    if not image_command:
        raise BadInput("The image names no command to run; it needs systemd (/sbin/init) as its command.")
    # v1: a private cgroup namespace, whose controllers the engine mounts read-only at the container's own
    # group. The gate waits until docker-xms has made the `name=systemd` one writable (adapters/cgroupns.py),
    # then runs the image's command; cpu stays read-only, so systemd makes no cpu sub-cgroups (they would
    # start with a 0 budget).
    return {"tmpfs": tmpfs, "cgroupns": "private", "entrypoint": GATE_ENTRYPOINT, "command": image_command}


def v2_systemd_refusal(cgroup_version: int, security_options: tuple[str, ...]) -> str | None:
    """Why systemd could not boot in a container of this engine, or None.

    On cgroup v2 the engine mounts a private cgroup namespace's /sys/fs/cgroup read-only unless the
    container is privileged or the engine remaps user namespaces, and systemd >= 248 stops on a
    read-only cgroup2; the only other ways (the host's tree read-write, the host's cgroup namespace)
    let the container's root write the host's cgroups.
    """
    if cgroup_version != 2 or any(option.startswith("name=userns") for option in security_options):
        return None
    return (
        "On cgroup v2 this engine mounts a container's /sys/fs/cgroup read-only, where systemd 248 and later "
        "cannot start: run dockerd with --userns-remap=default, or boot the host on cgroup v1 "
        "(systemd.unified_cgroup_hierarchy=0), which real-time budgets need as well."
    )


def _ensure_image(engine: EngineApi, profile: Profile, ref: str, build_missing: bool, reporter: Reporter) -> None:
    if engine.image_exists(ref):
        return
    if build_missing and profile.build.packages:
        # Building needs the whole engine (its builder), which only the real one has.
        if not isinstance(engine, Engine):
            raise XmsError(f"Image {ref} is missing and this engine cannot build it.")
        images.build_profile_image(engine, profile, ref, reporter)
        return
    parsed = parse_ref(ref)
    reporter.phase(f"Pulling {ref}")
    try:
        engine.pull(
            parsed.repository,
            parsed.tag or "latest",
            progress=lambda c: reporter.detail(f"{c.get('id', '')} {c.get('status', '')} {c.get('progress', '')}"),
        )
    except XmsError as exc:
        hint = f" (build it with `docker-xms build --profile {profile.name}`)" if profile.build.packages else ""
        reason = exc.message.rstrip(".")
        raise NotFound(f"Image {ref} is not on this engine and could not be pulled: {reason}{hint}.") from exc


def _check_host_ports(plan: port_plans.PortPlan, binds: dict[str, str]) -> None:
    for key, host_port in plan.publish.items():
        if host_port is None:
            continue
        protocol = key.split("/")[1]
        if not hostnet.port_free(protocol, host_port, binds.get(key, "0.0.0.0")):  # noqa: S104 - a test bind
            raise BadInput(f"Host port {host_port}/{protocol} is already in use; free it or run with -c.")


def _healthcheck(profile: Profile) -> Healthcheck | None:
    script = readiness.health_script(profile)
    if not script:
        return None
    return Healthcheck(("CMD", "/bin/bash", "-c", script), 5, 4, 3, int(profile.readiness.timeout))


def run(
    engine: EngineApi,
    request: RunRequest,
    reporter: Reporter,
    settings: Settings,
    rt: RtHost | None = None,
    netfilter: NetfilterApi | None = None,
) -> RunResult:
    """Start a media server with its share of the real-time pool and its ports; undo all of it on failure.

    `rt` and `netfilter` are the host's own unless given (the unit tests give in-memory ones).
    """
    profile = load_profile(request.profile, settings.profile_dirs)
    if request.name is not None and not NAME_RE.match(request.name):
        raise BadInput(f"{request.name!r} is not a valid container name: use letters, digits, '_', '.' or '-'.")
    if request.rt_weight < 1:
        raise BadInput(f"--rt-weight must be 1 or more, not {request.rt_weight}.")
    if request.bind is not None:
        port_plans.check_bind(request.bind)
    if request.timeout is not None and request.timeout <= 0:
        raise BadInput(f"--timeout must be above 0 seconds, not {request.timeout}.")
    port_plans.check_advertise(request.advertise)
    owner_labels(settings.label_pairs + request.labels)
    image = request.image or profile.image
    parse_ref(image)
    require_root()
    rt = rt or open_host(engine, settings)
    refusal = v2_systemd_refusal(rt.host.cgroup_version, engine.info().security_options)
    if refusal is not None:
        raise BadInput(refusal)
    mode = "container-address" if request.container_address else "one-to-one"
    if request.name and engine.find_container(request.name) is not None:
        raise BadInput(f"A container named {request.name} already exists; choose another --name or remove it.")
    netfilter = netfilter or Netfilter()
    choice = port_plans.decide_strategy(
        request.ports, mode, request.media_ports or profile.media_port_count, netfilter.available()
    )
    # Checked once now, so that a refusal changes nothing, and again under the host lock below, where
    # no other docker-xms process can take the same host ports or start a 1:1 container meanwhile.
    _plan_ports(engine, profile, request, mode, choice.strategy, settings)
    _ensure_image(engine, profile, image, request.build_missing, reporter)
    launch = _Launch(engine, rt, netfilter, profile, request, mode, choice.strategy, image, reporter)
    created = launch.created
    try:
        with reserve(rt, request.rt_weight) as balance:
            container_id = launch.start(balance.arriving_us)
        info = engine.get_container(container_id)
        state = readiness.Check(False, "not waited for")
        if request.wait:
            reporter.phase("Waiting for the media server to be ready")
            state = readiness.wait_ready(
                engine,
                container_id,
                profile,
                request.timeout or profile.readiness.timeout,
                on_state=lambda c: reporter.detail(c.state + (f" ({c.detail})" if c.detail else "")),
            )
        proof = verify(rt, container_id) if request.wait else None
    except BaseException as exc:
        # A second signal must not cut the rollback short: the first already asked to stop.
        with deferred():
            if created and not request.keep_on_failure:
                _undo(engine, rt, netfilter, created[0])
        if isinstance(exc, Interrupted):
            exc.message = f"Stopped by {exc.name}: " + (
                f"container {created[0][:12]} was kept (--keep-on-failure)."
                if created and request.keep_on_failure
                else "the container was removed, its real-time budget given back and its port rules removed."
                if created
                else "nothing had been started."
            )
        if isinstance(exc, XmsError) and created and request.keep_on_failure:
            exc.add_context(f"Container {created[0][:12]} was kept for inspection (--keep-on-failure).")
        raise
    result = _result(
        engine,
        profile,
        info,
        launch.plan,
        choice,
        balance.arriving_us,
        balance.pool_us,
        balance.per_group,
        state,
        proof,
    )
    if request.start_agent:
        result.agent = _ensure_agent(settings)
    return result


def advertise_address(choice: str) -> str:
    """The address a `run --advertise` choice stands for; "" for the container's own."""
    choice = port_plans.check_advertise(choice)
    if choice == "host":
        return hostnet.host_address()
    return "" if choice == "container" else choice


def _instance_values(profile: Profile, plan: port_plans.PortPlan, advertised: str) -> dict[str, object]:
    """What a run tells the server's instance files beyond its media range: where peers reach it."""
    values: dict[str, object] = {"advertise_address": advertised, "advertised": profile.advertised(advertised)}
    for spec in profile.ports:
        if spec.is_range:
            continue
        host = plan.publish.get(f"{spec.start}/{spec.protocol}")
        values[port_placeholder(spec)] = spec.start if plan.network_mode == "host" or host is None else host
    return values


@dataclass
class _Launch:
    """Creating and starting the new container of a `run` inside its reservation; what it created is kept
    in `created` at once, so that a failure at any later step (or a signal) can remove it."""

    engine: EngineApi
    rt: RtHost
    netfilter: NetfilterApi
    profile: Profile
    request: RunRequest
    mode: str
    strategy: str
    image: str
    reporter: Reporter
    created: list[str] = field(default_factory=list)
    plans: list[port_plans.PortPlan] = field(default_factory=list)

    @property
    def plan(self) -> port_plans.PortPlan:
        return self.plans[-1]

    def start(self, budget_us: int) -> str:
        engine, profile, image, netfilter = self.engine, self.profile, self.image, self.netfilter
        # Under the host lock: the ranges other containers hold cannot change meanwhile.
        plan = _plan_ports(engine, profile, self.request, self.mode, self.strategy, self.rt.settings)
        self.plans.append(plan)
        command = engine.image_command(image)
        spec = _create_spec(self.rt, profile, self.request, self.mode, plan, image, budget_us, command)
        self.reporter.phase(
            f"Starting {profile.name} from {image}" + (f" with {budget_us:,} us real-time" if budget_us else "")
        )
        # Held together, so that a signal cannot leave a container this run does not know it created.
        with deferred():
            container_id = engine.create_container(spec)
            self.created.append(container_id)
            # What was decided, in docker-xms's own record: the labels are only a copy of it.
            adoption.record(self.rt.settings, container_id, dict(spec.labels))
        if not any(engine.path_exists(container_id, p) for p in SYSTEMD_PATHS):
            raise BadInput(
                f"Image {image} has no systemd ({' or '.join(SYSTEMD_PATHS)} is missing); build it on a systemd "
                "base image (docker-xms build-base)."
            )
        media = plan.media_range
        if media and profile.media_config == "instance-file":
            values = _instance_values(profile, plan, advertise_address(self.request.advertise))
            for rendered in profile_files(profile, media[0], media[1], values):
                if any(rendered.path == f.path for f in profile.instance_files):
                    engine.put_file(container_id, rendered.path, rendered.content.encode(), rendered.mode)
        start_once_freed(engine, container_id)
        open_gate(self.rt, engine, container_id)
        if plan.forwards:
            self.reporter.phase(
                f"Forwarding {plan.media_port_count} media ports with {len(plan.forwards)} DNAT rule(s)"
            )
            if not engine.get_container(container_id).ip_address:
                raise XmsError("The container has no address to forward media ports to.")
        if plan.forwards or (plan.publish and netfilter.available()):
            # This container's rules, and every media range carved around the host ports the engine has
            # just published for it (they may lie inside another container's 1:1 range).
            netfilter.ensure_chains()
            netfilter.reconcile(
                live_forwards(
                    engine,
                    netfilter,
                    adoption.held_plans(self.rt.settings),
                    adoption.media_pool(self.rt.settings),
                    listeners=self.rt.listening,
                )
            )
        return container_id


def open_gate(rt: RtHost, engine: EngineApi, container_id: str) -> None:
    """Right after a start on cgroup v1: its own systemd cgroup made writable, so that its gate hands over
    to systemd at once (the agent would too, at its next pass); a failure is the start's failure."""
    if rt.host.cgroup_version != 1:
        return
    info = engine.find_container(container_id)
    if info is None or not info.pid:
        return
    problem = cgroupns.open_systemd_cgroup(info.pid)
    if problem is not None:
        raise XmsError(f"{info.name or container_id[:12]}: {problem}.")


def _ensure_agent(settings: Settings) -> str:
    """What was done so that an agent runs; the container stays up whatever the answer."""
    try:
        started = ensure_agent(settings)
    except XmsError as exc:
        return (
            f"Could not start the docker-xms agent: {exc.message} Without one, the port rules of a container "
            "removed by hand stay until the next docker-xms command; run `docker-xms agent install`."
        )
    if not started.started:
        return ""
    return f"Started the docker-xms agent {started.how} (pid {started.pid}): it keeps budgets and port rules right."


def _plan_ports(
    engine: EngineApi,
    profile: Profile,
    request: RunRequest,
    mode: str,
    strategy: str,
    settings: Settings,
) -> port_plans.PortPlan:
    """The port plan for a new container, refusing a second 1:1 container and host ports in use.

    The host ranges other containers hold come from what docker-xms decided for them (its records and the
    plans of adopted containers, usecases/adoption.held_plans), never from labels; every host media range
    lies in the media port pool.
    """
    managed = engine.list_containers(all=True, label=f"{MANAGED_LABEL}=true")
    decided = adoption.held_plans(settings)
    if mode == "one-to-one":
        for other in managed:
            if other.running and decided.get(other.id, {}).get(MODE_LABEL) == "one-to-one":
                raise BadInput(
                    f"Container {other.name} already runs with 1:1 host ports on this host; "
                    "stop it, or start this one with -c (container-address mode)."
                )
    # Stopped containers keep their host range: they get the same rules back when they start again.
    # Another 1:1 container's range is no obstacle to a 1:1 one: only one of them may run at a time.
    existing = {c.id for c in managed}
    used = adoption.held_ranges(
        {
            cid: labels
            for cid, labels in decided.items()
            if cid in existing and not (mode == "one-to-one" and labels.get(MODE_LABEL) == "one-to-one")
        }
    )
    plan = port_plans.plan_ports(
        profile.ports,
        profile.media_ranges,
        mode,
        strategy,
        media_ports=request.media_ports,
        used_host_ranges=used,
        host_pool=adoption.host_pool(settings),
        # The server learns its range from its files: give it the host's numbers (one range only, as
        # its templates know only the first).
        same_ports=profile.media_config != "none" and len(profile.media_ranges) == 1,
    )
    pool = adoption.media_pool(settings)
    for m in plan.media:
        if plan.forwards and not holds(pool, m.host_start, m.host_end):
            raise BadInput(
                f"Host ports {m.host_start}-{m.host_end} of {m.name} lie outside the media port pool "
                f"({settings.media_port_pool}); add them to media_port_pool, or use -c."
            )
    if mode == "one-to-one":
        _check_host_ports(plan, port_plans.bind_addresses(profile.ports, request.bind))
    elif plan.network_mode == "bridge":
        plan = port_plans.with_host_ports(plan, _pick_host_ports(profile, plan))
    return port_plans.with_container_ephemeral(plan, profile.ports, profile.media_ranges)


def _pick_host_ports(profile: Profile, plan: port_plans.PortPlan) -> dict[str, int]:
    """Host ports for the ports the server's files name (the SIP port in its Via), which the engine would
    otherwise pick only at start: one number for a port's udp and tcp alike, from the engine's range."""
    low, high = hostnet.ephemeral_ports()
    taken = {p for p in plan.publish.values() if p is not None}
    chosen: dict[str, int] = {}
    for spec in profile.host_port_placeholders():
        if f"{spec.start}/{spec.protocol}" in chosen:
            continue
        keys = [f"{p.start}/{p.protocol}" for p in profile.ports if not p.is_range and p.start == spec.start]
        port = hostnet.pick_port(sorted({k.split("/")[1] for k in keys}), low, high, taken)
        taken.add(port)
        chosen.update(dict.fromkeys(keys, port))
    return chosen


def _create_spec(
    rt: RtHost,
    profile: Profile,
    request: RunRequest,
    mode: str,
    plan: port_plans.PortPlan,
    image: str,
    budget_us: int = 0,
    image_command: tuple[str, ...] = ("/sbin/init",),
) -> CreateSpec:
    labels = {
        **owner_labels(rt.settings.label_pairs + request.labels),
        MANAGED_LABEL: "true",
        PROFILE_LABEL: profile.name,
        MODE_LABEL: mode,
        WEIGHT_LABEL: str(request.rt_weight),
        ADVERTISE_LABEL: advertise_address(request.advertise) or "container",
        **plan.labels(),
    }
    env = dict(profile.env)
    media = plan.media_range
    if media and profile.media_config == "env":
        env.update({"DOCKER_XMS_MEDIA_START": str(media[0]), "DOCKER_XMS_MEDIA_END": str(media[1])})
        env["DOCKER_XMS_ADVERTISE_ADDRESS"] = labels[ADVERTISE_LABEL].replace("container", "")
    return CreateSpec(
        image,
        name=request.name,
        labels=labels,
        environment=env,
        cap_add=("SYS_NICE",),
        stop_signal=STOP_SIGNAL,
        ports=(
            port_plans.bound(plan.publish, port_plans.bind_addresses(profile.ports, request.bind))
            if plan.network_mode == "bridge"
            else None
        ),
        network_mode=plan.network_mode if plan.network_mode != "bridge" else None,
        healthcheck=_healthcheck(profile),
        sysctls=_ephemeral_sysctl(plan),
        cpu_rt_runtime=budget_us,
        # Time for the image's drain (its profile's [drain] grace) before the engine kills.
        stop_timeout=stop_timeout_s(profile),
        **_systemd_mounts(rt, profile, image_command),
    )


def _ephemeral_sysctl(plan: port_plans.PortPlan) -> dict[str, str]:
    if plan.container_ephemeral is None:
        return {}
    low, high = plan.container_ephemeral
    return {"net.ipv4.ip_local_port_range": f"{low} {high}"}


def _undo(engine: EngineApi, rt: RtHost, netfilter: NetfilterApi, container_id: str) -> None:
    """Remove what a failed run created and give its budget back to the others."""
    engine.remove(container_id, force=True)
    reconcile(rt, netfilter)


def _result(
    engine: EngineApi,
    profile: Profile,
    info: ContainerInfo,
    plan: port_plans.PortPlan,
    choice: port_plans.StrategyChoice,
    budget_us: int,
    pool_us: int,
    per_group: bool,
    state: readiness.Check,
    proof: Any,
) -> RunResult:
    info = engine.get_container(info.id)
    host_ip = hostnet.host_address()
    address = info.ip_address or host_ip
    rows = port_rows(profile, info, plan)
    values: dict[str, Any] = {"address": address, "name": info.name, "media_ports": _media_text(plan)}
    urls: dict[str, str] = {}
    advertised = info.labels.get(ADVERTISE_LABEL, "container")
    for row in rows:
        values[row["name"]] = f"{address}:{row['container']}"
        values[f"{row['name']}_host"] = address
        values[f"{row['name']}_port"] = row["container"]
        # Where a person on another machine reaches the port: the advertised address (else the host's) and the
        # host port, or the container's own address when the port is not published.
        values[f"{row['name']}_public"] = values[row["name"]]
        if row["host"]:
            at = host_ip if row["bind"] in port_plans.EVERY_ADDRESS else row["bind"]
            urls[row["name"]] = f"{at}:{row['host']}"
            public = advertised if advertised != "container" and row["bind"] in port_plans.EVERY_ADDRESS else at
            values[f"{row['name']}_public"] = f"{public}:{row['host']}"
    try:
        summary = profile.summary.format(**values).strip()
    except (KeyError, IndexError, ValueError):
        summary = profile.summary.strip()
    notes = list(plan.notes)
    if advertised != "container" and not profile.takes_advertise:
        notes.append(
            f"The {profile.name} profile cannot tell the media server the address it advertises: configure it "
            f"as behind NAT with {advertised} as its public address (XMS: System > Network > Behind NAT)."
        )
    return RunResult(
        id=info.id,
        name=info.name,
        image=info.image,
        profile=profile.name,
        mode=_mode(info),
        address=address,
        host_address=host_ip,
        strategy=plan.strategy,
        strategy_reason=choice.reason,
        ports=rows,
        media=[m.__dict__ for m in plan.media],
        budget_us=budget_us,
        pool_us=pool_us,
        per_group=per_group,
        rt_verified=bool(proof and proof.ok),
        rt_detail=proof.fifo_detail if proof else "not checked (--no-wait)",
        ready=state.ready,
        ready_state=state.state,
        summary=summary,
        urls=urls,
        shell_command=f"docker-xms shell {info.name}",
        stop=f"docker-xms stop {info.name}",
        notes=notes,
        advertise=address if advertised == "container" else advertised,
        advertise_choice="container" if advertised == "container" else ("host" if advertised == host_ip else "address"),
        warnings=[
            port_plans.open_everywhere(
                row["name"], f"{row['container']}/{row['protocol']}", plan.network_mode == "host"
            )
            for row in rows
            if not row.get("authenticated", True) and row["host"] and row["bind"] in port_plans.EVERY_ADDRESS
        ],
    )


def _media_text(plan: port_plans.PortPlan) -> str:
    return ", ".join(f"{m.start}-{m.end}/{m.protocol}" for m in plan.media)


def port_rows(profile: Profile, info: ContainerInfo, plan: port_plans.PortPlan) -> list[dict[str, Any]]:
    """One row per profile port and media range: where it is in the container and on the host."""
    rows = []
    for spec in profile.ports:
        bindings = info.ports.get(f"{spec.start}/{spec.protocol}") or []
        host = bindings[0]["HostPort"] if bindings else (str(spec.start) if plan.network_mode == "host" else "")
        # The host address it is published on, as the engine reports it ("0.0.0.0": every one).
        bind = (bindings[0]["HostIp"] if bindings else "") or (port_plans.ALL_ADDRESSES if host else "")
        rows.append(
            {
                "name": spec.name,
                "protocol": spec.protocol,
                "role": spec.role,
                "container": str(spec.start),
                "host": host,
                "bind": bind,
                "authenticated": spec.authenticated,
            }
        )
    for m in plan.media:
        host = f"{m.host_start}-{m.host_end}"
        rows.append(
            {
                "name": m.name,
                "protocol": m.protocol,
                "role": "media",
                "container": f"{m.start}-{m.end}",
                "host": host,
                "bind": port_plans.ALL_ADDRESSES,
                "authenticated": True,
            }
        )
    return rows


# --- ps, stop, rm, route --------------------------------------------------------------------------


def resolve(engine: EngineApi, refs: tuple[str, ...]) -> list[ContainerInfo]:
    """Containers by name or ID prefix; refuses all of them if any is unknown, before touching one."""
    found = []
    missing = []
    for ref in refs:
        info = engine.find_container(ref)
        if info is None:
            missing.append(ref)
        else:
            found.append(info)
    if missing:
        raise NotFound(f"There is no container {', '.join(missing)}.")
    return found


@dataclass(frozen=True)
class Started:
    name: str
    budget_us: int
    already_running: bool = False


def start(engine: Engine, refs: tuple[str, ...], settings: Settings) -> list[Started]:
    """Start stopped managed containers again, each with its share of the pool and its port rules.

    A plain `docker start` re-applies the budget the container had when it stopped, which the kernel
    refuses once the others have taken the pool; this makes room first.
    """
    require_root()
    targets = resolve(engine, refs)
    foreign = [t.name for t in targets if not t.managed]
    if foreign:
        raise BadInput(f"{', '.join(foreign)} is not managed by docker-xms; start it with docker start.")
    weights = {t.id: _label_weight(t) for t in targets}
    rt = open_host(engine, settings)
    netfilter = Netfilter()
    _refuse_second_one_to_one(engine, [t for t in targets if not t.running])
    done: list[Started] = []
    try:
        for info in targets:
            if info.running:
                done.append(Started(info.name, 0, already_running=True))
            else:
                done.append(Started(info.name, start_with_budget(rt, info.id, weights[info.id])))
    finally:
        # The rules of those already started, even when a later one fails.
        reconcile(rt, netfilter)
    return done


def _refuse_second_one_to_one(engine: Engine, stopped: list[ContainerInfo]) -> None:
    """Refused before any starts: only one 1:1 container may run on a host."""
    wanted = [t for t in stopped if _mode(t) == "one-to-one"]
    if len(wanted) > 1:
        raise BadInput(f"Only one 1:1 container can run on a host; start one of {', '.join(t.name for t in wanted)}.")
    if not wanted:
        return
    holder = next(
        (
            c.name
            for c in engine.list_containers(all=False, label=f"{MANAGED_LABEL}=true")
            if c.id != wanted[0].id and _mode(c) == "one-to-one" and c.running
        ),
        None,
    )
    if holder is not None:
        raise BadInput(
            f"Container {holder} already runs with 1:1 host ports on this host; stop it before starting "
            f"{wanted[0].name}."
        )


def _label_weight(info: ContainerInfo) -> int:
    try:
        return weight_of(info.labels)
    except BadInput as exc:
        text = info.labels.get(WEIGHT_LABEL, "1")
        raise BadInput(
            f"Container {info.name} has the weight label {WEIGHT_LABEL}={text!r}; it must be 1 or more."
        ) from exc


def stop(engine: Engine, refs: tuple[str, ...], settings: Settings, timeout: int | None = None) -> list[str]:
    """Stop containers; without `timeout` each gets its own stop timeout, so that its media server drains."""
    require_root()
    targets = resolve(engine, refs)
    rt = open_host(engine, settings)
    netfilter = Netfilter()
    for info in targets:
        engine.stop(info.id, timeout=timeout)
    reconcile(rt, netfilter)
    return [t.name for t in targets]


def remove(engine: Engine, refs: tuple[str, ...], force: bool, settings: Settings) -> list[str]:
    require_root()
    targets = resolve(engine, refs)
    running = [t.name for t in targets if t.running]
    if running and not force:
        raise BadInput(f"{', '.join(running)} is running; stop it first or use rm -f.")
    rt = open_host(engine, settings)
    netfilter = Netfilter()
    for info in targets:
        engine.remove(info.id, force=force)
    reconcile(rt, netfilter)
    return [t.name for t in targets]


@dataclass(frozen=True)
class RouteAdvice:
    destination: str
    mask: str
    prefix: int
    gateway: str
    metric: int
    commands: dict[str, str]
    nat_advice: str


def route(engine: Engine) -> RouteAdvice:
    subnet = engine.bridge_subnet()
    network, prefix = hostnet.split_cidr(subnet)
    gateway = hostnet.host_address()
    mask = hostnet.prefix_to_mask(prefix)
    return RouteAdvice(
        destination=network,
        mask=mask,
        prefix=prefix,
        gateway=gateway,
        metric=10,
        commands={
            "linux": f"ip route add {network}/{prefix} via {gateway} metric 10",
            "windows": f"route -p ADD {network} MASK {mask} {gateway} METRIC 10",
            "macos": f"sudo route -n add -net {network}/{prefix} {gateway}",
        },
        nat_advice=(
            "On a VM Docker host in 1:1 mode, clients reach the media server through the VM's address: "
            f"configure the media server as behind NAT with {gateway} as its public address "
            "(XMS: System > Network > Behind NAT)."
        ),
    )
