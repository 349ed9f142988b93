"""Where the engine publishes control ports: rtpengine's ng has no authentication, so loopback unless told."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ng_ping, run_cli, wait_for

pytestmark = pytest.mark.engine

PREFIX = "bind-"
WARNING = (
    "warning: ng (2223/udp) has no authentication and it is published on every address of this host: anyone who "
    "reaches it controls the server; publish it on one address with --bind 127.0.0.1."
)


@pytest.fixture
def names(docker_client: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        run_cli("rm", "-f", name)


def _engine_binding(client: Any, name: str) -> list[tuple[str, str]]:
    ports = client.api.inspect_container(name)["NetworkSettings"]["Ports"]["2223/udp"]
    return [(p["HostIp"], p["HostPort"]) for p in ports]


def _pong(port: int) -> bool:
    try:
        return ng_ping("127.0.0.1", port, timeout=0.5).endswith(b"d6:result4:ponge")
    except OSError:
        return False


@pytest.mark.parametrize("bind", [None, "127.0.0.1"], ids=["default", "bind-loopback"])
def test_ng_is_published_on_loopback_only(
    docker_client: Any, rtpengine_image: str, names: list[str], bind: str | None
) -> None:
    name = f"{PREFIX}{bind or 'default'}"
    names.append(name)
    extra = ("--bind", bind) if bind else ()
    result = run_cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", name, "--json", *extra)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    ng = next(row for row in summary["ports"] if row["name"] == "ng")
    assert ng["bind"] == "127.0.0.1"
    assert summary["warnings"] == []
    assert _engine_binding(docker_client, name) == [("127.0.0.1", ng["host"])]
    wait_for(lambda: _pong(int(ng["host"])), 60, 0.5, "ng to answer on 127.0.0.1")


def test_every_address_is_warned_about(docker_client: Any, rtpengine_image: str, names: list[str]) -> None:
    name = f"{PREFIX}all"
    names.append(name)
    result = run_cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", name, "--bind", "0.0.0.0")
    assert result.code == 0, result.err
    assert WARNING in result.out.splitlines(), result.out
    [(address, port)] = _engine_binding(docker_client, name)
    assert address in ("", "0.0.0.0")
    assert any(line.split()[1:2] == ["ng"] and "every address" in line for line in result.out.splitlines()), result.out
    assert int(port) > 0
