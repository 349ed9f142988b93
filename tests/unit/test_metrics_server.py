"""The /metrics server is bounded: slots taken by silent clients answer others 503 at once, and free again."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from docker_xms.adapters import prometheus
from docker_xms.domain.metrics import Family
from tests.helpers import free_port


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def answered(client: socket.socket) -> bool:
    """Whether the server has already answered (refused) a client that sent nothing: it held no slot."""
    client.settimeout(0.3)
    try:
        client.recv(64, socket.MSG_PEEK)  # the 503, or the end of the stream
    except TimeoutError:
        return False
    return True


def test_silent_clients_hold_no_more_than_the_slots_and_are_dropped_after_the_timeout() -> None:
    port = free_port()
    computed: list[float] = []

    def families() -> list[Family]:
        computed.append(time.monotonic())
        return [Family("docker_xms_test_up", "gauge", "A test gauge.", samples=[((), 1.0)])]

    stop = prometheus.serve("127.0.0.1", port, families, lambda reason: None, slots=2, timeout_s=1.5)
    try:
        assert get(port)[0] == 200
        assert "docker_xms_test_up 1.0" in get(port)[1]
        # Both slots held by clients that send nothing: the next one is refused, not queued behind them (a
        # queued one would be answered 200 once the first silent one is dropped). A silent client that came
        # while the thread of an earlier answer had not yet given its slot back is refused itself, so the
        # pair is opened again until both hold one.
        silent: list[socket.socket] = []
        for _ in range(5):
            for s in silent:
                s.close()
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            if not any(answered(s) for s in silent):
                break
        assert wait_for(lambda: get(port)[0] == 503, 10)
        # Dropped after the timeout: requests are served again.
        assert wait_for(lambda: get(port)[0] == 200, 10)
        for s in silent:
            s.close()
    finally:
        stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_scrapes_within_a_second_share_one_computation() -> None:
    port = free_port()
    computed: list[float] = []

    def families() -> list[Family]:
        computed.append(time.monotonic())
        return []

    stop = prometheus.serve("127.0.0.1", port, families, lambda reason: None)
    try:
        for _ in range(5):
            assert get(port)[0] == 200
        assert len(computed) == 1
    finally:
        stop()


@pytest.mark.parametrize("path", ["/other", "/metrics/x"])
def test_other_paths_are_not_found(path: str) -> None:
    port = free_port()
    stop = prometheus.serve("127.0.0.1", port, list, lambda reason: None)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert refused.value.code == 404
    finally:
        stop()
