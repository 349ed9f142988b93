"""Running a media server: `run` creates its container with a share of the real-time pool, a port plan and
its port rules, and undoes all of it when any step fails (or a signal comes).

What `run` decides for the container (its mode, weight, host ranges, forwards, advertised address) is
kept in docker-xms's own record (usecases/adoption.record, under the host lock); the container's labels
carry a copy of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from docker_xms.adapters import cgroupns, hostnet
from docker_xms.adapters.engine import Engine
from docker_xms.adapters.profile_store import load_profile
from docker_xms.adapters.signals import deferred
from docker_xms.domain import ports as port_plans
from docker_xms.domain.boot import SYSTEMD_PATHS, systemd_boot, v2_systemd_refusal
from docker_xms.domain.compose import DEFAULT_COMMAND, stop_timeout_s
from docker_xms.domain.engine_types import RESTART_CHOICES, CreateSpec, Healthcheck
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    ADVERTISE_OWN,
    CONTAINER_ADDRESS,
    MANAGED_LABEL,
    MODE_LABEL,
    ONE_TO_ONE,
    PLAN_GIVEN,
    PLAN_LABEL,
    PROFILE_LABEL,
    WEIGHT_LABEL,
    owner_labels,
)
from docker_xms.domain.names import parse_ref
from docker_xms.domain.plan_unit import PLAN_GIVEN_ENV
from docker_xms.domain.pool import holds
from docker_xms.domain.profiles import MEDIA_ENV, MEDIA_INSTANCE_FILE, MEDIA_NONE, Profile
from docker_xms.domain.reach import Addresses, MediaRow, PortRow, media_rows, port_rows, reach
from docker_xms.domain.recipes import STOP_SIGNAL
from docker_xms.domain.watchdog import rttime_limit
from docker_xms.errors import BadInput, CgroupsNotWritable, Interrupted, NotFound, XmsError
from docker_xms.settings import Settings
from docker_xms.usecases import adoption, images, readiness
from docker_xms.usecases.agent_install import ensure_agent
from docker_xms.usecases.boundaries import EngineApi, NetfilterApi
from docker_xms.usecases.host import Host
from docker_xms.usecases.images import Reporter
from docker_xms.usecases.plan import instance_files, instance_values
from docker_xms.usecases.reconcile import live_forwards, reconcile
from docker_xms.usecases.rt import (
    VERIFY_WAIT_S,
    Rebalance,
    RtHost,
    Verification,
    reserve,
    start_once_freed,
    verify,
)

if TYPE_CHECKING:
    from docker_xms.domain.labels import Mode, Strategy

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


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
    # The engine's restart policy (RESTART_CHOICES).
    restart: str = "no"


@dataclass
class RunResult:
    id: str
    name: str
    image: str
    profile: str
    mode: Mode
    address: str
    host_address: str
    strategy: str
    strategy_reason: str
    ports: list[PortRow]
    media: list[MediaRow]
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
    # CPU-set mode: the CPUs it runs on ("1"); "" in the other modes.
    cpus: str = ""

    @property
    def share(self) -> float:
        return self.budget_us / self.pool_us if self.pool_us else 0.0


def validate(request: RunRequest, settings: Settings) -> Profile:
    """The request's profile; a request that could work on no host is refused before this one is looked at."""
    profile = load_profile(request.profile, settings.profile_dirs)
    if request.name is not None and not NAME_RE.match(request.name):
        raise BadInput(f"{request.name!r} is not a valid container name: use letters, digits, '_', '.' or '-'.")
    if request.rt_weight < 1:
        raise BadInput(f"--rt-weight must be 1 or more, not {request.rt_weight}.")
    if request.bind is not None:
        port_plans.check_bind(request.bind)
    if request.restart not in RESTART_CHOICES:
        raise BadInput(f"--restart must be one of {', '.join(RESTART_CHOICES)}, not {request.restart!r}.")
    if request.timeout is not None and request.timeout <= 0:
        raise BadInput(f"--timeout must be above 0 seconds, not {request.timeout}.")
    port_plans.check_advertise(request.advertise)
    owner_labels(settings.label_pairs + request.labels)
    parse_ref(request.image or profile.image)
    return profile


def run(host: Host, request: RunRequest, reporter: Reporter) -> RunResult:
    """Start a media server with its share of the real-time pool and its ports; undo all of it on failure."""
    engine, rt, netfilter, settings = host.engine, host.rt, host.netfilter, host.settings
    profile = validate(request, settings)
    image = request.image or profile.image
    mode = CONTAINER_ADDRESS if request.container_address else ONE_TO_ONE
    if request.name and engine.find_container(request.name) is not None:
        raise BadInput(f"A container named {request.name} already exists; choose another --name or remove it.")
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
            container_id = launch.start(balance.arriving_us, balance.arriving_cpus)
        # A container gone already fails this run, which is then undone like any other.
        engine.get_container(container_id)
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
        proof = verify(rt, container_id, timeout_s=VERIFY_WAIT_S) if request.wait else None
    except BaseException as exc:
        # A second signal must not cut the rollback short: the first already asked to stop.
        with deferred():
            if created and not request.keep_on_failure:
                reporter.detail(UNDOING)
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
    outcome = _Outcome(
        profile=profile,
        container_id=container_id,
        mode=mode,
        plan=launch.plan,
        choice=choice,
        balance=balance,
        state=state,
        proof=proof,
    )
    result = _result(engine, outcome)
    if request.start_agent:
        result.agent = _ensure_agent(settings)
    return result


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
        # NotFound on purpose, whatever stopped the pull: the image the user named is not to be had here, which
        # the user fixes (exit 2), and the pull's own error stays the cause.
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


def advertise_address(choice: str) -> str:
    """The address a `run --advertise` choice stands for; "" for the container's own."""
    choice = port_plans.check_advertise(choice)
    if choice == "host":
        return hostnet.host_address()
    return "" if choice == ADVERTISE_OWN else choice


@dataclass
class _Launch:
    """Creating and starting the new container of a `run` inside its reservation; what it created is kept
    in `created` at once, so that a failure at any later step (or a signal) can remove it."""

    engine: EngineApi
    rt: RtHost
    netfilter: NetfilterApi
    profile: Profile
    request: RunRequest
    mode: Mode
    strategy: Strategy
    image: str
    reporter: Reporter
    created: list[str] = field(default_factory=list)
    plans: list[port_plans.PortPlan] = field(default_factory=list)

    @property
    def plan(self) -> port_plans.PortPlan:
        return self.plans[-1]

    def start(self, budget_us: int, cpus: str = "") -> str:
        engine, profile, image, netfilter = self.engine, self.profile, self.image, self.netfilter
        # Under the host lock: the ranges other containers hold cannot change meanwhile.
        plan = _plan_ports(engine, profile, self.request, self.mode, self.strategy, self.rt.settings)
        self.plans.append(plan)
        command = engine.image_command(image)
        spec = _create_spec(self.rt, profile, self.request, self.mode, plan, image, budget_us, command, cpus)
        self.reporter.phase(
            f"Starting {profile.name} from {image}"
            + (f" with {budget_us:,} us real-time" if budget_us else "")
            + (f" on CPU {cpus}" if cpus else "")
        )
        # Held together, so that a signal cannot leave a container this run does not know it created.
        with deferred():
            try:
                container_id = engine.create_container(spec)
            except CgroupsNotWritable as exc:
                raise BadInput(v2_systemd_refusal()) from exc
            self.created.append(container_id)
            # What was decided, in docker-xms's own record: the labels are only a copy of it.
            adoption.record(self.rt.settings, container_id, dict(spec.labels))
        if not any(engine.path_exists(container_id, p) for p in SYSTEMD_PATHS):
            raise BadInput(
                f"Image {image} has no systemd ({' or '.join(SYSTEMD_PATHS)} is missing); build it on a systemd "
                "base image (docker-xms build-base)."
            )
        media = plan.media_range
        if media and profile.media_config == MEDIA_INSTANCE_FILE:
            host_ports = plan.publish if plan.network_mode != "host" else None
            values = instance_values(profile, advertise_address(self.request.advertise), host_ports)
            engine.put_files(container_id, instance_files(profile, media, values))
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
    problem = cgroupns.open_systemd_cgroup(info.pid, rt.settings.engine_proc)
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
    mode: Mode,
    strategy: Strategy,
    settings: Settings,
) -> port_plans.PortPlan:
    """The port plan for a new container, refusing a second 1:1 container and host ports in use.

    The host ranges other containers hold come from what docker-xms decided for them (its records and the
    plans of adopted containers, usecases/adoption.held_plans), never from labels; every host media range
    lies in the media port pool.
    """
    managed = engine.list_containers(all=True, label=f"{MANAGED_LABEL}=true")
    decided = adoption.held_plans(settings)
    if mode == ONE_TO_ONE:
        for other in managed:
            if other.running and decided.get(other.id, {}).get(MODE_LABEL) == ONE_TO_ONE:
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
            if cid in existing and not (mode == ONE_TO_ONE and labels.get(MODE_LABEL) == ONE_TO_ONE)
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
        same_ports=profile.media_config != MEDIA_NONE and len(profile.media_ranges) == 1,
    )
    pool = adoption.media_pool(settings)
    for m in plan.media:
        if plan.forwards and not holds(pool, m.host_start, m.host_end):
            raise BadInput(
                f"Host ports {m.host_start}-{m.host_end} of {m.name} lie outside the media port pool "
                f"({settings.media_port_pool}); add them to media_port_pool, or use -c."
            )
    if mode == ONE_TO_ONE:
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
    mode: Mode,
    plan: port_plans.PortPlan,
    image: str,
    budget_us: int = 0,
    image_command: tuple[str, ...] = DEFAULT_COMMAND,
    cpus: str = "",
) -> CreateSpec:
    labels = {
        **owner_labels(rt.settings.label_pairs + request.labels),
        MANAGED_LABEL: "true",
        PROFILE_LABEL: profile.name,
        MODE_LABEL: mode,
        WEIGHT_LABEL: str(request.rt_weight),
        ADVERTISE_LABEL: advertise_address(request.advertise) or ADVERTISE_OWN,
        # Its plan is in its instance files before it starts: an image that would wait for one does not.
        PLAN_LABEL: PLAN_GIVEN,
        **plan.labels(),
    }
    env = {**profile.env, PLAN_GIVEN_ENV: PLAN_GIVEN}
    media = plan.media_range
    if media and profile.media_config == MEDIA_ENV:
        env.update({"DOCKER_XMS_MEDIA_START": str(media[0]), "DOCKER_XMS_MEDIA_END": str(media[1])})
        env["DOCKER_XMS_ADVERTISE_ADDRESS"] = labels[ADVERTISE_LABEL].replace(ADVERTISE_OWN, "")
    boot = systemd_boot(rt.host.cgroup_version, profile.tmpfs, image_command, rt.userns, rt.engine_kind)
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
        cpuset_cpus=cpus,
        # Time for the image's drain (its profile's [drain] grace) before the engine kills.
        stop_timeout=stop_timeout_s(profile),
        tmpfs=boot.tmpfs,
        cgroupns=boot.cgroupns,
        entrypoint=boot.entrypoint,
        command=boot.command,
        rtprio=boot.rtprio,
        security_opt=boot.security_opt,
        restart_policy="" if request.restart == "no" else request.restart,
        rttime_us=_rttime(profile.watchdog_ms),
    )


def _rttime(watchdog_ms: int) -> tuple[int, int] | None:
    limit = rttime_limit(watchdog_ms)
    return None if limit is None else (limit.soft_us, limit.hard_us)


def _ephemeral_sysctl(plan: port_plans.PortPlan) -> dict[str, str]:
    if plan.container_ephemeral is None:
        return {}
    low, high = plan.container_ephemeral
    return {"net.ipv4.ip_local_port_range": f"{low} {high}"}


# Shown while a failed or stopped run removes what it made: the second or so that takes is not a hang.
UNDOING = "undoing: removing the container, giving its budget back, removing its port rules"


def _undo(engine: EngineApi, rt: RtHost, netfilter: NetfilterApi, container_id: str) -> None:
    """Remove what a failed run created and give its budget back to the others."""
    engine.remove(container_id, force=True)
    reconcile(rt, netfilter)


@dataclass(frozen=True)
class _Outcome:
    """What a run that succeeded ends with, for its result."""

    profile: Profile
    container_id: str
    mode: Mode
    plan: port_plans.PortPlan
    choice: port_plans.StrategyChoice
    balance: Rebalance
    state: readiness.Check
    # None when the run did not wait for the server, so nothing was checked.
    proof: Verification | None


def _result(engine: EngineApi, outcome: _Outcome) -> RunResult:
    info = engine.get_container(outcome.container_id)
    host_ip = hostnet.host_address()
    address = info.ip_address or host_ip
    rows = port_rows(outcome.profile, info.ports, outcome.plan)
    advertised = info.labels.get(ADVERTISE_LABEL, ADVERTISE_OWN)
    reached = reach(outcome.profile, outcome.plan, rows, info.name, Addresses(address, host_ip, advertised))
    return RunResult(
        id=info.id,
        name=info.name,
        image=info.image,
        profile=outcome.profile.name,
        mode=outcome.mode,
        address=address,
        host_address=host_ip,
        strategy=outcome.plan.strategy,
        strategy_reason=outcome.choice.reason,
        ports=rows,
        media=media_rows(outcome.plan),
        budget_us=outcome.balance.arriving_us,
        pool_us=outcome.balance.pool_us,
        per_group=outcome.balance.per_group,
        rt_verified=outcome.proof is not None and outcome.proof.ok,
        rt_detail=outcome.proof.fifo_detail if outcome.proof is not None else "not checked (--no-wait)",
        ready=outcome.state.ready,
        ready_state=outcome.state.state,
        summary=reached.summary,
        urls=reached.urls,
        shell_command=f"docker-xms shell {info.name}",
        stop=f"docker-xms stop {info.name}",
        notes=reached.notes,
        advertise=reached.advertise,
        advertise_choice=reached.advertise_choice,
        warnings=reached.warnings,
        cpus=outcome.balance.arriving_cpus,
    )
