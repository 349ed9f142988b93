"""`run` makes sure an agent runs, and so a container removed by hand leaves no rule behind for the next one.

The agents these tests cause hold an agent lock of their own (DOCKER_XMS_AGENT_LOCK in a temporary
directory), so that an agent already running on the host does not hide them; they share the host lock
with every other docker-xms process. Each test stops the agent it caused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters import hostlock
from tests.helpers import TEST_LABEL, run_cli, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PREFIX = "agent-start-test-"

LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    while True:
        data, _ = s.recvfrom(2048)
        print(data.decode(), flush=True)
except TimeoutError:
    pass
"""


class OwnAgent:
    """The environment that makes `run` start an agent on a lock of this test's own, and its stopping."""

    def __init__(self, root: Path) -> None:
        self.lock = root / "agent.lock"
        self.env = {"DOCKER_XMS_START_AGENT": "1", "DOCKER_XMS_AGENT_LOCK": str(self.lock)}

    def pid(self) -> int | None:
        return hostlock.holder(self.lock)

    def processes(self) -> list[int]:
        """Agents running with this test's lock, whoever started them.

        A process the agent forks to run a command carries the agent's command line and environment
        until it execs, so a child of a found agent is not counted as another one.
        """
        found: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agent" in argv and f"DOCKER_XMS_AGENT_LOCK={self.lock}".encode() in environ:
                found[int(entry.name)] = _parent(entry)
        return sorted(pid for pid, parent in found.items() if parent not in found)

    def stop(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 60, what=f"agent {pid} to stop")


def _parent(process: Path) -> int:
    try:
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
        return int((process / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@pytest.fixture
def own_agent(tmp_path: Path, docker_client: Any) -> Iterator[OwnAgent]:
    agent = OwnAgent(tmp_path)
    try:
        yield agent
    finally:
        agent.stop()
        for container in docker_client.containers.list(all=True, filters={"name": PREFIX}):
            if container.name.startswith(PREFIX):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
        run_cli("rt", "rebalance", "--json")


def run_json(name: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    args = ["run", "-c", "--no-wait", "--json", "--name", PREFIX + name, "--media-ports", "10", *extra]
    result = run_cli(*args, env=env, timeout=180)
    assert result.code == 0, result.err + result.out
    answer: dict[str, Any] = json.loads(result.out)
    return answer


def test_run_starts_an_agent_when_none_runs_and_a_second_run_starts_none(
    own_agent: OwnAgent, rtpengine_image: str
) -> None:
    assert own_agent.pid() is None

    opted_out = run_json("no-agent", own_agent.env, "--no-agent")
    assert opted_out["agent"] == ""
    assert own_agent.pid() is None

    first = run_json("first", own_agent.env)
    assert first["agent"].startswith("Started the docker-xms agent in the background"), first["agent"]
    pid = own_agent.pid()
    assert pid is not None
    assert f"pid {pid}" in first["agent"]
    assert own_agent.processes() == [pid]
    # Its own session, so that it outlives the command (and the terminal) that started it.
    assert os.getsid(pid) == pid

    second = run_json("second", own_agent.env)
    assert second["agent"] == ""
    assert own_agent.pid() == pid
    assert own_agent.processes() == [pid]


def _rules_of(container_id: str) -> list[str]:
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines() if f"docker-xms:{container_id[:12]}:" in line]


def test_a_plain_container_that_takes_the_address_of_a_hand_removed_one_receives_nothing_on_its_range(
    own_agent: OwnAgent, rtpengine_image: str, busybox_image: str, docker_client: Any
) -> None:
    managed = run_json("dnat", own_agent.env, "--ports", "dnat")
    assert managed["agent"].startswith("Started the docker-xms agent")
    media = managed["media"][0]
    address, host_port, port = managed["address"], media["host_start"], media["start"]
    assert _rules_of(managed["id"])

    # By hand, as an operator would: no docker-xms command runs after it.
    docker_client.containers.get(managed["id"]).remove(force=True)
    wait_for(lambda: not _rules_of(managed["id"]), 10, what="the agent to remove the rules")

    plain = docker_client.containers.run(
        busybox_image,
        ["/bin/busybox", "sleep", "600"],
        detach=True,
        name=PREFIX + "plain",
        labels={TEST_LABEL: "agent-start"},
    )
    plain.reload()
    # The engine hands the freed address to the next container on the bridge.
    assert plain.attrs["NetworkSettings"]["IPAddress"] == address

    listener = subprocess.Popen(
        ["nsenter", "-t", str(plain.attrs["State"]["Pid"]), "-n", "--", sys.executable, "-c", LISTEN, str(port), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(5):
                sock.sendto(b"via-old-range", ("127.0.0.1", host_port))
            time.sleep(0.5)
            # The listener hears what reaches it: sent to the container itself, it arrives.
            sock.sendto(b"direct", (address, port))
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert out.split() == ["direct"]
