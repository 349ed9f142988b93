"""`docker-xms agent`: the host service that keeps budgets and port rules right, and its installer."""

from __future__ import annotations

import sys
from datetime import datetime

import click


@click.group("agent", invoke_without_command=True)
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds between reconciliations when no event comes, in case one was missed.",
)
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
@click.option("--timestamps", is_flag=True, help="Start each log line with the time (journald adds its own).")
@click.option(
    "--cpu-latency-us",
    type=click.IntRange(min=0),
    default=None,
    help="While running, keep CPUs out of idle states slower to leave than this (0: idle CPUs poll).",
)
@click.option(
    "--metrics",
    "metrics",
    metavar="[ADDR:]PORT",
    default=None,
    help="Serve Prometheus metrics on ADDR:PORT (a bare PORT listens on 127.0.0.1 only).",
)
@click.option(
    "--probe-every",
    type=click.FloatRange(min=1.0),
    default=None,
    metavar="S",
    help="With --metrics: every S seconds, a 0.5 s wake-up probe in each managed container, served as a histogram.",
)
@click.option(
    "--linger",
    type=click.FloatRange(min=0.0),
    default=0.0,
    metavar="S",
    help="On SIGTERM, go on reconciling for up to S seconds while managed containers still run (a second "
    "SIGTERM ends it): on a node drained with its media servers, their rules go with them.",
)
@click.option(
    "--no-reconcile",
    is_flag=True,
    help="Only serve --metrics: change nothing, follow no events (and take no agent lock).",
)
@click.pass_context
def agent(
    ctx: click.Context,
    interval: float,
    once: bool,
    timestamps: bool,
    cpu_latency_us: int | None,
    metrics: str | None,
    probe_every: float | None,
    linger: float,
    no_reconcile: bool,
) -> None:
    """Follow the engine's events and keep real-time budgets and media port rules right.

    Reconciles at start, on every container start, die, destroy and update, when the engine comes
    back after a restart, and every --interval seconds. Logs one plain line per change. SIGTERM or
    SIGINT: finishes the reconciliation under way and exits 0.

    With --cpu-latency-us it also holds the kernel's CPU wake-up latency limit (/dev/cpu_dma_latency) for as
    long as it runs, so that a media thread woken on an idle CPU is not delayed by a deep idle state or, on a
    virtual machine, by a halted vCPU.

    With --metrics it serves the budgets, thread policies, readiness and port rules of every managed
    container and the host's pool, steal time and reconciliations in Prometheus's text format, computed
    on each scrape. --no-reconcile with --metrics makes it an exporter only, for watching a host whose
    budgets something else keeps. --probe-every S adds how late periodic wake-ups come inside each managed
    container at its profile's priority: a 0.5 s probe (1 ms period) in each, one after another, every S s.
    """
    if ctx.invoked_subcommand is not None:
        return
    from docker_xms.cli import context
    from docker_xms.usecases.agent import AgentRequest, run_agent
    from docker_xms.usecases.root import require_root

    request = AgentRequest(
        interval=interval,
        once=once,
        cpu_latency_us=cpu_latency_us,
        metrics=metrics,
        probe_every=probe_every,
        linger=linger,
        no_reconcile=no_reconcile,
    )

    def log(line: str) -> None:
        prefix = datetime.now().astimezone().isoformat(timespec="milliseconds") + " " if timestamps else ""
        # Plain lines, flushed at once: journald and pipes get each change when it happens.
        sys.stdout.write(prefix + line + "\n")
        sys.stdout.flush()

    require_root()
    run_agent(context.settings(), request, log, context.host_opener())


@agent.command("install")
@click.option("--print", "print_only", is_flag=True, help="Only print the systemd unit.")
@click.option(
    "--cpu-latency-us",
    type=click.IntRange(min=0),
    default=None,
    help="Have the service hold this CPU wake-up latency limit (see docker-xms agent --help).",
)
@click.option("--metrics", metavar="[ADDR:]PORT", default=None, help="Have the service serve Prometheus metrics there.")
def install(print_only: bool, cpu_latency_us: int | None, metrics: str | None) -> None:
    """Install the agent as a systemd service (docker-xms-agent.service), enabled and started."""
    from docker_xms.cli import context
    from docker_xms.cli.render import err_console
    from docker_xms.usecases.agent_install import install as install_unit

    if print_only:
        result = install_unit(context.settings(), write=False, cpu_latency_us=cpu_latency_us, metrics=metrics)
        click.echo(result.unit, nl=False)
        return
    from docker_xms.usecases.root import require_root

    require_root()
    result = install_unit(context.settings(), cpu_latency_us=cpu_latency_us, metrics=metrics)
    if result.installed:
        click.echo(f"Installed {result.path}; docker-xms-agent.service is enabled and running.")
        return
    err_console.print(
        f"systemd is not this host's init system, so {result.path} was not installed. The unit, for reference:",
        soft_wrap=True,
    )
    click.echo(result.unit, nl=False)
    err_console.print(
        f"Run the agent under the init system of your choice, or: {result.alternative}", soft_wrap=True, markup=False
    )
    sys.exit(1)


def _add_service() -> None:
    from docker_xms.cli.agent_service import service

    agent.add_command(service)


_add_service()
