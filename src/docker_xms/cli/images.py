"""Image commands: build-base, build, flatten, push, login."""

from __future__ import annotations

import click
from rich.markup import escape

from docker_xms.cli.render import console, human_size, reporting
from docker_xms.domain.recipes import DISTROS


@click.command("build-base")
@click.option("-t", "--tag", required=True, help="Name of the image to build, e.g. docker-xms/debian12-systemd.")
@click.option("--distro", type=click.Choice(DISTROS), default="debian12", show_default=True)
@click.option("--offline", is_flag=True, help="Build the root file system with mmdebstrap (debian12 only).")
def build_base(tag: str, distro: str, offline: bool) -> None:
    """Build a base image that boots full systemd in a container.

    Where a registry answers, the distro's official image plus systemd; with --offline (and for
    debian12 whenever no registry answers) a root file system made by mmdebstrap from this host's apt
    configuration.
    """
    from docker_xms.cli import context
    from docker_xms.domain.names import parse_ref
    from docker_xms.usecases.images import build_base as build

    parse_ref(tag, allow_digest=False)
    engine = context.engine()
    with reporting() as reporter:
        image = build(engine, tag, distro, offline, reporter)
    console.print(f"Built {image.ref} ({image.id[7:19]}, {human_size(image.size)}) from {image.how}.")


@click.command("build")
@click.option(
    "-p",
    "--profile",
    "profile_name",
    default=None,
    help="Media-server profile whose recipe to build [default: rtpengine, or xms with --installer].",
)
@click.option("-t", "--tag", default=None, help="Name of the image (default: the profile's image).")
@click.option("--if-missing", is_flag=True, help="Do nothing if an image from the same recipe exists.")
@click.option(
    "--installer", default=None, help="The media server's installer tarball, e.g. dialogic_xms_<version>.tgz."
)
@click.option("--jre", default=None, help="A JRE RPM to install first, e.g. jre-8u201-linux-x64.rpm.")
@click.option("--base", default=None, help="systemd base image (default: docker-xms/<distro>-systemd:latest).")
@click.option("--media-ports", type=int, default=None, help="Bake only the first N media ports (default: all).")
@click.option("--install-args", default=None, help="Arguments of the install script (default: -a -s).")
@click.option("--distro", type=click.Choice(DISTROS), default=None, help="The base's distro, for --dockerfile-only.")
@click.option("--dockerfile-only", is_flag=True, help="Print the Dockerfile of an installer build and stop.")
@click.option(
    "--agent", is_flag=True, help="Build the agent's image (docker-xms itself, offline) instead of a media server's."
)
def build(
    profile_name: str | None,
    tag: str | None,
    if_missing: bool,
    installer: str | None,
    jre: str | None,
    base: str | None,
    media_ports: int | None,
    install_args: str | None,
    distro: str | None,
    dockerfile_only: bool,
    agent: bool,
) -> None:
    """Build a media-server image from a profile's recipe (e.g. the rtpengine demo) or, with
    --installer, from the media server's own installer (XMS) on a systemd base.

    With --agent, the agent's image instead (default docker-xms/agent:latest): this docker-xms on
    Debian 12's Python, built offline, for `docker-xms agent service` to run on every node of a swarm."""
    import shlex

    from docker_xms.cli import context
    from docker_xms.domain.names import parse_ref
    from docker_xms.errors import BadInput
    from docker_xms.usecases.images import build_profile_image

    if agent:
        _build_agent(tag, if_missing, profile_name, installer, dockerfile_only)
        return
    profile = context.profile(profile_name or ("xms" if installer else "rtpengine"))
    if tag is not None:
        parse_ref(tag, allow_digest=False)
    if installer is None:
        given = [f for f, v in (("--jre", jre), ("--base", base), ("--media-ports", media_ports)) if v is not None]
        if dockerfile_only or install_args is not None or given:
            raise BadInput(f"{', '.join(given) or 'That option'} needs --installer.")
        engine = context.engine()
        with reporting() as reporter:
            image = build_profile_image(engine, profile, tag, reporter, reuse=if_missing)
        verb = "Reused" if image.reused else "Built"
        console.print(f"{verb} {image.ref} ({image.id[7:19]}, {human_size(image.size)}) from {image.how}.")
        return

    from docker_xms.usecases.pipeline import build_xms, plan_xms_build

    args = tuple(shlex.split(install_args)) if install_args is not None else None
    plan = plan_xms_build(profile, tag, installer, jre, base, media_ports, args)
    if dockerfile_only:
        print(plan.dockerfile(distro or profile.build.distro), end="")
        return
    engine = context.engine()
    with reporting() as reporter:
        built = build_xms(engine, plan, reporter)
    if built.install_status:
        console.print(
            f"[yellow]The install script exited with status {built.install_status}; the build went on, "
            "as the XMS tech note allows. Its output:[/]"
        )
        console.print(escape(built.install_log.rstrip()), soft_wrap=True)
    console.print(
        f"Built {built.ref} ({built.id[7:19]}, {human_size(built.size)}) from {escape(plan.installer_path.name)} "
        f"on {plan.base} ({built.distro}) in {built.seconds:.0f} s."
    )


def _build_agent(
    tag: str | None, if_missing: bool, profile_name: str | None, installer: str | None, dockerfile_only: bool
) -> None:
    from docker_xms.cli import context
    from docker_xms.domain.names import parse_ref
    from docker_xms.errors import BadInput
    from docker_xms.usecases.images import build_agent_image

    if profile_name or installer or dockerfile_only:
        raise BadInput(
            "--agent builds the agent's image alone; leave out --profile, --installer and --dockerfile-only."
        )
    if tag is not None:
        parse_ref(tag, allow_digest=False)
    engine = context.engine()
    with reporting() as reporter:
        image = build_agent_image(engine, tag, reporter, reuse=if_missing)
    verb = "Reused" if image.reused else "Built"
    console.print(f"{verb} {image.ref} ({image.id[7:19]}, {human_size(image.size)}) from {image.how}.")


@click.command("flatten")
@click.argument("source")
@click.argument("target")
def flatten(source: str, target: str) -> None:
    """Squash SOURCE into a one-layer image TARGET that keeps all of its configuration.

    Command, entrypoint, environment, exposed ports, working directory, user, labels, volumes,
    stop signal and healthcheck are carried over, also on engines that refuse some of them in an import.
    """
    from docker_xms.cli import context
    from docker_xms.domain.names import parse_ref
    from docker_xms.usecases.pipeline import flatten as run_flatten

    parse_ref(target, allow_digest=False)
    engine = context.engine()
    with reporting() as reporter:
        result = run_flatten(engine, source, target, reporter)
    console.print(
        f"Flattened {result.source} ({human_size(result.size_before)}, {result.layers_before} layers) "
        f"into {result.ref} ({result.id[7:19]}, {human_size(result.size_after)}, {result.layers_after} layer"
        f"{'' if result.layers_after == 1 else 's'})."
    )


@click.command("push")
@click.argument("image")
def push(image: str) -> None:
    """Push IMAGE (NAME[:TAG], the registry in its name) with the engine's stored credentials."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

    from docker_xms.cli import context
    from docker_xms.domain.names import parse_ref
    from docker_xms.usecases.pipeline import LayerEvent
    from docker_xms.usecases.pipeline import push as run_push

    parse_ref(image, allow_digest=False)
    engine = context.engine()
    columns = (TextColumn("{task.fields[layer]}"), BarColumn(), DownloadColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, TaskID] = {}

        def show(event: LayerEvent) -> None:
            task = tasks.get(event.layer)
            if task is None:
                task = progress.add_task(event.status, layer=event.layer, total=event.total or None)
                tasks[event.layer] = task
            done = event.status in ("Pushed", "Layer already exists") or event.status.startswith("Mounted from")
            total = event.total or None
            if done:
                current = progress.tasks[task].total or 1
                progress.update(task, description=event.status, total=current, completed=current)
            else:
                progress.update(task, description=event.status, total=total, completed=event.current)

        result = run_push(engine, image, show)
    layers = f"{result.layers} layer{'' if result.layers == 1 else 's'}"
    console.print(f"Pushed {result.ref} ({layers}): {result.digest}")


@click.command("login", context_settings={"ignore_unknown_options": True})
@click.argument("server", required=False)
@click.option("-u", "--username", default=None, help="User name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def login(server: str | None, username: str | None, password_stdin: bool) -> None:
    """Log in to a registry: hands over to `docker login`, which stores the credentials the engine uses."""
    import os
    import shutil

    from docker_xms.errors import BadInput

    docker = shutil.which("docker")
    if docker is None:
        raise BadInput("The docker client is not installed: install it (e.g. apt-get install docker.io) and retry.")
    args = ["docker", "login"]
    if username:
        args += ["--username", username]
    if password_stdin:
        args.append("--password-stdin")
    if server:
        args.append(server)
    # No shell: the arguments reach `docker login` exactly as given.
    os.execvp(docker, args)  # noqa: S606
