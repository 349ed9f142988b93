"""Podman on a Debian 13 host, through its Docker-compatible API: systemd containers by Podman's own systemd
mode, real-time threads, a call from outside, and nothing left.

One guest for the module, tests in order (tests/lab/conftest.py). Podman is preinstalled and its socket is
enabled, as on a host whose operator runs it; the set-up is told the engine by DOCKER_HOST and installs no
Docker Engine beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lab.vm import Guest

from tests.fakes import REFUSALS
from tests.lab.steps import CLI, PEER_SETUP, PEER_TEARDOWN, PROJECT, host_facts, refusal_words, set_up, sh
from tests.unit.usecase_host import facts_of, make_host

pytestmark = pytest.mark.lab

SOCKET = "/run/podman/podman.sock"
ENV = f"DOCKER_HOST=unix://{SOCKET}"
DEMO = "docker-xms-demo"
HOST_STATE = (
    f"{ENV} docker ps -aq | sort; iptables-save | grep '^-A DOCKER-XMS' | sort; "
    "cat /var/lib/docker-xms/containers*.json 2>/dev/null | tr -d ' \\n' | grep -v '^{}$' || true"
)


def _cli(guest: Guest, *args: str, timeout: float = 600) -> str:
    done = guest.run("env", ENV, CLI, *args, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_set_up_takes_podman_as_it_is_and_installs_no_docker_engine(podman: Guest) -> None:
    podman.run("systemctl", "enable", "--now", "podman.socket")
    set_up(podman, ENV)
    assert sh(podman, "dpkg-query -W -f='${Status}' docker.io 2>/dev/null || true") != "install ok installed"
    assert sh(podman, "pgrep -x dockerd | wc -l").strip() == "0"
    version = json.loads(podman.run("env", ENV, "docker", "version", "--format", "{{json .Server}}").stdout)
    assert version["Components"][0]["Name"] == "Podman Engine"


def test_the_fake_podman_host_of_the_unit_tests_is_this_one(podman: Guest, tmp_path: Path) -> None:
    """What the in-memory Podman host claims (tests/unit/usecase_host.make_host) checked against the real one."""
    assert host_facts(podman, ENV) == facts_of(make_host(tmp_path, cgroup_version=2, engine_kind="podman"))


def test_the_demo_boots_systemd_by_podmans_systemd_mode_with_real_time_threads(
    podman: Guest, rtpengine_image: str
) -> None:
    # As a user who pulled it would have it: the demo image from the host, not built under emulation.
    podman.load_image(rtpengine_image, loader="podman load")
    # Podman refuses the option Docker 28 has, in the words the unit tests' fake engine uses.
    assert REFUSALS["podman"] in refusal_words(podman, rtpengine_image, ENV)
    done = podman.run("env", ENV, "bash", f"{PROJECT}/scripts/quickstart.sh", "demo", timeout=1200, check=False)
    summary = done.stdout + done.stderr
    assert done.returncode == 0, summary
    assert re.search(r"Real-time verified: yes", summary), summary
    assert re.search(r"Ready: yes", summary), summary
    verified = json.loads(_cli(podman, "rt", "verify", DEMO, "--json"))
    assert verified["fifo_allowed"] is True, verified
    # The server's own threads, found in its PID namespace (Podman's process list gives the container's PIDs).
    fifo = {t["comm"] for t in verified["rt_threads"] if t["policy"] == "SCHED_FIFO"}
    assert {"poller", "send timer"} <= fifo, verified
    inspect = json.loads(podman.run("env", ENV, "docker", "inspect", DEMO).stdout)[0]
    host_config = inspect["HostConfig"]
    assert (host_config["CgroupnsMode"], host_config["Privileged"]) == ("private", False)
    assert not host_config.get("SecurityOpt")
    state = podman.run("env", ENV, "docker", "exec", DEMO, "systemctl", "is-system-running", "--wait", check=False)
    assert state.stdout.strip() in {"running", "degraded"}, state.stdout
    # Podman's place for it, and one cgroup2 mount inside: the container's own namespace, writable.
    pid = inspect["State"]["Pid"]
    own = podman.run("cat", f"/proc/{pid}/cgroup").stdout.strip()
    assert re.fullmatch(r"0::/machine\.slice/libpod-[0-9a-f]{64}\.scope(/.*)?", own), own
    mounts = [
        line.split()
        for line in podman.run("env", ENV, "docker", "exec", DEMO, "cat", "/proc/self/mountinfo").stdout.splitlines()
        if " - cgroup" in line
    ]
    assert [(m[3], m[4]) for m in mounts] == [("/", "/sys/fs/cgroup")], mounts
    status = json.loads(_cli(podman, "rt", "status", "--json"))
    mine = next(c for c in status["managed"] if c["name"] == DEMO)
    assert mine["watchdog_us"] == 500_000, mine


def test_a_test_call_from_a_peer_whose_only_route_is_the_guests_address_has_rtp_both_ways(podman: Guest) -> None:
    sh(podman, PEER_SETUP)
    try:
        ng = podman.run("env", ENV, "docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", DEMO).stdout.strip()
        done = podman.run(
            "env", ENV, "ip", "netns", "exec", "xms-peer", CLI, "test-call", DEMO, "--control", f"{ng}:2223", "--json",
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        call = json.loads(done.stdout)
        counts = ", ".join(f"{d['name']} {d['received']} of {d['sent']}" for d in call["directions"])
        print(f"\nlab: test call through Podman from the peer namespace {call['local']}: {counts}")
        assert (call["answered"], call["media_flows"], call["local"]) == (True, True, "10.77.0.2"), call
        assert all(d["received"] >= 0.9 * d["sent"] > 0 for d in call["directions"]), call["directions"]
    finally:
        sh(podman, PEER_TEARDOWN)


def test_removing_the_demo_leaves_nothing_of_it(podman: Guest) -> None:
    _cli(podman, "rm", "-f", DEMO)
    assert sh(podman, HOST_STATE) == ""
