"""`docker-xms compose` and `docker-xms node setup`: a profile's service for Compose and Swarm, a node's pool."""

from __future__ import annotations

import shlex

import click

from docker_xms.cli import context
from docker_xms.errors import BadInput


@click.command("compose")
@click.argument("profile", default="rtpengine")
@click.option("--replicas", type=click.IntRange(min=0), default=1, show_default=True, help="Replicas of the service.")
@click.option(
    "--ports",
    "ports",
    type=click.Choice(["dnat", "host"]),
    default="dnat",
    show_default=True,
    help="dnat: the node's bridge, media ranges forwarded by the agent; host: host networking.",
)
@click.option("--name", help="The service's name (default: the profile's).")
@click.option("--image", "-i", help="The image (default: the profile's).")
@click.option(
    "--rt-ms",
    type=click.IntRange(min=1),
    default=95,
    show_default=True,
    help="Real-time ms per second each replica reserves from its node's RT_MS (Swarm's admission).",
)
@click.option(
    "--for",
    "target",
    type=click.Choice(["compose", "stack"]),
    default="compose",
    show_default=True,
    help="compose: docker-compose / docker compose (network_mode); stack: docker stack deploy (external networks).",
)
@click.option(
    "--command",
    "command",
    default="/sbin/init",
    show_default=True,
    help="The image's command (systemd), run on cgroup v1 hosts once the agent has opened its cgroup.",
)
def compose(
    profile: str,
    replicas: int,
    ports: str,
    name: str | None,
    image: str | None,
    rt_ms: int,
    target: str,
    command: str,
) -> None:
    """Print a Compose file for PROFILE: whatever node runs a replica, its agent adopts it."""
    from docker_xms.usecases.fleet import ComposeRequest, compose_text

    request = ComposeRequest(
        profile,
        replicas,
        ports,
        name,
        image,
        rt_ms,
        "stack" if target == "stack" else "compose",
        _words(command),
    )
    click.echo(compose_text(request, context.settings()), nl=False)


def _words(command: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(command))
    except ValueError as exc:
        raise BadInput(f"--command {command!r} cannot be read as a command line: {exc}.") from None


@click.group("node")
def node() -> None:
    """This host as a node of a fleet."""


@node.command("setup")
@click.option("--write", is_flag=True, help="Merge the setting into /etc/docker/daemon.json (the engine must restart).")
@click.option(
    "--pool-ms", type=click.IntRange(min=1), help="The pool to advertise, ms per second (default: this host's)."
)
def setup(write: bool, pool_ms: int | None) -> None:
    """Print (or write) the engine's node-generic-resources setting: this host's real-time pool as RT_MS."""
    from docker_xms.usecases.fleet import node_setup

    # Read whatever the options: settings that cannot be read are refused with --pool-ms too.
    context.settings()
    rt = context.host().rt if pool_ms is None else None
    done = node_setup(rt, pool_ms, write)
    if done.written:
        click.echo(
            f"Wrote RT_MS={done.pool_ms} into {done.path}; restart the engine (systemctl restart docker) for Swarm to see it."
        )
    else:
        click.echo(done.text, nl=False)
