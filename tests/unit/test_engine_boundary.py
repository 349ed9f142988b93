"""Every engine call, when the engine is not there or goes away, raises EngineUnavailable and nothing raw;
a refusal that only the engine's words tell apart is raised as its own type.

A real Engine over the real SDK talks to real unix sockets that misbehave the ways an engine going away
does: no socket file, a socket nobody listens on, a connection accepted and closed, an answer cut off
after a few bytes, a stream cut off mid-body, an engine that accepts and never answers.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters import engine_list
from docker_xms.adapters.engine import Engine
from docker_xms.domain.engine_types import CreateSpec
from docker_xms.errors import ContainerBeingRemoved, EngineUnavailable, StartBudgetRefused, XmsError

ID = "0" * 64


class Server:
    """A unix socket server that answers every connection with `behave(connection)`, in a thread."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.behave = behave
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.behave(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def read_head(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def close_at_once(conn: socket.socket) -> None:
    return None


def half_a_status_line(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b"HTTP/1.1 2")


def cut_mid_body(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'40\r\n{"status": "Downloading", "id": "abc", "progressDetail": {'
    )


def never_answer(conn: socket.socket) -> None:
    read_head(conn)
    threading.Event().wait(10)


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], Path]]:
    servers: list[Server] = []

    def serve(behave: Callable[[socket.socket], None]) -> Path:
        server = Server(tmp_path / f"engine{len(servers)}.sock", behave)
        servers.append(server)
        return server.path

    yield serve
    for server in servers:
        server.stop()


def engine_at(path: Path, timeout: float = 5) -> Engine:
    # An explicit API version: "auto" would ask the engine at once, and this engine is not there.
    return Engine(docker.DockerClient(base_url=f"unix://{path}", version="1.41", timeout=timeout))


def tarball(tmp_path: Path) -> str:
    file = tmp_path / "rootfs.tar"
    file.write_bytes(b"\0" * 10240)
    return str(file)


# Each public method of Engine, called the way the use cases call it (generators drained).
CALLS: dict[str, Callable[[Engine, Path], Any]] = {
    "info": lambda e, _: e.info(),
    "create_global_service": lambda e, _: e.create_global_service("x", "busybox:latest", [], {}, [], [], {}),
    "events": lambda e, _: next(e.events(filters={"type": ["container"]})),
    "image_exists": lambda e, _: e.image_exists("busybox:latest"),
    "image_command": lambda e, _: e.image_command("busybox:latest"),
    "inspect_image": lambda e, _: e.inspect_image("busybox:latest"),
    "import_image_file": lambda e, tmp: e.import_image_file(tarball(tmp), "x/y", "1"),
    "import_image_stream": lambda e, _: e.import_image_stream(iter([b"\0" * 10240]), "x/y", "1"),
    "refusal_of_import_changes": lambda e, _: e.refusal_of_import_changes(["ENV A=1"]),
    "build": lambda e, _: e.build(b"\0" * 10240, "x/y:1"),
    "remove_image": lambda e, _: e.remove_image("x/y:1"),
    "pull": lambda e, _: e.pull("x/y", "1"),
    "push": lambda e, _: e.push("localhost:5000/x/y", "1"),
    "export_container": lambda e, _: b"".join(e.export_container(ID)),
    "create_container": lambda e, _: e.create_container(CreateSpec("busybox:latest", name="x")),
    "start": lambda e, _: e.start(ID),
    "put_file": lambda e, _: e.put_file(ID, "/etc/x.conf", b"x"),
    "put_files": lambda e, _: e.put_files(ID, [("/etc/x.conf", b"x", 0o644)]),
    "path_exists": lambda e, _: e.path_exists(ID, "/etc/x.conf"),
    "bridge_subnet": lambda e, _: e.bridge_subnet(),
    "get_container": lambda e, _: e.get_container(ID),
    "find_container": lambda e, _: e.find_container(ID),
    "list_containers": lambda e, _: e.list_containers(),
    "update_rt_runtime": lambda e, _: e.update_rt_runtime(ID, 1000),
    "update_cpuset": lambda e, _: e.update_cpuset(ID, "1"),
    "container_pids": lambda e, _: e.container_pids(ID),
    "stop": lambda e, _: e.stop(ID),
    "remove": lambda e, _: e.remove(ID),
    "exec": lambda e, _: e.exec(ID, ["true"]),
}
# Methods that need no engine: closing a client, and connect (tested on its own below).
NO_ENGINE = {"close", "connect"}


def test_every_public_method_of_the_engine_is_covered() -> None:
    public = {name for name, _ in inspect.getmembers(Engine, callable) if not name.startswith("_")}
    assert public - NO_ENGINE == set(CALLS), "add the new method to CALLS"


def no_socket(_: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path) -> Path:
    return tmp_path / "nobody-here.sock"


def bound_not_listening(_: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path) -> Path:
    path = tmp_path / "bound.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    # Closed at once: the file stays, and connecting to it is refused.
    sock.close()
    return path


ENGINES: dict[str, Callable[[Callable[[Callable[[socket.socket], None]], Path], Path], Path]] = {
    "no socket file": no_socket,
    "nobody listens": bound_not_listening,
    "accepts and closes": lambda serve, _: serve(close_at_once),
    "cut in the status line": lambda serve, _: serve(half_a_status_line),
}


@pytest.mark.parametrize("engine_kind", list(ENGINES))
@pytest.mark.parametrize("method", sorted(CALLS))
def test_an_engine_that_is_not_there_is_engine_unavailable(
    sockets: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path, engine_kind: str, method: str
) -> None:
    path = ENGINES[engine_kind](sockets, tmp_path)
    engine = engine_at(path)
    try:
        with pytest.raises(EngineUnavailable) as raised:
            CALLS[method](engine, tmp_path)
    finally:
        engine.close()
    assert raised.value.exit_code == 1
    assert "\n" not in raised.value.message


# Calls that read a body: an answer cut off after the headers means the engine went away mid-answer.
READS_A_BODY = [
    "info",
    "events",
    "image_exists",
    "inspect_image",
    "pull",
    "push",
    "build",
    "export_container",
    "get_container",
    "find_container",
    "list_containers",
    "container_pids",
    "bridge_subnet",
    "exec",
]


@pytest.mark.parametrize("method", READS_A_BODY)
def test_an_answer_cut_mid_body_is_engine_unavailable(
    sockets: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path, method: str
) -> None:
    engine = engine_at(sockets(cut_mid_body))
    try:
        with pytest.raises(EngineUnavailable):
            CALLS[method](engine, tmp_path)
    finally:
        engine.close()


@pytest.mark.parametrize("method", ["get_container", "update_rt_runtime", "start", "list_containers"])
def test_an_engine_that_never_answers_is_engine_unavailable_after_the_timeout(
    sockets: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path, method: str
) -> None:
    engine = engine_at(sockets(never_answer), timeout=0.3)
    try:
        with pytest.raises(EngineUnavailable):
            CALLS[method](engine, tmp_path)
    finally:
        engine.close()


@pytest.mark.parametrize("engine_kind", list(ENGINES))
def test_connect_to_an_engine_that_is_not_there_is_engine_unavailable(
    sockets: Callable[[Callable[[socket.socket], None]], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_kind: str,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{ENGINES[engine_kind](sockets, tmp_path)}")
    with pytest.raises(EngineUnavailable, match=r"^No Docker engine answered"):
        Engine.connect(timeout=2)


@pytest.mark.parametrize("engine_kind", [*ENGINES, "cut mid-body"])
def test_the_list_view_over_a_socket_that_is_not_an_engine_is_engine_unavailable(
    sockets: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path, engine_kind: str
) -> None:
    path = sockets(cut_mid_body) if engine_kind == "cut mid-body" else ENGINES[engine_kind](sockets, tmp_path)
    with pytest.raises(EngineUnavailable, match=r"^No Docker engine answered at "):
        engine_list.list_containers(str(path), timeout=2)


def test_the_list_view_gives_up_on_an_engine_that_never_answers(
    sockets: Callable[[Callable[[socket.socket], None]], Path],
) -> None:
    with pytest.raises(EngineUnavailable):
        engine_list.list_containers(str(sockets(never_answer)), timeout=0.3)


def refusing(status: int, message: str) -> Callable[[socket.socket], None]:
    """An engine that answers every request with this error status and message, as dockerd does."""
    body = json.dumps({"message": message}).encode()

    def behave(conn: socket.socket) -> None:
        read_head(conn)
        reason = {409: "Conflict", 500: "Internal Server Error"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)

    return behave


# The engine's own words for the refusals that only their words tell apart (runc's, and dockerd's over
# its versions), each with the type it is raised as and the sentence the user reads.
REFUSALS = [
    (
        "start",
        500,
        "OCI runtime start failed: container_linux.go:380: starting container process caused: process_linux.go:"
        "545: container init caused: process_linux.go:508: setting cgroup config for procHooks process caused: "
        'failed to write "990000": write /sys/fs/cgroup/cpu,cpuacct/docker/0000/cpu.rt_runtime_us: invalid '
        "argument: unknown",
        StartBudgetRefused,
        "The engine could not start the container: OCI runtime start failed: ",
    ),
    (
        "update_rt_runtime",
        500,
        f'Cannot update container {ID}: container is marked for removal and cannot be "update"',
        ContainerBeingRemoved,
        f"The engine could not set the real-time budget of {ID[:12]} to 1000 us: Cannot update container ",
    ),
    (
        "update_rt_runtime",
        500,
        f'Cannot update container {ID}: Container is marked for removal and cannot be "update".',
        ContainerBeingRemoved,
        f"The engine could not set the real-time budget of {ID[:12]} to 1000 us: Cannot update container ",
    ),
    ("start", 500, "OCI runtime start failed: no such file: unknown", XmsError, "The engine could not start the"),
    ("update_rt_runtime", 500, "Cannot update container: out of memory", XmsError, "The engine could not set the"),
    ("remove", 409, f"You cannot remove a running container {ID}", XmsError, f"The engine could not remove {ID[:12]}"),
]


@pytest.mark.parametrize(
    ("method", "status", "message", "kind", "sentence"),
    REFUSALS,
    ids=[
        "start-budget-refused",
        "update-marked-for-removal",
        "update-marked-for-removal-older-wording",
        "start-other-refusal",
        "update-other-refusal",
        "remove-other-conflict",
    ],
)
def test_a_refusal_told_apart_by_the_engines_words_is_raised_as_its_type_with_the_same_sentence(
    sockets: Callable[[Callable[[socket.socket], None]], Path],
    tmp_path: Path,
    method: str,
    status: int,
    message: str,
    kind: type[XmsError],
    sentence: str,
) -> None:
    engine = engine_at(sockets(refusing(status, message)))
    try:
        with pytest.raises(XmsError) as refused:
            CALLS[method](engine, tmp_path)
    finally:
        engine.close()
    assert type(refused.value) is kind
    assert refused.value.exit_code == 1
    assert refused.value.message.startswith(sentence)
    assert refused.value.message.endswith(f"{message.rstrip('.')}.")


def test_a_removal_that_another_removal_is_already_doing_is_done(
    sockets: Callable[[Callable[[socket.socket], None]], Path], tmp_path: Path
) -> None:
    engine = engine_at(sockets(refusing(409, f"removal of container {ID} is already in progress")))
    try:
        assert engine.remove(ID) is None
    finally:
        engine.close()
