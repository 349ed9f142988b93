"""`docker-xms ps`, kept apart from the other commands so that it starts without the Docker SDK."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def ps(as_json: bool) -> None:
    """List the media-server containers docker-xms manages."""
    from docker_xms.cli import context
    from docker_xms.usecases.listing import budget_reader, managed_summaries
    from docker_xms.usecases.listing import ps as list_containers

    settings = context.settings()
    rows = list_containers(managed_summaries(settings), budget_reader(settings))
    if as_json:
        print(json.dumps([asdict(row) for row in rows], indent=2, sort_keys=True))
        return
    from rich.table import Table

    from docker_xms.cli.render import console

    table = Table("name", "id", "profile", "mode", "status", "ready", "address", "ports", "budget us")
    for row in rows:
        budget = "-" if row.budget_us is None else f"{row.budget_us:,}"
        ports = f"{row.strategy}: {row.ports}" if row.strategy else row.ports
        table.add_row(row.name, row.id, row.profile, row.mode, row.status, row.health, row.address, ports, budget)
    console.print(table)
