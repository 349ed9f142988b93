"""`docker-xms agent service`: the agent as a Swarm global service, one task on every node."""

from __future__ import annotations

import click

from docker_xms.domain.recipes import AGENT_IMAGE


@click.command("service")
@click.option("--image", default=AGENT_IMAGE, show_default=True, help="The agent image (docker-xms build --agent).")
@click.option(
    "--cgroup-parent",
    default=None,
    help="The nodes' engine --cgroup-parent, if not the default; may be a template such as /{{.Node.Hostname}}.",
)
@click.option("--rt-pool-us", type=click.IntRange(min=1), default=None, help="Cap on each node's real-time pool.")
@click.option(
    "--interval", type=click.FloatRange(min=1.0), default=None, help="The agent's --interval (default: its own)."
)
@click.option("--metrics", metavar="[ADDR:]PORT", default=None, help="Have each task serve Prometheus metrics.")
@click.option(
    "--create", is_flag=True, help="Create the service on this engine (a swarm manager) instead of printing it."
)
def service(
    image: str,
    cgroup_parent: str | None,
    rt_pool_us: int | None,
    interval: float | None,
    metrics: str | None,
    create: bool,
) -> None:
    """Print (or --create) the Swarm global service that runs the agent on every node.

    Each task runs on its node's host network (DNAT rules go into the node's own netfilter), with the
    engine's socket, the node's /sys/fs/cgroup writable, its /proc read-only, and NET_ADMIN, SYS_NICE and
    SYS_ADMIN (to open a media server's gate): never --privileged.
    """
    from docker_xms.cli import context
    from docker_xms.domain.agent_service import render
    from docker_xms.usecases.agent_service import create as create_service
    from docker_xms.usecases.agent_service import service_from_settings

    spec = service_from_settings(context.settings(), image, cgroup_parent, rt_pool_us, metrics, interval)
    if not create:
        click.echo(render(spec), nl=False)
        return
    service_id = create_service(context.engine(), spec)
    click.echo(f"Created the global service {spec.name} ({service_id[:12]}): one agent on every node.")
