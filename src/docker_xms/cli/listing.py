"""`docker-xms ps`, kept apart from the other commands so that it starts without the Docker SDK."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from docker_xms.usecases.listing import PsRow


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[PsRow], str]
    # Lower first: columns are dropped from the highest number up until the table fits the terminal.
    priority: int
    # Names and ids are never cut, as `docker ps` keeps them; the others are shown whole or not at all.
    whole: bool = False


def _budget(row: PsRow) -> str:
    return "-" if row.budget_us is None else f"{row.budget_us:,}"


COLUMNS = (
    Column("name", lambda r: r.name, 0, whole=True),
    Column("id", lambda r: r.id, 0, whole=True),
    Column("profile", lambda r: r.profile, 3),
    Column("mode", lambda r: r.mode, 5),
    Column("status", lambda r: r.status, 1),
    Column("ready", lambda r: r.health, 4),
    Column("address", lambda r: r.address, 6),
    Column("ports", lambda r: f"{r.strategy}: {r.ports}" if r.strategy else r.ports, 7),
    Column("budget us", _budget, 2),
    Column("origin", lambda r: r.origin, 8),
    Column("plan", lambda r: r.plan, 9),
)
# What a column adds to a boxed table besides its text: a space either side and one border.
_FRAME = 3


def fit_columns(rows: list[PsRow], width: int, wide: bool = False) -> list[Column]:
    """The columns to show, in their usual order: every one with `wide`, else those that fit `width` whole."""
    if wide:
        return list(COLUMNS)
    used = 1
    chosen: set[str] = set()
    for column in sorted(COLUMNS, key=lambda c: c.priority):
        if column.whole or used + _need(column, rows) <= width:
            chosen.add(column.header)
            used += _need(column, rows)
    return [c for c in COLUMNS if c.header in chosen]


def _need(column: Column, rows: list[PsRow]) -> int:
    return max([len(column.header), *(len(column.cell(r)) for r in rows)]) + _FRAME


_GO_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def formatted(row: PsRow, template: str) -> str:
    """One line per container from `--format`: Python's "{name} {id}" or Go-style "{{.Name}} {{.ID}}"."""
    values = {key: ("-" if value is None else value) for key, value in asdict(row).items()}
    by_go_name = {name.replace("_", "").lower(): name for name in values}
    text = template.replace("\\t", "\t").replace("\\n", "\n")

    def python_field(match: re.Match[str]) -> str:
        name = by_go_name.get(match.group(1).replace("_", "").lower())
        if name is None:
            raise click.BadParameter(
                f"there is no field {match.group(1)}; the fields are {', '.join(values)}.", param_hint="'--format'"
            )
        return "{" + name + "}"

    text = _GO_FIELD.sub(python_field, text)
    try:
        return text.format(**values)
    except KeyError as exc:
        raise click.BadParameter(
            f"there is no field {exc.args[0]}; the fields are {', '.join(values)}.", param_hint="'--format'"
        ) from exc
    except (ValueError, IndexError) as exc:
        raise click.BadParameter(f"{template!r} is no format string ({exc}).", param_hint="'--format'") from exc


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--wide", is_flag=True, help="Show every column, however wide the table gets.")
@click.option(
    "--format",
    "template",
    metavar="TEMPLATE",
    help="One line per container, e.g. '{name}\\t{id}\\t{budget_us}' or '{{.Name}}\\t{{.ID}}'.",
)
def ps(as_json: bool, wide: bool, template: str | None) -> None:
    """List the media-server containers docker-xms manages.

    The table shows the columns that fit the terminal, names and ids whole; --wide shows all of them.
    """
    from docker_xms.cli import context
    from docker_xms.usecases.listing import budget_reader, json_text, managed_summaries, plan_reader
    from docker_xms.usecases.listing import ps as list_containers

    settings = context.settings()
    rows = list_containers(managed_summaries(settings), budget_reader(settings), plan_reader(settings))
    if as_json:
        print(json_text(rows))
        return
    if template is not None:
        for row in rows:
            print(formatted(row, template))
        return
    from rich.table import Table

    from docker_xms.cli.render import console

    columns = fit_columns(rows, console.width, wide)
    table = Table(*(c.header for c in columns))
    for column, spec in zip(table.columns, columns, strict=True):
        column.no_wrap = spec.whole
    for row in rows:
        table.add_row(*(c.cell(row) for c in columns))
    # Nothing is cut: when names and ids alone (or --wide's columns) are wider than the terminal, the lines
    # run past it, as `docker ps`'s do.
    # (print's own width cannot exceed the console's, so the console is widened.)
    console.width = max(console.width, 1 + sum(_need(c, rows) for c in columns))
    console.print(table)
