"""Stopping without dropping calls: a plain `docker stop` of an rtpengine container (the image's own
shutdown path, so any orchestrator's stop does the same) waits while a session is under way, refuses new
ones meanwhile, and ends as soon as the last one is deleted; with no session it is fast."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from typing import Any

import pytest

from docker_xms.adapters.profile_store import load_profile
from docker_xms.adapters.rtp import NgClient, NgError, local_address_towards, open_call, udp_socket
from docker_xms.domain.compose import stop_timeout_s
from tests.helpers import run_cli

pytestmark = [pytest.mark.engine, pytest.mark.slow]

HOLD_S = 2.0


def start(name: str) -> str:
    result = run_cli("run", "-c", "--ports", "dnat", "--media-ports", "10", "--name", name, "--json", timeout=180)
    assert result.code == 0, result.err + result.out
    return name


def test_docker_stop_waits_for_the_last_session_and_refuses_new_ones(docker_client: Any, rtpengine_image: str) -> None:
    grace = load_profile("rtpengine").drain.grace_s
    busy, idle = f"drain-{uuid.uuid4().hex[:6]}", f"drain-{uuid.uuid4().hex[:6]}"
    try:
        for name in (busy, idle):
            start(name)
        container = docker_client.containers.get(busy)
        # run gives the engine the profile's grace plus a margin as the container's stop timeout.
        assert container.attrs["Config"]["StopTimeout"] == stop_timeout_s(load_profile("rtpengine"))
        code, out = container.exec_run(["systemctl", "is-active", "docker-xms-drain.service"])
        assert code == 0, out
        address = container.attrs["NetworkSettings"]["IPAddress"]
        local = local_address_towards(address)
        with udp_socket(local) as a, udp_socket(local) as b, NgClient(address) as ng:
            call = open_call(ng, a, b)
            refused: list[str] = []

            def later() -> None:
                time.sleep(0.5 + HOLD_S / 2)
                # Draining by then: a new call is refused, the one under way goes on.
                with udp_socket(local) as c, udp_socket(local) as d:
                    try:
                        open_call(ng, c, d)
                    except NgError as exc:
                        refused.append(exc.message)
                time.sleep(HOLD_S / 2)
                ng.delete(call.call_id, call.from_tag)

            deleter = threading.Thread(target=later)
            started = time.monotonic()
            deleter.start()
            stop = subprocess.run(["docker", "stop", busy], capture_output=True, text=True, timeout=120)
            took = time.monotonic() - started
            deleter.join()
        assert stop.returncode == 0, stop.stderr
        print(f"\ndocker stop with a session deleted after {0.5 + HOLD_S:.1f} s took {took:.2f} s (grace {grace} s)")
        assert refused, "a new call was accepted while the server drained"
        assert "limit" in refused[0]
        assert 0.5 + HOLD_S <= took < grace

        started = time.monotonic()
        stop = subprocess.run(["docker", "stop", idle], capture_output=True, text=True, timeout=120)
        idle_took = time.monotonic() - started
        assert stop.returncode == 0, stop.stderr
        print(f"docker stop without a session took {idle_took:.2f} s")
        assert idle_took < 5
    finally:
        run_cli("rm", "-f", busy, idle, timeout=120)
