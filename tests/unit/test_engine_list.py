"""The engine's list view: the typed summary built from its JSON, and the plain HTTP read of the socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from docker_xms.adapters import engine_list
from docker_xms.adapters.engine_list import summary_of
from docker_xms.domain.engine_types import PublishedPort
from docker_xms.errors import EngineUnavailable, XmsError
from tests.unit.test_engine_boundary import Server, read_head

# One entry of GET /containers/json as engine 20.10 gives it, trimmed to the fields docker-xms reads.
ENTRY = {
    "Id": "1824" + "a" * 60,
    "Names": ["/media2"],
    "Image": "docker-xms/rtpengine:latest",
    "State": "running",
    "Status": "Up 3 minutes (healthy)",
    "Labels": {"io.docker-xms.managed": "true", "io.docker-xms.mode": "container-address"},
    "Ports": [
        {"IP": "0.0.0.0", "PrivatePort": 2223, "PublicPort": 49153, "Type": "udp"},
        {"PrivatePort": 8080, "Type": "tcp"},
    ],
    "HostConfig": {"NetworkMode": "default"},
    "NetworkSettings": {"Networks": {"media": {"IPAddress": "172.20.0.2"}, "bridge": {"IPAddress": "172.17.0.5"}}},
}


def test_a_list_entry_becomes_a_summary_with_what_ps_and_rebalance_read() -> None:
    s = summary_of(ENTRY)
    assert (s.id, s.name, s.image, s.state) == (ENTRY["Id"], "media2", "docker-xms/rtpengine:latest", "running")
    assert s.managed
    assert s.running
    assert s.health == "healthy"
    assert s.label("mode") == "container-address"
    assert s.label("weight", "1") == "1"
    # The default bridge's address, as the inspect view's top-level IPAddress is.
    assert s.ip_address == "172.17.0.5"
    assert s.ports == (PublishedPort("udp", 2223, 49153, "0.0.0.0"), PublishedPort("tcp", 8080))
    assert s.network_mode == "default"


@pytest.mark.parametrize(
    ("state", "status", "running", "health"),
    [
        ("restarting", "Restarting (1) 2 seconds ago", False, "-"),
        ("paused", "Up 1 minute (Paused)", False, "-"),
        ("running", "Up 5 seconds (health: starting)", True, "starting"),
        ("running", "Up 1 minute (unhealthy)", True, "unhealthy"),
        ("exited", "Exited (0) 1 minute ago", False, "-"),
    ],
)
def test_only_a_running_container_is_running(state: str, status: str, running: bool, health: str) -> None:
    s = summary_of({"Id": "x", "State": state, "Status": status})
    assert (s.running, s.health, s.managed, s.name, s.ip_address, s.ports) == (running, health, False, "", "", ())


@pytest.fixture
def engine_answering(tmp_path: Path) -> Iterator[Callable[[bytes], str]]:
    servers: list[Server] = []

    def serve(answer: bytes) -> str:
        def behave(conn: socket.socket) -> None:
            read_head(conn)
            conn.sendall(answer)

        server = Server(tmp_path / f"engine{len(servers)}.sock", behave)
        servers.append(server)
        return str(server.path)

    yield serve
    for server in servers:
        server.stop()


BODY = json.dumps([ENTRY]).encode()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY,
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:10], BODY[10:]))
        + b"0\r\n\r\n",
    ],
    ids=["until the engine closes", "content-length", "chunked"],
)
def test_the_list_is_read_however_the_engine_frames_its_body(
    engine_answering: Callable[[bytes], str], answer: bytes
) -> None:
    assert engine_list.list_containers(engine_answering(answer), label="io.docker-xms.managed=true") == [
        summary_of(ENTRY)
    ]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BODY) + 1) + BODY,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY[:-1],
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
    ],
    ids=["short of its length", "a chunk cut", "headers cut"],
)
def test_an_answer_cut_short_is_engine_unavailable(engine_answering: Callable[[bytes], str], answer: bytes) -> None:
    with pytest.raises(EngineUnavailable, match=r"^No Docker engine answered at .*the answer broke off"):
        engine_list.list_containers(engine_answering(answer))


def test_a_refusal_is_one_sentence_with_the_status(engine_answering: Callable[[bytes], str]) -> None:
    body = b'{"message":"invalid filter"}'
    path = engine_answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with pytest.raises(XmsError, match=r"^The engine refused to list containers \(HTTP 400\)") as raised:
        engine_list.list_containers(path)
    assert not isinstance(raised.value, EngineUnavailable)


def test_the_query_filters_by_label_and_state() -> None:
    assert engine_list.list_query(None, True) == "/containers/json?all=1"
    assert engine_list.list_query("io.docker-xms.managed=true", False) == (
        "/containers/json?all=0&filters=%7B%22label%22%3A+%5B%22io.docker-xms.managed%3Dtrue%22%5D%7D"
    )


def test_a_containers_start_and_environment_are_read_bounded_from_its_inspect_view(
    engine_answering: Callable[[bytes], str],
) -> None:
    inspect = {
        "State": {"StartedAt": "2026-12-07T18:49:22.123456789Z"},
        "Config": {"Env": ["DOCKER_XMS_PLAN_WAIT_S=60", 7, "X=" + "y" * 1000, *[f"N{i}=1" for i in range(300)]]},
    }
    body = json.dumps(inspect).encode()
    path = engine_answering(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    started, env = engine_list.started_and_env(path, "abc")
    assert started == "2026-12-07T18:49:22.123456789Z"
    # At most 256 entries of 256 characters; what is not a string is left out.
    assert env[0] == "DOCKER_XMS_PLAN_WAIT_S=60"
    assert len(env) == 255
    assert len(env[1]) == 256
    gone = engine_answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    assert engine_list.started_and_env(gone, "abc") == ("", ())
    odd = engine_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n[1,2")
    assert engine_list.started_and_env(odd, "abc") == ("", ())
