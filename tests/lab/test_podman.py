"""Podman on a Debian 13 host, through its Docker-compatible API: the quick start, three systemd containers
by Podman's own systemd mode (1:1 and `-c`) with real-time threads, a call from outside, nothing left.

One guest for the module, tests in order (tests/lab/conftest.py). Podman is preinstalled and its socket is
enabled, as on a host whose operator runs it; the set-up is told the engine by DOCKER_HOST and installs no
Docker Engine beside it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from lab.vm import Guest

from tests.fakes import REFUSALS
from tests.lab.steps import (
    CLI,
    PROJECT,
    call_from_peer,
    host_facts,
    media_cpus_are_given,
    one_server_is_right,
    refusal_words,
    set_up,
    sh,
)
from tests.unit.usecase_host import facts_of, make_host

pytestmark = pytest.mark.lab

ENV = "DOCKER_HOST=unix:///run/podman/podman.sock"
DEMO = "docker-xms-demo"
# The quick start's demo (1:1), then two by container address.
SERVERS = (DEMO, "lab-two", "lab-three")
# A real-time thread gone runaway: spins at SCHED_FIFO without ever blocking.
SPIN = ("chrt", "-f", "10", "/bin/sh", "-c", "while :; do :; done")
HOST_STATE = (
    f"{ENV} docker ps -aq | sort; iptables-save | grep '^-A DOCKER-XMS' | sort; "
    "cat /var/lib/docker-xms/containers*.json 2>/dev/null | tr -d ' \\n' | grep -v '^{}$' || true"
)
# What the host held before the servers, for the last test.
_before: dict[str, str] = {}


def _in(guest: Guest, *argv: str, timeout: float = 900) -> str:
    done = guest.run("env", ENV, *argv, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_set_up_takes_podman_as_it_is_and_installs_no_docker_engine(podman: Guest) -> None:
    podman.run("systemctl", "enable", "--now", "podman.socket")
    set_up(podman, ENV)
    assert sh(podman, "dpkg-query -W -f='${Status}' docker.io 2>/dev/null || true") != "install ok installed"
    assert sh(podman, "pgrep -x dockerd | wc -l").strip() == "0"
    server = json.loads(_in(podman, "docker", "version", "--format", "{{json .Server}}"))
    assert server["Components"][0]["Name"] == "Podman Engine"


def test_the_fake_podman_host_of_the_unit_tests_is_this_one(podman: Guest, tmp_path: Path) -> None:
    """What the in-memory Podman host claims (tests/unit/usecase_host.make_host) checked against the real one."""
    assert host_facts(podman, ENV) == facts_of(make_host(tmp_path, cgroup_version=2, engine_kind="podman"))


def test_three_servers_boot_systemd_by_podmans_systemd_mode_with_real_time_threads(
    podman: Guest, rtpengine_image: str
) -> None:
    # As a user who pulled it would have it: the demo image from the host, not built under emulation.
    podman.load_image(rtpengine_image, loader="podman load")
    # Podman refuses the option Docker 28 has, in the words the unit tests' fake engine uses.
    assert REFUSALS["podman"] in refusal_words(podman, rtpengine_image, ENV)
    _before["state"] = sh(podman, HOST_STATE)
    done = podman.run("env", ENV, "bash", f"{PROJECT}/scripts/quickstart.sh", "demo", timeout=1200, check=False)
    summary = done.stdout + done.stderr
    assert done.returncode == 0, summary
    assert re.search(r"Real-time verified: yes", summary), summary
    for name in SERVERS[1:]:
        result = json.loads(_in(podman, CLI, "run", "-c", "--name", name, "--json"))
        assert (result["ready"], result["rt_verified"]) == (True, True), result
    for name in SERVERS:
        one_server_is_right(podman, name, security_opt=[], kind="podman", env=ENV)
    status = json.loads(_in(podman, CLI, "rt", "status", "--json"))
    assert {c["name"]: c["watchdog_us"] for c in status["managed"]} == dict.fromkeys(SERVERS, 500_000), status
    # The forwards tell Podman's bridge from the way out, as they tell docker0 on Docker.
    snat = [
        line for line in sh(podman, "iptables-save -t nat").splitlines() if "-j SNAT" in line and "docker-xms" in line
    ]
    assert snat, "no SNAT rule of docker-xms's"
    assert all("! -o podman0" in line for line in snat), snat


def test_the_media_cpu_is_theirs_and_a_runaway_thread_is_stopped_by_the_watchdog(podman: Guest) -> None:
    """No per-group budget exists here: every real-time thread competes on its CPUs for up to 950 ms a second.
    CPU-set mode keeps CPU 0 for the host, and the watchdog stops a spinning thread (correctness only: no
    timing under emulation is asserted or reported)."""
    media_cpus_are_given(podman, SERVERS, ENV)
    spinner = "lab-three"
    _in(podman, "docker", "exec", spinner, "systemd-run", "--unit", "spin", "-p", "Restart=no", *SPIN)
    stops = 0
    for _ in range(60):
        status = json.loads(_in(podman, CLI, "rt", "status", "--json"))
        stops = next(c["watchdog_stops"] for c in status["managed"] if c["name"] == spinner)
        if stops:
            break
        time.sleep(2)
    assert stops == 1, status
    shown = _in(podman, "docker", "exec", spinner, "systemctl", "show", "spin", "-pExecMainStatus", "-pResult")
    assert set(shown.split()) == {"ExecMainStatus=24", "Result=signal"}, shown
    passed = podman.run("env", ENV, CLI, "agent", "--once", check=False)
    assert f"watchdog stopped spin.service in {spinner} (SIGXCPU" in passed.stdout + passed.stderr, passed.stdout
    # The servers themselves run on.
    for name in SERVERS:
        assert _in(podman, "docker", "exec", name, "systemctl", "is-active", "rtpengine-daemon").strip() == "active"


def test_a_test_call_from_a_peer_whose_only_route_is_the_guests_address_has_rtp_both_ways(podman: Guest) -> None:
    call = call_from_peer(podman, "lab-two", ENV)
    assert (call["answered"], call["media_flows"], call["local"]) == (True, True, "10.77.0.2"), call
    assert all(d["received"] >= 0.9 * d["sent"] > 0 for d in call["directions"]), call["directions"]


def test_removing_the_servers_gives_everything_back(podman: Guest) -> None:
    for name in SERVERS:
        _in(podman, CLI, "rm", "-f", name)
    # No container, no rule inside docker-xms's chains, no record left of the three.
    assert sh(podman, HOST_STATE) == _before["state"]
