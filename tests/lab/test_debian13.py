"""The README's first command on a fresh Debian 13 host, and what docker-xms does there.

One guest (tests/lab/conftest.py) is booted for the whole module and the tests run in order, each on what
the one before left, as a user's session on a new machine goes: the base system, the set-up, the demo and a
call to it from outside, an engine that cannot run systemd, the agent under systemd across a reboot.
Timings under emulation say nothing about real hardware: none is asserted or reported.
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
    engine_info,
    host_facts,
    refusal_words,
    set_up,
    sh,
)
from tests.unit.usecase_host import facts_of, make_host

pytestmark = pytest.mark.lab

DEMO = "docker-xms-demo"
DAEMON_JSON = "/etc/docker/daemon.json"


def _wait(guest: Guest, script: str, timeout: float, what: str) -> str:
    """Poll a guest command until it prints something; its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(guest, script, check=False).strip()
        if out:
            return out
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} in the guest")


def test_the_guest_is_a_fresh_debian_13_host(debian13: Guest) -> None:
    assert debian13.run("cat", "/etc/debian_version").stdout.startswith("13")
    assert debian13.run("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert "cgroup" not in {line.split()[2] for line in debian13.run("cat", "/proc/mounts").stdout.splitlines()}
    found = sh(debian13, "grep -h CONFIG_RT_GROUP_SCHED /boot/config-*")
    assert found.strip() == "# CONFIG_RT_GROUP_SCHED is not set"
    assert debian13.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    state = debian13.run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
    assert state in {"running", "degraded"}, debian13.run("systemctl", "--failed", check=False).stdout
    # Nothing of what the set-up installs is there yet.
    assert sh(debian13, "command -v docker dockerd python3 || true").strip() == ""


def test_the_set_up_installs_an_engine_that_systemd_runs_and_that_can_run_systemd(debian13: Guest) -> None:
    set_up(debian13)
    assert debian13.run("systemctl", "is-active", "docker.service").stdout.strip() == "active"
    # The engine systemd runs, not a second one.
    assert sh(debian13, "pgrep -x dockerd | wc -l").strip() == "1"
    info = engine_info(debian13)
    assert (info["CgroupVersion"], info["CgroupDriver"]) == ("2", "systemd")
    assert info["ServerVersion"].startswith("26.")
    # Debian 13's Docker 26 has no writable-cgroups: the engine the set-up has just installed gets users
    # remapped, which lets systemd write its own cgroup in a container.
    assert any(option.startswith("name=userns") for option in info["SecurityOptions"]), info["SecurityOptions"]
    assert json.loads(debian13.run("cat", DAEMON_JSON).stdout) == {"userns-remap": "default"}
    assert debian13.run(f"{PROJECT}/.venv/bin/python", "-c", "import sys; print(sys.version_info[:2])").stdout == (
        "(3, 13)\n"
    )


def test_the_fake_v2_host_of_the_unit_tests_is_this_one(debian13: Guest, tmp_path: Path) -> None:
    """What the in-memory v2 host with remapped users claims (tests/unit/usecase_host.make_host), checked
    against the real one."""
    assert host_facts(debian13) == facts_of(make_host(tmp_path, cgroup_version=2, userns=True))


def test_the_demo_starts_with_its_threads_real_time_and_says_so(debian13: Guest, rtpengine_image: str) -> None:
    # As a user who pulled it would have it: the demo image from the host, not built under emulation.
    debian13.load_image(rtpengine_image)
    done = debian13.run("bash", f"{PROJECT}/scripts/quickstart.sh", "demo", timeout=1200, check=False)
    summary = done.stdout + done.stderr
    assert done.returncode == 0, summary
    assert re.search(r"Real-time verified: yes", summary), summary
    assert re.search(r"Ready: yes", summary), summary
    verified = json.loads(debian13.run(CLI, "rt", "verify", DEMO, "--json").stdout)
    assert verified["fifo_allowed"] is True
    fifo = [t for t in verified["rt_threads"] if t["policy"] == "SCHED_FIFO"]
    assert fifo, verified
    # No group budget exists on this kernel: none was asked for, none is claimed.
    assert verified["budget_us"] == 0


def test_a_test_call_from_a_peer_whose_only_route_is_the_guests_address_has_rtp_both_ways(debian13: Guest) -> None:
    call = call_from_peer(debian13, DEMO)
    assert (call["answered"], call["media_flows"], call["local"]) == (True, True, "10.77.0.2"), call
    assert len(call["directions"]) == 2
    assert all(d["received"] >= 0.9 * d["sent"] > 0 for d in call["directions"]), call["directions"]


def test_the_agent_under_systemd_puts_the_demo_right_after_a_reboot(debian13: Guest) -> None:
    # The agent `run` started in the background gives way to the one systemd keeps.
    sh(debian13, "pkill -f '[d]ocker-xms agent' || true; pkill -f '[d]ocker_xms agent' || true")
    debian13.run(CLI, "agent", "install")
    assert debian13.run("systemctl", "is-active", "docker-xms-agent.service").stdout.strip() == "active"
    assert debian13.run("systemctl", "is-enabled", "docker-xms-agent.service").stdout.strip() == "enabled"
    before = debian13.boot_id()
    debian13.reboot()
    assert debian13.boot_id() != before
    _wait(debian13, "systemctl is-active docker-xms-agent.service | grep -x active", 600, "the agent's unit")
    _wait(debian13, f"docker inspect -f '{{{{.State.Running}}}}' {DEMO} | grep -x true", 600, "the demo running")
    # The kernel's word: the server's threads real-time again, with no command typed.
    _wait(
        debian13,
        f"{CLI} rt verify {DEMO} --json | grep -q SCHED_FIFO && echo yes",
        600,
        "SCHED_FIFO threads in the demo after the reboot",
    )
    log = debian13.run("journalctl", "-b", "-u", "docker-xms-agent.service", "--no-pager", check=False).stdout
    print(f"\nlab: the agent's log after the reboot:\n{log[-1500:]}")
    assert "agent started" in log
    assert "reconcile failed" not in log


def test_docker_26_without_remapped_users_gets_the_refusal_and_nothing_is_created(
    debian13: Guest, rtpengine_image: str, tmp_path: Path
) -> None:
    """The operator's own engine as Debian 13 installs it: docker-xms never reconfigures it, and says why not."""
    sh(debian13, f"rm {DAEMON_JSON} && systemctl restart docker.service")
    info = engine_info(debian13)
    assert not any(option.startswith("name=userns") for option in info["SecurityOptions"])
    debian13.load_image(rtpengine_image)
    state = (
        "docker ps -aq | sort; iptables-save | grep -c DOCKER-XMS || true; cat /var/lib/docker-xms/*.json 2>/dev/null"
    )
    # The engine's own words, as the unit tests' fake engine refuses, and the fake host without remapped users.
    assert REFUSALS["docker"] in refusal_words(debian13, rtpengine_image)
    assert host_facts(debian13) == facts_of(make_host(tmp_path, cgroup_version=2))
    before = sh(debian13, state)
    done = debian13.run(CLI, "run", "-c", "--no-wait", "--name", "refused", check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    said = done.stderr.strip()
    assert said.startswith("error: On cgroup v2 this engine cannot give a container a writable cgroup"), said
    assert "\n" not in said
    assert sh(debian13, state) == before
