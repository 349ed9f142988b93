"""An engine of 28 or later on cgroup v2 (Debian forky's docker.io): systemd containers by the engine's own
writable-cgroups option, with nothing of the host's cgroups reachable from inside.

One guest for the module, tests in order (tests/lab/conftest.py). The engine is preinstalled, as on a host
whose operator runs it already: the set-up must use it as it is, with no remapped users.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lab.vm import Guest

from tests.lab.steps import CLI, engine_info, host_facts, media_cpus_are_given, one_server_is_right, set_up, sh
from tests.unit.usecase_host import facts_of, make_host

pytestmark = pytest.mark.lab

SERVERS = (("lab-one", ()), ("lab-two", ("-c",)), ("lab-three", ("-c",)))
# Containers, the rules inside docker-xms's own chains (the chains and the jumps to them stay once made), records.
HOST_STATE = (
    "docker ps -aq | sort; iptables-save | grep '^-A DOCKER-XMS' | sort; "
    "cat /var/lib/docker-xms/containers.json 2>/dev/null | tr -d ' \\n' | grep -v '^{}$' || true"
)


def test_the_set_up_takes_the_operators_engine_28_as_it_is(forky: Guest) -> None:
    set_up(forky)
    info = engine_info(forky)
    assert int(info["ServerVersion"].split(".")[0]) >= 28
    assert (info["CgroupVersion"], info["CgroupDriver"]) == ("2", "systemd")
    assert not any(option.startswith("name=userns") for option in info["SecurityOptions"])
    assert forky.run("test", "-e", "/etc/docker/daemon.json", check=False).returncode == 1
    assert sh(forky, "pgrep -x dockerd | wc -l").strip() == "1"


def test_the_fake_v2_host_of_the_unit_tests_is_this_one(forky: Guest, tmp_path: Path) -> None:
    """The in-memory v2 host whose engine takes writable-cgroups (make_host's default), checked against the real one.
    forky's kernel (7.x) leaves real-time tasks the whole period (sched_rt_runtime_us 1000000; 6.12's is 950000)."""
    assert host_facts(forky) == facts_of(make_host(tmp_path, cgroup_version=2, rt_runtime_us=1_000_000))


def test_three_servers_each_boot_systemd_with_real_time_threads_and_reach_no_other_cgroup(
    forky: Guest, rtpengine_image: str
) -> None:
    forky.load_image(rtpengine_image)
    before = sh(forky, HOST_STATE)
    try:
        for name, args in SERVERS:
            done = forky.run(CLI, "run", *args, "--name", name, "--json", timeout=900, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
            summary = json.loads(done.stdout)
            assert (summary["ready"], summary["rt_verified"]) == (True, True), summary
        for name, _ in SERVERS:
            one_server_is_right(forky, name, security_opt=["writable-cgroups=true"])
        media_cpus_are_given(forky, tuple(name for name, _ in SERVERS))
    finally:
        for name, _ in SERVERS:
            forky.run(CLI, "rm", "-f", name, check=False)
    # Everything given back: no container, no rule, no record left of the three.
    assert sh(forky, HOST_STATE) == before
