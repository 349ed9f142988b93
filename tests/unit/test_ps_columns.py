"""Which `ps` columns fit the terminal, and --format's two styles, on plain rows."""

from __future__ import annotations

import click
import pytest

from docker_xms.cli.listing import COLUMNS, fit_columns, formatted
from docker_xms.usecases.listing import PsRow

ROW = PsRow(
    id="18246e0c1f2a",
    name="docker-xms-demo",
    profile="rtpengine",
    mode="one-to-one",
    status="running",
    health="healthy",
    address="172.17.0.2",
    strategy="dnat",
    ports="2223->2223/udp, 30000-30999/media",
    budget_us=475000,
)


def _headers(width: int, wide: bool = False) -> list[str]:
    return [c.header for c in fit_columns([ROW], width, wide)]


def test_a_narrow_terminal_keeps_name_and_id_and_drops_the_lowest_first() -> None:
    assert _headers(40) == ["name", "id"]
    assert _headers(80) == ["name", "id", "profile", "status", "ready", "budget us"]
    assert _headers(200) == [c.header for c in COLUMNS]


@pytest.mark.parametrize("width", range(30, 200, 7))
def test_the_chosen_columns_fit_whole(width: int) -> None:
    chosen = fit_columns([ROW], width)
    used = 1 + sum(max(len(c.header), len(c.cell(ROW))) + 3 for c in chosen)
    assert used <= width or [c.header for c in chosen] == ["name", "id"]
    # Shown in their usual order, whatever their priority.
    assert [c.header for c in chosen] == [c.header for c in COLUMNS if c in chosen]


def test_wide_shows_every_column() -> None:
    assert _headers(20, wide=True) == [c.header for c in COLUMNS]


def test_format_in_python_and_go_style() -> None:
    assert formatted(ROW, "{name}\\t{id}") == "docker-xms-demo\t18246e0c1f2a"
    assert formatted(ROW, "{{.Name}} {{ .ID }} {{.BudgetUs}} {{.budget_us}}") == (
        "docker-xms-demo 18246e0c1f2a 475000 475000"
    )
    stopped = PsRow(**{**ROW.__dict__, "budget_us": None})
    assert formatted(stopped, "{budget_us}") == "-"


@pytest.mark.parametrize(
    ("template", "message"), [("{{.Nope}}", "no field Nope"), ("{nope}", "no field nope"), ("{", "no format string")]
)
def test_a_bad_format_is_refused_in_one_sentence(template: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        formatted(ROW, template)
