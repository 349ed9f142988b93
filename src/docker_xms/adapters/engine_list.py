"""The engine's container list over its unix socket with the standard library alone.

`docker-xms ps` is run often and interactively; importing the Docker SDK (requests, urllib3) costs
more than the whole request. This read-only path serves the list view only; everything else, and any
engine not on a local unix socket, goes through the SDK facade in `engine.py`.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

from docker_xms.errors import EngineUnavailable, XmsError

DEFAULT_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def local_socket(host: str | None) -> str | None:
    """The engine's unix socket path, or None when `host` (as DOCKER_HOST) names another kind of engine."""
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return None


def list_containers(path: str, label: str | None = None, all: bool = True, timeout: float = 30) -> list[dict[str, Any]]:
    query: dict[str, str] = {"all": "1" if all else "0"}
    if label:
        query["filters"] = json.dumps({"label": [label]})
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", "/containers/json?" + urllib.parse.urlencode(query))
        response = conn.getresponse()
        body = response.read()
    # OSError: nothing listens, or the socket was cut; HTTPException: the answer broke off (IncompleteRead).
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise EngineUnavailable(
            f"No Docker engine answered at {path}: start dockerd and try again ({reason})."
        ) from exc
    finally:
        conn.close()
    if response.status != 200:
        raise XmsError(f"The engine refused to list containers (HTTP {response.status}): {body[:200]!r}.")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise XmsError(f"The engine's container list at {path} is not JSON ({exc}).") from exc
    return data if isinstance(data, list) else []
