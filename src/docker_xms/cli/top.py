"""`docker-xms top`: the agent's metrics as a live terminal view, from the same use case a scrape runs."""

from __future__ import annotations

import time

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from docker_xms.cli.render import console
from docker_xms.domain.metrics import HostFigures


def frame(figures: HostFigures, steal_rate: float | None = None) -> Group:
    """One screen: the host's line, then a row per managed container that runs."""
    host = f"Host: {figures.mode} real-time"
    if figures.pool_us is not None:
        host += f", pool {figures.pool_us:,} us, parent {figures.parent_us or 0:,} us"
    if figures.steal_seconds is not None:
        host += f", steal {figures.steal_seconds:,.1f} s"
        if steal_rate is not None:
            host += f" ({steal_rate:.2f} s/s now)"
    limit = figures.cpu_latency_limit_us
    host += ", CPU latency limit " + ("none" if limit is None else f"{limit} us")
    table = Table(
        "container", "profile", "mode", "budget us", "share", "rt/other threads", "ready", "advertise", "media ports"
    )
    for c in figures.containers:
        rt = f"{c.rt_threads}/{c.other_threads}"
        ports = "-" if not c.media_ports else f"{c.media_ports}"
        if c.media_ports and c.forwarded_ports is not None:
            ports += f" ({c.forwarded_ports} by {c.forward_rules} rules)"
        table.add_row(
            c.name,
            c.profile,
            c.mode,
            "-" if c.budget_us is None else f"{c.budget_us:,}",
            "-" if c.share is None else f"{c.share:.1%}",
            Text(rt, style="red" if c.rt_threads == 0 else ""),
            "yes" if c.ready else "no",
            c.advertise or "-",
            ports,
        )
    body = table if figures.containers else Text("No managed container runs.")
    return Group(Text(host), body)


@click.command("top")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds between frames."
)
def top(once: bool, interval: float) -> None:
    """Budgets, real-time threads, readiness and port rules of every managed container, refreshed live.

    The same figures as `docker-xms agent --metrics` serves, computed the same way. Ctrl-C ends it.
    """
    from rich.live import Live

    from docker_xms.cli import context
    from docker_xms.usecases.metrics import Figures

    figures = Figures(context.settings(), context.netfilter())
    if once:
        console.print(frame(figures()))
        return
    before = figures()
    last = time.monotonic()
    try:
        with Live(frame(before), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                now = figures()
                elapsed = time.monotonic() - last
                last += elapsed
                rate = None
                if now.steal_seconds is not None and before.steal_seconds is not None and elapsed > 0:
                    rate = (now.steal_seconds - before.steal_seconds) / elapsed
                live.update(frame(now, rate))
                before = now
    except KeyboardInterrupt:
        return
