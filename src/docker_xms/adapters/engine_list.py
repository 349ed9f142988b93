"""The engine's container list: one request, typed as `ContainerSummary`, with the standard library alone.

`docker-xms ps` is run often and interactively, and rebalance and reconcile run on every change: one
list request carries what they need (labels, state, published ports, addresses), so no container is
inspected one by one. Importing the Docker SDK (requests, urllib3), or even `http.client` (email, ssl),
costs more than the request itself, so the local unix socket is read here with a plain HTTP/1.0 GET.
Any engine not on a local unix socket is listed through the SDK facade in `engine.py`, which builds the
same `ContainerSummary` from the same JSON.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Mapping

from docker_xms.domain.engine_types import ContainerSummary, PublishedPort
from docker_xms.errors import EngineUnavailable, XmsError

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"


def summary_of(raw: Mapping[str, Any]) -> ContainerSummary:
    """The typed view of one entry of the engine's list JSON."""
    networks = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    # The default bridge first, as the inspect view's top-level IPAddress is that network's.
    ordered = sorted(networks.items(), key=lambda item: item[0] != "bridge")
    address = next((str(n.get("IPAddress")) for _, n in ordered if (n or {}).get("IPAddress")), "")
    return ContainerSummary(
        id=str(raw["Id"]),
        name=str((raw.get("Names") or [""])[0]).lstrip("/"),
        image=str(raw.get("Image", "")),
        state=str(raw.get("State", "")),
        status=str(raw.get("Status", "")),
        labels=dict(raw.get("Labels") or {}),
        ip_address=address,
        ports=tuple(
            PublishedPort(
                str(p.get("Type", "tcp")),
                int(p.get("PrivatePort") or 0),
                int(p.get("PublicPort") or 0),
                str(p.get("IP") or ""),
            )
            for p in raw.get("Ports") or []
        ),
        network_mode=str((raw.get("HostConfig") or {}).get("NetworkMode", "")),
        created=raw["Created"] if isinstance(raw.get("Created"), int) else 0,
    )


def local_socket(host: str | None) -> str | None:
    """The engine's unix socket path, or None when `host` (as DOCKER_HOST) names another kind of engine."""
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return None


def list_query(label: str | None, all: bool) -> str:
    query: dict[str, str] = {"all": "1" if all else "0"}
    if label:
        query["filters"] = json.dumps({"label": [label]})
    return "/containers/json?" + urllib.parse.urlencode(query)


def list_containers(
    path: str, label: str | None = None, all: bool = True, timeout: float = 30
) -> list[ContainerSummary]:
    status, body = _get(path, list_query(label, all), timeout)
    if status != 200:
        raise XmsError(f"The engine refused to list containers (HTTP {status}): {body[:200]!r}.")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise XmsError(f"The engine's container list at {path} is not JSON ({exc}).") from exc
    return [summary_of(raw) for raw in data] if isinstance(data, list) else []


def started_and_env(path: str, container_id: str, timeout: float = 10) -> tuple[str, tuple[str, ...]]:
    """When the engine last started a container, and its environment as created (at most 256 entries of
    256 characters); ("", ()) when it is gone."""
    status, body = _get(path, f"/containers/{urllib.parse.quote(container_id)}/json", timeout)
    if status != 200:
        return "", ()
    try:
        data = json.loads(body)
    except ValueError:
        return "", ()
    state = data.get("State") if isinstance(data, dict) else None
    config = data.get("Config") if isinstance(data, dict) else None
    started = state.get("StartedAt") if isinstance(state, dict) else ""
    env = config.get("Env") if isinstance(config, dict) else ()
    items = tuple(e[:256] for e in (env if isinstance(env, list) else ())[:256] if isinstance(e, str))
    return (started if isinstance(started, str) else "")[:64], items


def _get(path: str, target: str, timeout: float) -> tuple[int, bytes]:
    """An HTTP/1.0 GET over a unix socket: the engine answers and closes, so the body ends at EOF."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    received: list[bytes] = []
    try:
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        while chunk := sock.recv(1 << 16):
            received.append(chunk)
    # OSError: nothing listens, the socket was cut, or the engine did not answer in time.
    except OSError as exc:
        raise _unavailable(path, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) from exc
    finally:
        sock.close()
    head, blank, body = b"".join(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if not blank or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise _unavailable(path, "the answer broke off")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunked(path, body)
    elif b"content-length" in headers:
        length = int(headers[b"content-length"]) if headers[b"content-length"].isdigit() else -1
        if length < 0 or len(body) < length:
            raise _unavailable(path, "the answer broke off")
        body = body[:length]
    return int(parts[1]), body


def _dechunked(path: str, body: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, crlf, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            size = -1
        if not crlf or size < 0 or len(rest) < size:
            raise _unavailable(path, "the answer broke off")
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        body = rest[size + 2 :]


def _unavailable(path: str, reason: str) -> EngineUnavailable:
    return EngineUnavailable(f"No Docker engine answered at {path}: start dockerd and try again ({reason}).")
