"""What every lab test module does on its guest: the project handed in and set up by the README's first command,
shell lines run there, and the engine's own account of itself."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from lab.vm import Guest

HERE = Path(__file__).resolve().parents[2]
PROJECT = "/root/docker-xms"
CLI = f"{PROJECT}/.venv/bin/docker-xms"


# A peer's network namespace in the guest whose only route is the guest's own address, as a phone outside.
PEER_SETUP = """
ip netns add xms-peer
ip link add xms-peer0 type veth peer name xms-peer1
ip link set xms-peer1 netns xms-peer
ip addr add 10.77.0.1/30 dev xms-peer0
ip link set xms-peer0 up
ip -n xms-peer addr add 10.77.0.2/30 dev xms-peer1
ip -n xms-peer link set lo up
ip -n xms-peer link set xms-peer1 up
ip -n xms-peer route add default via 10.77.0.1
"""
PEER_TEARDOWN = "ip netns del xms-peer; ip link del xms-peer0 2>/dev/null; true"


def call_from_peer(guest: Guest, name: str, env: str = "") -> dict[str, Any]:
    """`docker-xms test-call NAME` from the peer's namespace, whose only route is the guest's address; its JSON.

    Control by the container's own address (the published ng port is on the guest's loopback, which is not in
    the peer's namespace); the media by the address the server advertises, as a phone sends it, from the start.
    Counts only are printed: jitter and setup times under emulation say nothing of real hardware.
    """
    sh(guest, PEER_SETUP)
    try:
        assert sh(guest, "ip -n xms-peer route").split("\n")[0] == "default via 10.77.0.1 dev xms-peer1 "
        ng = guest.run("env", *env.split(), "docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
        done = guest.run(
            "env", *env.split(), "ip", "netns", "exec", "xms-peer", CLI, "test-call", name,
            "--control", f"{ng.stdout.strip()}:2223", "--json", check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        call: dict[str, Any] = json.loads(done.stdout)
    finally:
        sh(guest, PEER_TEARDOWN)
    counts = ", ".join(f"{d['name']} {d['received']} of {d['sent']}" for d in call["directions"])
    print(f"\nlab: test call to {name} from the peer namespace {call['local']}: {counts}; {call['measured']}")
    return call


def sh(guest: Guest, script: str, timeout: float = 600, check: bool = True) -> str:
    """A shell line as root in the guest; its output."""
    return guest.run("bash", "-c", script, timeout=timeout, check=check).stdout


def set_up(guest: Guest, env: str = "") -> None:
    """The project (this checkout's HEAD, as a root clone has it) and `quickstart.sh setup` run from it
    (`env`: assignments before it, e.g. DOCKER_HOST=...)."""
    guest.put_git(HERE, PROJECT)
    done = guest.run(
        "env", *env.split(), "bash", f"{PROJECT}/scripts/quickstart.sh", "setup", timeout=2400, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Run by the project's own Python in the guest: what decides docker-xms's behaviour there, as
# tests/unit/usecase_host.host_facts reads it from a host object (a fake one's too).
_FACTS = """
import json
from docker_xms.adapters.config import load_settings
from docker_xms.adapters.engine import Engine
from docker_xms.usecases.rt import open_host
from tests.unit.usecase_host import host_facts
settings = load_settings()
engine = Engine.connect(timeout=60, host=settings.docker_host)
print(json.dumps(host_facts(open_host(engine, settings), engine.info())))
"""


def host_facts(guest: Guest, env: str = "") -> dict[str, Any]:
    """The guest's host object and engine, read by docker-xms itself (`env` as for set_up)."""
    done = guest.run("env", *env.split(), "sh", "-c", f"cd {PROJECT} && .venv/bin/python -c {shlex.quote(_FACTS)}")
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


def refusal_words(guest: Guest, image: str, env: str = "") -> str:
    """What the guest's engine says when it is asked for writable-cgroups, as it says it (a container it
    created all the same is removed again)."""
    probe = "docker-xms-refusal-probe"
    done = guest.run(
        "env", *env.split(), "docker", "create", "--name", probe, "--security-opt", "writable-cgroups=true", image,
        check=False,
    )  # fmt: skip
    if done.returncode == 0:
        guest.run("env", *env.split(), "docker", "rm", "-f", probe, check=False)
    assert done.returncode != 0, f"the engine took writable-cgroups at create: {done.stdout}"
    return done.stderr.strip()


def engine_info(guest: Guest) -> dict[str, Any]:
    """`docker info` of the guest's engine."""
    info: dict[str, Any] = json.loads(guest.run("docker", "info", "--format", "{{json .}}").stdout)
    return info


# Where each engine puts a container's cgroup with the systemd driver (as the host sees it).
SCOPES = {
    "docker": r"0::/system\.slice/docker-[0-9a-f]{64}\.scope(/.*)?",
    "podman": r"0::/machine\.slice/libpod-[0-9a-f]{64}\.scope(/.*)?",
}


def media_cpus_are_given(guest: Guest, names: tuple[str, ...], env: str = "") -> None:
    """CPU-set mode on these 2-CPU hosts: CPU 0 for the host, CPU 1 for media, and each server's cgroup on it."""
    status = json.loads(guest.run("env", *env.split(), CLI, "rt", "status", "--json").stdout)
    assert (status["mode"], status["housekeeping_cpus"], status["media_cpus"]) == ("cpus", "0", "1"), status
    for name in names:
        pid = json.loads(guest.run("env", *env.split(), "docker", "inspect", name).stdout)[0]["State"]["Pid"]
        own = guest.run("cat", f"/proc/{pid}/cgroup").stdout.strip().removeprefix("0::")
        # The engine's scope (systemd inside makes sub-cgroups without the cpuset controller).
        scope = re.sub(r"(\.scope)/.*$", r"\1", own)
        assert guest.run("cat", f"/sys/fs/cgroup{scope}/cpuset.cpus.effective").stdout.strip() == "1", name


def one_server_is_right(guest: Guest, name: str, security_opt: list[str], kind: str = "docker", env: str = "") -> None:
    """A media server on a v2 lab host: systemd running, its threads SCHED_FIFO by `rt verify`, asked for
    nothing beyond `security_opt`, and no cgroup but its own reachable from inside."""

    def run(*argv: str, check: bool = True) -> str:
        return guest.run("env", *env.split(), *argv, check=check).stdout

    state = run("docker", "exec", name, "systemctl", "is-system-running", "--wait", check=False).strip()
    assert state in {"running", "degraded"}, (name, state)
    verified = json.loads(run(CLI, "rt", "verify", name, "--json"))
    assert verified["fifo_allowed"] is True, verified
    # rtpengine's own threads (its pollers), not any thread of the host's.
    assert {t["comm"] for t in verified["rt_threads"] if t["policy"] == "SCHED_FIFO"} >= {"poller"}, verified
    inspect = json.loads(run("docker", "inspect", name))[0]
    host_config = inspect["HostConfig"]
    # Podman's Docker API leaves the cgroup namespace mode out of its inspect view: the namespace itself is
    # checked from the host below.
    assert host_config.get("CgroupnsMode") in ({"private", ""} if kind == "podman" else {"private"}), host_config
    assert host_config["Privileged"] is False
    assert (host_config.get("SecurityOpt") or []) == security_opt
    assert not host_config.get("CpuRealtimeRuntime")
    pid = inspect["State"]["Pid"]
    # From the host: the server's cgroup namespace is its own, rooted at its own scope.
    own = guest.run("cat", f"/proc/{pid}/cgroup").stdout.strip()
    assert re.fullmatch(SCOPES[kind], own), own
    assert guest.run("readlink", f"/proc/{pid}/ns/cgroup").stdout != guest.run("readlink", "/proc/1/ns/cgroup").stdout
    # From inside: one cgroup2 mount, at the namespace's root, which is the server's own scope; no way to
    # mount another view of the hierarchy.
    inside = run("docker", "exec", name, "cat", "/proc/1/cgroup").strip()
    assert inside.startswith("0::/"), inside
    mounts = [
        line.split()
        for line in run("docker", "exec", name, "cat", "/proc/self/mountinfo").splitlines()
        if " - cgroup" in line
    ]
    assert [(m[3], m[4]) for m in mounts] == [("/", "/sys/fs/cgroup")], mounts
    escape = guest.run(
        "env", *env.split(), "docker", "exec", name, "sh", "-c", "mkdir -p /tmp/v && mount -t cgroup2 none /tmp/v",
        check=False,
    )  # fmt: skip
    assert escape.returncode != 0, escape.stdout
