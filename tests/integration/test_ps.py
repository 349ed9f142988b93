"""`docker-xms ps` as a user reads it: names and ids whole at 80 columns, every column when wide, --format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.engine

PREFIX = "ps-"
NAMES = [f"{PREFIX}media-server-{i}" for i in range(3)]


@pytest.fixture(scope="module")
def servers(docker_client: Any, rtpengine_image: str) -> Iterator[dict[str, str]]:
    """Three managed container-address servers, name -> full id."""
    ids: dict[str, str] = {}
    try:
        for name in NAMES:
            result = run_cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", name, "--json")
            assert result.code == 0, result.err
            ids[name] = json.loads(result.out)["id"]
        yield ids
    finally:
        for c in docker_client.containers.list(all=True):
            if c.name.startswith(PREFIX):
                c.remove(force=True)
        run_cli("rt", "rebalance")


def _rows(out: str, ids: dict[str, str]) -> list[str]:
    return [line for line in out.splitlines() if any(name in line for name in ids)]


def test_at_80_columns_names_and_ids_are_whole_and_the_table_fits(servers: dict[str, str]) -> None:
    result = run_cli("ps", env={"COLUMNS": "80"})
    assert result.code == 0, result.err
    rows = _rows(result.out, servers)
    assert len(rows) == len(servers)
    for name, full_id in servers.items():
        assert any(f" {name} " in row and f" {full_id[:12]} " in row for row in rows), result.out
    assert max(len(line) for line in result.out.splitlines()) <= 80, result.out
    assert "…" not in result.out
    # What does not fit whole is left out, not cut: the media ports do not fit beside the rest.
    assert "ports" not in result.out
    assert "status" in result.out


def test_at_200_columns_more_columns_fit_and_nothing_is_cut(servers: dict[str, str]) -> None:
    narrow = run_cli("ps", env={"COLUMNS": "80"}).out.splitlines()[1]
    result = run_cli("ps", env={"COLUMNS": "200"})
    assert result.code == 0, result.err
    for name, full_id in servers.items():
        assert any(f" {name} " in row and f" {full_id[:12]} " in row for row in _rows(result.out, servers))
    assert "…" not in result.out
    headers = result.out.splitlines()[1]
    assert len(headers.split()) > len(narrow.split())
    for header in ("name", "id", "profile", "mode", "status", "ready", "address", "budget"):
        assert header in headers


def test_wide_shows_every_column_whole(servers: dict[str, str]) -> None:
    result = run_cli("ps", "--wide", env={"COLUMNS": "80"})
    assert result.code == 0, result.err
    assert "ports" in result.out.splitlines()[1]
    assert "…" not in result.out
    listed = {row["name"]: row for row in json.loads(run_cli("ps", "--json").out)}
    for name in servers:
        assert any(listed[name]["ports"] in line for line in _rows(result.out, servers))


def test_format_prints_one_line_per_container_in_either_style(servers: dict[str, str]) -> None:
    listed = {row["name"]: row for row in json.loads(run_cli("ps", "--json").out)}
    go = run_cli("ps", "--format", "{{.Name}}\\t{{.ID}}\\t{{.BudgetUs}}")
    python = run_cli("ps", "--format", "{name}\t{id}\t{budget_us}")
    assert go.code == python.code == 0, go.err + python.err
    assert go.out == python.out
    lines = set(go.out.splitlines())
    for name, full_id in servers.items():
        assert f"{name}\t{full_id[:12]}\t{listed[name]['budget_us']}" in lines


def test_a_format_naming_no_field_is_refused() -> None:
    result = run_cli("ps", "--format", "{{.Nope}}")
    assert result.code == 2
    assert "there is no field Nope" in result.err


def test_ps_json_answered_without_the_command_line_matches_the_command_lines_own(servers: dict[str, str]) -> None:
    # `ps --json` alone takes a path that does not load Click; with --debug in front it goes through Click.
    quick, full = run_cli("ps", "--json"), run_cli("--debug", "ps", "--json")
    assert quick.code == full.code == 0, quick.err + full.err
    rows = {json.dumps(row, sort_keys=True) for row in json.loads(quick.out) if row["name"] in servers}
    again = {json.dumps(row, sort_keys=True) for row in json.loads(full.out) if row["name"] in servers}
    # A server still booting may turn healthy between the two calls: compare what cannot change.
    stable = [{k: v for k, v in json.loads(r).items() if k not in ("health", "status")} for r in sorted(rows)]
    assert stable == [{k: v for k, v in json.loads(r).items() if k not in ("health", "status")} for r in sorted(again)]
    assert {json.loads(r)["name"] for r in rows} == set(servers)


def test_ps_json_with_no_engine_says_so_as_every_command_does(tmp_path: Any) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    quick, full = run_cli("ps", "--json", env=env), run_cli("ps", "--wide", env=env)
    assert quick.code == full.code == 1
    assert quick.out == ""
    assert "No Docker engine answered" in quick.err
    assert quick.err == full.err
