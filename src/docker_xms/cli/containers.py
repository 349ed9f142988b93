"""Container commands: run, shell, gate, start, stop, rm, route, profiles."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.markup import escape
from rich.table import Table

from docker_xms.cli.render import console, print_json, reporting
from docker_xms.domain.engine_types import RESTART_CHOICES
from docker_xms.domain.labels import MAX_WEIGHT, PORT_CHOICES


@click.command("run")
@click.option("-i", "--image", default=None, help="Image to start (default: the profile's image).")
@click.option(
    "-c",
    "container_address",
    is_flag=True,
    help="Container-address mode: the engine picks host ports; any number of containers.",
)
@click.option("-p", "--profile", default="rtpengine", show_default=True, help="Media-server profile.")
@click.option("--name", default=None, help="Container name.")
@click.option("--media-ports", type=int, default=None, help="Use only the first N media ports of the profile.")
@click.option(
    "--rt-weight",
    type=click.IntRange(min=1, max=MAX_WEIGHT),
    default=1,
    show_default=True,
    help="Share of the real-time pool, by weight.",
)
@click.option(
    "--ports",
    "ports",
    type=click.Choice(PORT_CHOICES),
    default="auto",
    show_default=True,
    help="How media ports reach the container.",
)
@click.option(
    "--bind",
    "bind",
    metavar="ADDR",
    default=None,
    help="Host address of the control and management ports (default: 127.0.0.1 for those without "
    "authentication, such as rtpengine's ng; every address for the others).",
)
@click.option(
    "--advertise",
    "advertise",
    metavar="host|container|ADDR",
    default="host",
    show_default=True,
    help="The address the media server puts in its SDP (a SIP proxy in its headers): the host's default-route "
    "address, the container's own (reached by a static route, see `docker-xms route`), or ADDR, a public "
    "IPv4 address in front of the host.",
)
@click.option("--no-wait", is_flag=True, help="Do not wait for the media server to be ready.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for readiness (default: the profile's).")
@click.option("--keep-on-failure", is_flag=True, help="Keep the container if a step fails, for inspection.")
@click.option("--build-missing", is_flag=True, help="Build the profile's image if it is missing instead of pulling.")
@click.option(
    "--no-agent",
    is_flag=True,
    help="Do not start the docker-xms agent when none runs (then rules of a container removed by hand stay "
    "until the next docker-xms command).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label of your own on the container (repeatable; not in docker-xms's io.docker-xms. namespace).",
)
@click.option(
    "--restart",
    type=click.Choice(RESTART_CHOICES),
    default="no",
    show_default=True,
    help="The engine's restart policy: unless-stopped brings the server back when the engine starts again (after "
    "a reboot), with its share given by the agent.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def run(
    image: str | None,
    container_address: bool,
    profile: str,
    name: str | None,
    media_ports: int | None,
    rt_weight: int,
    ports: str,
    bind: str | None,
    advertise: str,
    no_wait: bool,
    timeout: float | None,
    keep_on_failure: bool,
    build_missing: bool,
    no_agent: bool,
    labels: tuple[str, ...],
    restart: str,
    as_json: bool,
) -> None:
    """Start a media-server container with its real-time budget and print how to reach it."""
    from docker_xms.cli import context
    from docker_xms.usecases.root import require_root
    from docker_xms.usecases.run import RunRequest, validate
    from docker_xms.usecases.run import run as run_container

    # Before anything else: as another user the engine's socket refuses, with a misleading message.
    require_root()
    request = RunRequest(
        profile=profile,
        image=image,
        container_address=container_address,
        name=name,
        media_ports=media_ports,
        rt_weight=rt_weight,
        ports=ports,
        wait=not no_wait,
        timeout=timeout,
        keep_on_failure=keep_on_failure,
        build_missing=build_missing,
        bind=bind,
        advertise=advertise,
        labels=labels,
        restart=restart,
        start_agent=not no_agent and context.settings().start_agent,
    )
    engine = context.engine()
    # SIGTERM (a service manager, kill) and SIGHUP (a closed terminal) undo the run as Ctrl-C does.
    with context.interruptible():
        # What the user asked is refused before the host is opened, so that a mistake is told as such.
        validate(request, context.settings())
        host = context.host(engine)
        if as_json:
            from docker_xms.usecases.images import Quiet

            result = run_container(host, request, Quiet())
            print_json({**asdict(result), "share": result.share})
            return
        with reporting() as reporter:
            result = run_container(host, request, reporter)
    _print_summary(result)


def _print_summary(r: object) -> None:
    from docker_xms.usecases.run import RunResult

    assert isinstance(r, RunResult)
    console.print(
        f"\n[bold]{escape(r.name)}[/] ({r.id[:12]}) runs {escape(r.image)} [dim](profile {r.profile}, {r.mode})[/]"
    )
    console.print(f"Container address: [bold]{r.address}[/]   host address: {r.host_address}")
    console.print(f"Advertised address: [bold]{r.advertise}[/] ({r.advertise_choice}: in SDP, and SIP headers)")
    console.print(f"Media ports: {r.strategy} ({escape(r.strategy_reason)})")
    table = Table("port", "role", "container", "host", "host address")
    for row in r.ports:
        host = f"{row.host}/{row.protocol}" if row.host else "-"
        address = "every address" if row.bind == "0.0.0.0" else row.bind or "-"  # noqa: S104 - shown only
        table.add_row(row.name, row.role, f"{row.container}/{row.protocol}", host, address)
    console.print(table)
    if r.per_group:
        console.print(
            f"Real-time budget: [bold]{r.budget_us:,} us[/] per second ({r.share:.1%} of the {r.pool_us:,} us pool)"
        )
    else:
        console.print("Real-time budget: none needed on this host (SCHED_FIFO needs only CAP_SYS_NICE)")
    if r.cpus:
        console.print(f"CPUs: [bold]{r.cpus}[/] (CPU-set mode: media containers run on CPUs the host keeps for them)")
    verified = "[green]yes[/]" if r.rt_verified else "[red]no[/]"
    console.print(f"Real-time verified: {verified} ({escape(r.rt_detail)})")
    console.print(f"Ready: {'yes' if r.ready else 'no'} ({escape(r.ready_state)})")
    for note in r.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    for warning in r.warnings:
        console.print(f"[bold red]warning:[/] {escape(warning)}")
    if r.summary:
        console.print("\n" + escape(r.summary))
    if r.agent:
        console.print("\n" + escape(r.agent))
    console.print(f"\nShell: {r.shell_command}\nStop:  {r.stop}")


@click.command("shell", context_settings={"ignore_unknown_options": True})
@click.option(
    "--nsenter",
    "use_nsenter",
    is_flag=True,
    help="Enter the namespaces with nsenter, keeping the host's capabilities and cgroup (not the container's).",
)
@click.argument("container")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def shell(container: str, command: tuple[str, ...], use_nsenter: bool) -> None:
    """Open a shell in CONTAINER with its own privileges (docker exec), or run COMMAND there.

    Give the command after `--`: docker-xms shell media1 -- systemctl status
    """
    from docker_xms.cli import context
    from docker_xms.usecases.lifecycle import resolve

    info = resolve(context.engine(), (container,))[0]
    if not info.running:
        raise click.UsageError(f"Container {info.name} is not running.")
    context.enter_shell(info.pid, info.id, command, use_nsenter)


@click.command("gate")
def gate() -> None:
    """Print the shell script a container started by hand runs as PID 1 (`sh -c SCRIPT docker-xms-gate CMD...`):
    it waits until docker-xms has made the container's own systemd cgroup writable, then runs CMD."""
    from docker_xms.domain.recipes import SYSTEMD_GATE

    click.echo(SYSTEMD_GATE)


@click.command("start")
@click.argument("containers", nargs=-1, required=True)
def start(containers: tuple[str, ...]) -> None:
    """Start stopped containers again, each with its share of the real-time pool and its port rules."""
    from docker_xms.cli import context
    from docker_xms.usecases.lifecycle import start as start_containers
    from docker_xms.usecases.root import require_root

    engine = context.engine()
    require_root()
    for started in start_containers(context.host(engine), containers):
        if started.already_running:
            console.print(f"{started.name} already runs")
        elif started.budget_us:
            console.print(f"Started {started.name} with {started.budget_us:,} us real-time")
        else:
            console.print(f"Started {started.name}")


@click.command("stop")
@click.argument("containers", nargs=-1, required=True)
@click.option(
    "-t",
    "--time",
    "timeout",
    type=int,
    default=None,
    help="Seconds before killing (default: the container's stop timeout: its profile's drain grace, else 10).",
)
def stop(containers: tuple[str, ...], timeout: int | None) -> None:
    """Stop containers and share their real-time budget among the others."""
    from docker_xms.cli import context
    from docker_xms.usecases.lifecycle import stop as stop_containers
    from docker_xms.usecases.root import require_root

    engine = context.engine()
    require_root()
    for name in stop_containers(context.host(engine), containers, timeout):
        console.print(f"Stopped {name}")


@click.command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove running containers too.")
def rm(containers: tuple[str, ...], force: bool) -> None:
    """Remove containers and share their real-time budget among the others."""
    from docker_xms.cli import context
    from docker_xms.usecases.lifecycle import remove
    from docker_xms.usecases.root import require_root

    engine = context.engine()
    require_root()
    for name in remove(context.host(engine), containers, force):
        console.print(f"Removed {name}")


@click.command("route")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def route(as_json: bool) -> None:
    """The static route that makes container addresses reachable from the LAN (-c mode)."""
    from docker_xms.cli import context
    from docker_xms.usecases.route import route as route_advice

    advice = route_advice(context.engine())
    if as_json:
        print_json(asdict(advice))
        return
    console.print(
        f"Add a static route on the LAN router or the client:\n"
        f"  destination {advice.destination}  mask {advice.mask}  gateway {advice.gateway}  "
        f"metric {advice.metric}"
    )
    for system, command in advice.commands.items():
        console.print(f"  {system}: {command}")
    console.print(advice.nat_advice)


@click.command("profiles")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def profiles(as_json: bool) -> None:
    """List the media-server profiles (built in, and yours in ~/.config/docker-xms/profiles)."""
    from docker_xms.cli import context

    found = context.profiles()
    if as_json:
        print_json(
            [
                {
                    "name": p.name,
                    "description": p.description,
                    "image": p.image,
                    "source": p.source,
                    "ports": [x.label() for x in p.ports],
                    "media": [x.label() for x in p.media_ranges],
                }
                for p in found
            ]
        )
        return
    table = Table("profile", "image", "media ports", "description", "source")
    for p in found:
        table.add_row(p.name, p.image, ", ".join(x.label() for x in p.media_ranges), p.description, p.source)
    console.print(table)
